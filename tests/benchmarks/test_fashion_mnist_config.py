"""benchmarks/fashion-mnist.yaml is search.yaml's search pointed at Fashion-MNIST: only the data,
the dense training and the name may differ, or BENCHMARKS.md section 9 would not be the race of
section 7 on more test images."""

from pathlib import Path

from vitprune.search.spec import load_spec

ROOT = Path(__file__).resolve().parents[2]


def test_the_fashion_mnist_race_differs_from_the_embedded_search_only_in_its_data():
    digits, _ = load_spec(ROOT / "search.yaml")
    fashion, _ = load_spec(ROOT / "benchmarks" / "fashion-mnist.yaml")
    assert fashion.data.source == "fashion-mnist"
    assert str(fashion.data.path) == "/usr/share/datasets/fashion-mnist"  # Debian's dataset-fashion-mnist
    same = {"data", "dense_training", "name"}
    differ = {key for key in type(digits).model_fields if getattr(digits, key) != getattr(fashion, key)}
    assert differ <= same, differ - same
