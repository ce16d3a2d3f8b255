import gzip

import numpy as np
import pytest
import torch
from helpers import tiny_model
from PIL import Image

from vitprune.evaluators.config import DataConfig, parse_section
from vitprune.evaluators.data import load_data
from vitprune.evaluators.dense import load_dense
from vitprune.spaces import InputError


@pytest.fixture(scope="module")
def digits_base():
    return load_dense("vitprune_digits_vit")[1]


def test_digits_splits_are_disjoint_deterministic_and_complete(digits_base):
    first = load_data(DataConfig(), digits_base)
    second = load_data(DataConfig(), digits_base)
    train, val, test = (set(split.indices) for split in (first.train, first.search_val, first.test))
    assert not train & val and not train & test and not val & test
    assert len(train | val | test) == 1797
    assert (len(train), len(val), len(test)) == (1221, 216, 360)
    assert first.train.indices == second.train.indices and first.test.indices == second.test.indices
    images, labels = first.train[0]
    assert images.shape == (1, 16, 16) and 0 <= int(labels) < 10
    assert first.num_classes == 10


def test_search_val_seed_never_moves_the_test_split(digits_base):
    a = load_data(DataConfig(seed=0), digits_base)
    b = load_data(DataConfig(seed=1), digits_base)
    assert a.test.indices == b.test.indices
    assert a.search_val.indices != b.search_val.indices


def test_test_seed_draws_another_stratified_test_split(digits_base):
    default = load_data(DataConfig(), digits_base)
    other = load_data(DataConfig(test_seed=1), digits_base)
    # test_seed 0 is the split every figure so far was measured on: sklearn's stratified split, seed 0
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    target = load_digits().target
    _, held = train_test_split(range(1797), test_size=0.2, random_state=0, stratify=target)
    assert default.test.indices == sorted(held)
    assert other.test.indices != default.test.indices and len(other.test.indices) == 360
    train, val, test = (set(split.indices) for split in (other.train, other.search_val, other.test))
    assert not train & test and not val & test and len(train | val | test) == 1797
    # stratified: each class holds the same share of the test split whatever the seed
    counts = [torch.bincount(torch.tensor(target[sorted(t)]), minlength=10) for t in (held, test)]
    assert torch.equal(counts[0], counts[1])


def test_train_order_depends_only_on_the_seed(digits_base):
    data = load_data(DataConfig(batch_size=32), digits_base)
    first = [labels for _, labels in data.train_loader(seed=3)]
    second = [labels for _, labels in data.train_loader(seed=3)]
    other = [labels for _, labels in data.train_loader(seed=4)]
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(first, other, strict=True))


def test_digits_adapt_to_the_models_input():
    _, base = tiny_model("deit")  # 3 channels, 64×64
    data = load_data(DataConfig(max_train_samples=100), base)
    assert data.train[0][0].shape == (3, 64, 64)
    assert len(data.train) == 100


def test_calibration_batches_are_a_list_of_train_batches(digits_base):
    from vitprune.evaluators.criteria import calibration_batches

    data = load_data(DataConfig(batch_size=16), digits_base)
    batches = calibration_batches(data.calibration_loader(seed=0), 3)
    assert len(batches) == 3 and batches[0][0].shape == (16, 1, 16, 16)
    again = calibration_batches(data.calibration_loader(seed=0), 3)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(batches, again, strict=True))  # deterministic


def test_training_images_are_augmented_but_calibration_images_are_not(digits_base):
    data = load_data(DataConfig(), digits_base)
    index = data.train.indices[0]
    clean = data.train_clean.dataset[index][0]
    shifted = [data.train.dataset[index][0] for _ in range(8)]
    assert any(not torch.equal(image, clean) for image in shifted)
    assert data.train_clean.indices == data.train.indices


