"""Everything that can be checked is checked before any work: one line naming the key, exit
status 2, no training, no run directory."""

import pytest
import yaml

from vitprune.cli import main
from vitprune.search.preflight import check_spec
from vitprune.search.spec import SearchSpec
from vitprune.spaces import InputError

TINY = {
    "name": "tiny",
    "model": {"name": "vitprune_digits_vit", "args": {"depth": 2, "embed_dim": 32, "num_heads": 2}},
    "dense_training": {"epochs": 1},
    "budget": {"macs": "50%", "batch_size": 4},
    "finetune": {"epochs": 1, "steps": 2},
    "trials": {"total": 2, "concurrent": 1, "initial": 1, "max_failures": 0},
}


def merged(base, change):
    out = dict(base)
    for key, value in change.items():
        out[key] = merged(base.get(key, {}), value) if isinstance(value, dict) else value
    return out


def run_search(tmp_path, monkeypatch, capsys, change):
    monkeypatch.setenv("VITPRUNE_CACHE", str(tmp_path / "cache"))
    config = tmp_path / "search.yaml"
    config.write_text(yaml.safe_dump(merged(TINY, change)))
    code = main(["search", str(config), "--run-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "vitprune: error:" in line]
    return code, lines, err


BAD = [
    ({"criteria": {"heads": "snpp"}}, "criteria.heads: criterion 'snpp': unknown (known: depth, hsic"),
    ({"criteria": {"mlp": "snp"}}, "criteria.mlp: snp does not score mlp (choose one of hsic, magnitude"),
    ({"space": {"dimensions": []}}, "space.dimensions: List should have at least 1 item"),
    (
        {"budget": {"macs": "150%"}},
        "budget.macs: must be a share of the dense model in (0 %, 100 %], got '150%'",
    ),
    ({"budget": {"params": "0%", "macs": None}}, "budget.params: must be a share of the dense model in (0 %"),
    ({"budget": {"macs": -3}}, "budget.macs: must be > 0, got -3"),
    (
        {"budget": {"macs": "1%"}},
        "budget.macs: 4633 is below the cheapest policy this search space can build (1.15e+04)",
    ),
    ({"budget": {"macs": 1e12}}, "budget.macs: 1e+12 is above the dense model's"),
    ({"budget": {"device": "cuda"}}, "budget.device: cuda measures on a GPU, so the trials need one"),
    (
        {"space": {"token_keep": "auto"}, "criteria": {"tokens": "magnitude"}},
        "space.token_keep: auto takes its per-layer rates from the tokens criterion, and magnitude gives",
    ),
]


@pytest.mark.parametrize(("change", "message"), BAD, ids=[message.split(":")[0] for _, message in BAD])
def test_a_bad_search_is_one_line_before_any_work(tmp_path, monkeypatch, capsys, change, message):
    code, lines, err = run_search(tmp_path, monkeypatch, capsys, change)
    assert code == 2, err
    assert len(lines) == 1 and message in lines[0], err
    assert not (tmp_path / "run").exists()  # no run directory
    assert not (tmp_path / "cache").exists()  # nothing trained or cached


def test_a_gpu_asked_of_a_cluster_without_one_fails_at_once(tmp_path, monkeypatch, capsys, ray_cluster):
    """Ray would wait for ever for a node with a GPU."""
    code, lines, err = run_search(tmp_path, monkeypatch, capsys, {"resources": {"gpu": 1}})
    assert code == 2, err
    assert (
        len(lines) == 1
        and "resources.gpu: each trial asks for 1 GPU, but the Ray cluster has no GPU" in lines[0]
    )
    assert not (tmp_path / "run").exists() and not (tmp_path / "cache").exists()
    code, lines, _ = run_search(tmp_path, monkeypatch, capsys, {"resources": {"cpu": 64}})
    assert (
        code == 2 and "resources.cpu: each trial asks for 64 CPU, but the Ray cluster has at most" in lines[0]
    )


def test_the_cheapest_check_uses_the_architecture_alone():
    spec = SearchSpec.model_validate(merged(TINY, {"budget": {"macs": "20%"}}))
    base = check_spec(spec)  # no weights, no data loaded beyond the class count
    assert base.num_classes == 10 and base.depth == 2
    with pytest.raises(InputError, match=r"budget\.macs: .* below the cheapest policy"):
        check_spec(SearchSpec.model_validate(merged(TINY, {"budget": {"macs": "2%"}})))


def test_a_corrupt_image_is_named_before_any_work(tmp_path):
    from PIL import Image

    for split in ("train", "val"):
        for label in ("a", "b"):
            folder = tmp_path / "images" / split / label
            folder.mkdir(parents=True)
            Image.new("RGB", (8, 8), color=(10, 20, 30)).save(folder / "ok.png")
    (tmp_path / "images" / "train" / "b" / "broken.png").write_bytes(b"\x89PNG\r\n not really")
    spec = SearchSpec.model_validate(
        merged(TINY, {"model": {"name": "deit_tiny_patch16_224", "args": {"img_size": 32, "depth": 2}}})
        | {"data": {"source": "imagefolder", "path": str(tmp_path / "images")}}
    )
    with pytest.raises(InputError, match=r"data\.path: .*train/b/broken\.png: not a readable image"):
        check_spec(spec)
