"""The criterion cache: hits, misses on every input it depends on, corrupt files, atomic writes."""

import logging

import pytest
import torch
from helpers import tiny_model
from torch.utils.data import DataLoader, TensorDataset

from vitprune.evaluators.criteria import _CRITERIA, get_criterion
from vitprune.evaluators.criteria.cache import calibration_batches, compute_scores
from vitprune.spaces import InputError


def calibration(base, *, seed=0):
    g = torch.Generator().manual_seed(seed)
    shape = (4, base.in_chans, *base.model_args["img_size"])
    return [(torch.randn(shape, generator=g), torch.arange(4)) for _ in range(2)]


@pytest.fixture
def counted(monkeypatch):
    """A ``counted`` criterion (SNP underneath) that records how often it really runs."""
    calls = []

    def criterion(model, *, base, data=None, **options):
        calls.append(options)
        return get_criterion("snp")(model, base=base, data=data, **options)

    monkeypatch.setitem(_CRITERIA, "counted", criterion)
    return calls


def test_second_call_is_a_cache_hit(tmp_path, counted):
    model, base = tiny_model("deit")
    data = calibration(base)
    first = compute_scores("counted", model, base=base, data=data, cache_dir=tmp_path)
    second = compute_scores("counted", model, base=base, data=data, cache_dir=tmp_path)
    assert len(counted) == 1
    assert second == first
    assert [p.name.startswith("counted-") and p.suffix == ".json" for p in tmp_path.iterdir()] == [True]


def test_weights_data_and_options_are_part_of_the_key(tmp_path, counted):
    model, base = tiny_model("deit")
    data = calibration(base)
    compute_scores("counted", model, base=base, data=data, cache_dir=tmp_path)
    compute_scores("counted", model, base=base, data=calibration(base, seed=1), cache_dir=tmp_path)
    compute_scores("counted", model, base=base, data=data, cache_dir=tmp_path, num_queries=4)
    with torch.no_grad():
        model.blocks[0].attn.qkv.weight[0, 0] += 1e-3
    compute_scores("counted", model, base=base, data=data, cache_dir=tmp_path)
    assert len(counted) == 4
    assert len(list(tmp_path.iterdir())) == 4
    compute_scores("counted", model, base=base, data=data, cache_dir=tmp_path, num_queries=4)
    assert len(counted) == 5  # the weights changed since that entry was written


@pytest.mark.parametrize("garbage", ["", "{not json", '{"criterion": "snp", "heads": [[1, 2]]}', "[1, 2]"])
def test_a_corrupt_cache_file_is_recomputed_and_replaced(tmp_path, counted, caplog, garbage):
    model, base = tiny_model("deit")
    data = calibration(base)
    good = compute_scores("counted", model, base=base, data=data, cache_dir=tmp_path)
    (path,) = tmp_path.iterdir()
    path.write_text(garbage)
    with caplog.at_level(logging.WARNING):
        again = compute_scores("counted", model, base=base, data=data, cache_dir=tmp_path)
    assert again == good
    assert len(counted) == 2
    assert "ignoring unreadable cache file" in caplog.text
    assert path.read_text() == good.to_json()
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary files left


def test_no_cache_dir_computes_every_time(counted):
    model, base = tiny_model("deit")
    data = calibration(base)
    compute_scores("counted", model, base=base, data=data)
    compute_scores("counted", model, base=base, data=data)
    assert len(counted) == 2


def test_weight_only_criteria_cache_without_data(tmp_path):
    model, base = tiny_model("deit")
    scores = compute_scores("magnitude", model, base=base, cache_dir=tmp_path, p=2)
    assert scores == get_criterion("magnitude")(model, base=base, p=2)
    assert compute_scores("magnitude", model, base=base, cache_dir=tmp_path, p=2) == scores


def test_unknown_criterion_fails_before_any_work(tmp_path):
    model, base = tiny_model("deit")
    with pytest.raises(InputError, match="criterion 'nope': unknown"):
        compute_scores("nope", model, base=base, cache_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_calibration_batches_take_the_first_batches_on_the_cpu():
    images = torch.arange(10 * 3 * 2 * 2, dtype=torch.float32).view(10, 3, 2, 2)
    loader = DataLoader(TensorDataset(images, torch.arange(10)), batch_size=3)
    batches = calibration_batches(loader, 2)
    assert [labels.tolist() for _, labels in batches] == [[0, 1, 2], [3, 4, 5]]
    assert torch.equal(batches[1][0], images[3:6])
    assert len(calibration_batches(loader, 10)) == 4  # all the loader has
    with pytest.raises(InputError, match="calibration batches: must be >= 1"):
        calibration_batches(loader, 0)
    with pytest.raises(InputError, match="the loader yielded no batches"):
        calibration_batches([], 3)


def test_spelled_out_defaults_share_the_cache_entry(tmp_path):
    model, base = tiny_model("deit")
    data = calibration(base)
    implicit = compute_scores("snp", model, base=base, data=data, cache_dir=tmp_path)
    explicit = compute_scores("snp", model, base=base, data=data, cache_dir=tmp_path, num_queries=16, seed=0)
    assert explicit == implicit
    assert len(list(tmp_path.iterdir())) == 1


def test_an_unknown_option_names_the_known_ones(tmp_path):
    model, base = tiny_model("deit")
    with pytest.raises(
        InputError, match=r"criterion snp: unknown option 'kernel' \(known: num_queries, seed\)"
    ):
        compute_scores("snp", model, base=base, data=calibration(base), cache_dir=tmp_path, kernel="linear")
    with pytest.raises(InputError, match=r"criterion depth: unknown option 'p' \(known: none\)"):
        compute_scores("depth", model, base=base, data=calibration(base), p=2)