def test_imagefolder_with_timm_transforms(tmp_path):
    for split, count in (("train", 10), ("val", 3)):
        for label in ("cat", "dog"):
            folder = tmp_path / split / label
            folder.mkdir(parents=True)
            for i in range(count):
                Image.new("RGB", (40, 30), color=(i * 20, 100, 200 if label == "cat" else 0)).save(
                    folder / f"{i}.png"
                )
    _, base = tiny_model("deit")
    data = load_data(parse_section(DataConfig, f"imagefolder:{tmp_path}", "data"), base)
    assert data.num_classes == 2
    assert (len(data.train), len(data.search_val), len(data.test)) == (17, 3, 6)
    assert not set(data.train.indices) & set(data.search_val.indices)
    image, _ = data.search_val[0]
    assert image.shape == (3, 64, 64)  # resized to the model's input by timm's eval transform


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("imagefolder:/no/such/dir", "data.path: /no/such/dir does not exist"),
        ("imagefolder", "data: source imagefolder needs a path"),
        (
            "svhn:/tmp",
            "data.source: Input should be 'digits', 'imagefolder', 'cifar10', 'cifar100', 'mnist' or "
            "'fashion-mnist'",
        ),
        (
            {"source": "cifar10", "path": "/tmp", "test_seed": 1},
            "data: test_seed: only digits draws its test",
        ),
    ],
)
def test_bad_data_specs_areone_line(spec, message, digits_base):
    with pytest.raises(InputError) as error:
        load_data(parse_section(DataConfig, spec, "data"), digits_base)
    assert str(error.value).startswith(message)
    assert "\n" not in str(error.value)


def test_folder_layout_errors_name_the_path(tmp_path, digits_base):
    (tmp_path / "train").mkdir()
    with pytest.raises(InputError, match=r"val is missing \(expected train/ and val/ class folders\)"):
        load_data(parse_section(DataConfig, f"imagefolder:{tmp_path}", "data"), digits_base)
    with pytest.raises(InputError, match="no cifar10 data under"):
        load_data(parse_section(DataConfig, f"cifar10:{tmp_path}", "data"), tiny_model("deit")[1])


def write_idx(path, array, *, compress=True):
    """``array`` (uint8) as an IDX file, gzipped when ``compress`` (as Debian ships them)."""
    array = np.asarray(array, dtype=np.uint8)
    header = bytes([0, 0, 8, array.ndim]) + b"".join(n.to_bytes(4, "big") for n in array.shape)
    data = header + array.tobytes()
    if compress:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)
    return path


def write_mnist(folder, *, train=50, test=20, compress=True):
    """A tiny MNIST-format data set: image ``i`` of class ``i % 10`` is all ``25 * (i % 10)``."""
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, count in (("train", train), ("t10k", test)):
        labels = np.arange(count) % 10
        images = np.repeat(25 * labels, 28 * 28).reshape(count, 28, 28)
        write_idx(folder / f"{prefix}-images-idx3-ubyte", images, compress=compress)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte", labels, compress=compress)


def test_fashion_mnist_from_debians_gzipped_idx_files(tmp_path, digits_base):
    write_mnist(tmp_path)
    config = parse_section(DataConfig, f"fashion-mnist:{tmp_path}", "data").model_copy(
        update={"search_val_fraction": 0.2}
    )
    data = load_data(config, digits_base)
    assert (len(data.train), len(data.search_val), len(data.test), data.num_classes) == (40, 10, 20, 10)
    assert not set(data.train.indices) & set(data.search_val.indices)
    assert sorted(int(data.search_val[i][1]) for i in range(10)) == list(range(10))  # stratified
    image, label = data.test[3]
    assert image.shape == (1, 16, 16) and int(label) == 3  # test is the t10k files, resized
    clean = torch.stack([data.train_clean[i][0] for i in range(len(data.train_clean))])
    assert abs(clean.mean().item()) < 1e-5 and abs(clean.std().item() - 1) < 0.05  # train statistics
    assert torch.allclose(image, torch.full_like(image, image[0, 0, 0].item()))  # a flat image stays flat


def test_mnist_from_torchvisions_raw_folder_at_the_models_input(tmp_path):
    write_mnist(tmp_path / "MNIST" / "raw", train=100, compress=False)
    _, base = tiny_model("deit")  # 3 channels, 64×64
    data = load_data(parse_section(DataConfig, f"mnist:{tmp_path}", "data"), base)
    assert data.test[0][0].shape == (3, 64, 64) and len(data.test) == 20


def test_a_broken_idx_data_set_is_one_line_naming_the_file(tmp_path, digits_base):
    def error():
        with pytest.raises(InputError) as raised:
            load_data(parse_section(DataConfig, f"fashion-mnist:{tmp_path}", "data"), digits_base)
        assert "\n" not in str(raised.value)
        return str(raised.value)

    assert "no train-images-idx3-ubyte[.gz] under" in error()
    write_mnist(tmp_path)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(19))  # 19 labels for 20 images
    assert "t10k-images-idx3-ubyte.gz holds (20, 28, 28) and t10k-labels-idx1-ubyte.gz (19,)" in error()
    truncated = tmp_path / "t10k-labels-idx1-ubyte.gz"
    truncated.write_bytes(gzip.compress(bytes([0, 0, 8, 1, 0, 0, 0, 20]) + bytes(5)))
    assert error().endswith("t10k-labels-idx1-ubyte.gz: 5 bytes of data where its header says (20,)")
    truncated.write_bytes(gzip.compress(bytes([0, 0, 8, 1, 0, 0])))
    assert error().endswith("t10k-labels-idx1-ubyte.gz: cut short in its header")
    truncated.write_bytes(b"<html>not found</html>")
    assert "t10k-labels-idx1-ubyte.gz: unreadable (Not a gzipped file" in error()
    truncated.write_bytes(gzip.compress(b"<html>"))
    assert error().endswith("t10k-labels-idx1-ubyte.gz: not an IDX file of unsigned bytes")
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.full(20, 12))
    assert error().endswith("t10k-labels-idx1-ubyte.gz: label 12, expected 0-9")
    write_mnist(tmp_path)  # whole again; but 15 % of 50 training images is 8, fewer than 10 classes
    assert error().startswith("data: 0.15 of 50 images cannot be split by class (The test_size = 8")


def test_an_unreadable_image_is_named_even_from_a_dataloader_worker(tmp_path, capsys):
    """Fatal, one line, the file named: never a PIL traceback."""
    import timm
    from PIL import Image

    from vitprune.cli import main
    from vitprune.evaluators import describe
    from vitprune.evaluators.io import save_pruned
    from vitprune.evaluators.surgery import apply_policy
    from vitprune.spaces import InputError, Policy
    from vitprune.spaces.errors import one_line

    for split in ("train", "val"):
        for label in ("a", "b"):
            folder = tmp_path / "images" / split / label
            folder.mkdir(parents=True)
            Image.new("RGB", (8, 8), color=(10, 20, 30)).save(folder / "ok.png")
    (tmp_path / "images" / "val" / "b" / "zz-broken.png").write_bytes(b"\x89PNG\r\n not really")
    args = {"img_size": 32, "depth": 1, "embed_dim": 32, "num_heads": 2, "num_classes": 2}
    model = timm.create_model("deit_tiny_patch16_224", **args)
    base = describe(model, name="deit_tiny_patch16_224", model_args=args)
    save_pruned(apply_policy(model, Policy.keep_all(base)), Policy.keep_all(base), tmp_path / "model")
    data = f"imagefolder:{tmp_path / 'images'}"
    code = main(["evaluate", str(tmp_path / "model"), "--data", data, "--split", "test", "--batch-size", "1"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "zz-broken.png: not a readable image" in err, err

    config = DataConfig(source="imagefolder", path=tmp_path / "images", num_workers=1)
    with pytest.raises(InputError) as raised:
        list(load_data(config, base).eval_loader("test"))
    assert one_line(raised.value).startswith("data.path: ")
    assert one_line(raised.value).endswith(
        "zz-broken.png: not a readable image (cannot identify image file "
        f"'{tmp_path / 'images' / 'val' / 'b' / 'zz-broken.png'}')"
    )


def test_the_default_test_seed_keeps_the_digest_that_caches_were_keyed_by():
    # The digest of the embedded data section before test_seed existed (dense models cached under it).
    config = DataConfig(search_val_fraction=0.3)
    assert config.digest() == "7e47ae206aaa392d"
    assert DataConfig(search_val_fraction=0.3, test_seed=1).digest() != config.digest()
    assert DataConfig(search_val_fraction=0.3, check_images=False).digest() == config.digest()
