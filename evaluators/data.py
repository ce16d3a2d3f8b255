"""Data: deterministic, disjoint train / search-val / test splits and their loaders.

- ``digits``: scikit-learn's bundled 8×8 digits (1,797 images, no download), upscaled to the
  model's input size, replicated to its channels, normalised with the training split's statistics.
  A stratified 20 % is test (``data.test_seed`` draws another 20 %, to repeat a comparison on
  other images); search-val is carved from the rest.
- ``imagefolder``: ``PATH/train`` and ``PATH/val`` class folders (ImageNet layout) with timm's
  transforms for the model (``resolve_data_config`` + ``create_transform``); test is ``val``.
- ``cifar10`` / ``cifar100``: a torchvision-format folder (``download=False``); test is the test set.
- ``mnist`` / ``fashion-mnist``: the four IDX files of the data set (gzipped or not), in ``PATH``
  itself (as Debian's ``dataset-fashion-mnist`` installs them in ``/usr/share/datasets/fashion-mnist``)
  or in torchvision's ``PATH/MNIST/raw`` / ``PATH/FashionMNIST/raw``. Test is the 10,000 test
  images; the 28×28 images are resized to the model's input, replicated to its channels and
  normalised with the training split's statistics, like digits (and shifted the same way in
  training).

For folder sources, search-val is a fixed, seeded subset of the training images evaluated with
the eval transform; the remaining training images are the train split. The search only ever sees
train and search-val.
"""

from __future__ import annotations

import functools
import gzip
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from vitprune.evaluators.config import DataConfig
from vitprune.spaces import Architecture, InputError

log = logging.getLogger(__name__)

DIGITS_TEST_FRACTION = 0.2


@dataclass(frozen=True)
class DataSplits:
    """The three splits as datasets, and how to batch them.

    ``train_clean`` holds the training images without augmentation (eval transform): criteria are
    computed on it, so their scores depend only on the data and the seed.
    """

    train: Dataset
    search_val: Dataset
    test: Dataset
    num_classes: int
    config: DataConfig
    train_clean: Dataset

    def train_loader(self, *, seed: int | None = None) -> DataLoader:
        """Shuffled training batches; the order depends only on ``seed``."""
        generator = torch.Generator().manual_seed(self.config.seed if seed is None else seed)
        return DataLoader(
            self.train,
            batch_size=self.config.batch_size,
            shuffle=True,
            drop_last=len(self.train) > self.config.batch_size,
            generator=generator,
            num_workers=self.config.num_workers,
            pin_memory=self.config.pin_memory,
            persistent_workers=self.config.num_workers > 0,
        )

    def calibration_loader(self, *, seed: int = 0) -> DataLoader:
        """Seeded shuffled batches of un-augmented training images (for importance criteria)."""
        generator = torch.Generator().manual_seed(seed)
        return DataLoader(
            self.train_clean, batch_size=self.config.batch_size, shuffle=True, generator=generator
        )

    def eval_loader(self, split: str) -> DataLoader:
        """Batches of ``"search-val"`` or ``"test"`` (or ``"train"``), in a fixed order."""
        datasets = {"train": self.train, "search-val": self.search_val, "test": self.test}
        if split not in datasets:
            raise InputError(f"split: expected one of {', '.join(datasets)}, got {split!r}")
        return DataLoader(
            datasets[split],
            batch_size=self.config.eval_batch_size,
            shuffle=False,
            num_workers=self.config.num_workers,
            pin_memory=self.config.pin_memory,
        )


def _split_indices(
    n: int, fraction: float, *, seed: int, labels: np.ndarray | None = None
) -> tuple[list, list]:
    """A seeded (stratified when ``labels`` is given) split of ``range(n)`` into (rest, held-out)."""
    from sklearn.model_selection import train_test_split

    try:
        rest, held = train_test_split(np.arange(n), test_size=fraction, random_state=seed, stratify=labels)
    except ValueError as error:  # too few images to hold one of every class on each side
        raise InputError(f"data: {fraction:g} of {n} images cannot be split by class ({error})") from None
    return sorted(rest.tolist()), sorted(held.tolist())


def _digits(config: DataConfig, base: Architecture) -> DataSplits:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0  # (N, 1, 8, 8) in [0, 1]
    images = F.interpolate(images, size=tuple(base.model_args.get("img_size", (8, 8))), mode="bilinear")
    images = images.expand(-1, base.in_chans, -1, -1).contiguous()
    labels = torch.tensor(digits.target, dtype=torch.long)
    rest, test = _split_indices(
        len(labels), DIGITS_TEST_FRACTION, seed=config.test_seed, labels=digits.target
    )
    train, search_val = _split_indices(
        len(rest), config.search_val_fraction, seed=config.seed, labels=digits.target[rest]
    )
    train, search_val = [rest[i] for i in train], [rest[i] for i in search_val]
    if config.max_train_samples is not None:
        train = train[: config.max_train_samples]
    mean, std = images[train].mean(), images[train].std()
    full = TensorDataset((images - mean) / std, labels)
    return _shifted_splits(full, train, search_val, Subset(full, test), config, background=float(-mean / std))


def _shifted_splits(
    full: Dataset,
    train: list[int],
    search_val: list[int],
    test: Dataset,
    config: DataConfig,
    *,
    background: float,
) -> DataSplits:
    """The splits of a normalised in-memory source (digits, MNIST): ``train`` and ``search_val``
    index ``full``; training images are shifted (``config.augment_shift``), filling with
    ``background``."""
    shift = config.augment_shift
    augmented = ShiftedImages(full, max_shift=shift, background=background) if shift else full
    return DataSplits(
        Subset(augmented, train),
        Subset(full, search_val),
        test,
        num_classes=10,
        config=config,
        train_clean=Subset(full, train),
    )


class ShiftedImages(Dataset):
    """Images (digits, MNIST) shifted by up to ``max_shift`` pixels in each direction, the
    uncovered border filled with the background value: the augmentation that lets a ViT trained
    from scratch on 1,221 digits generalise. Draws from torch's global RNG (seeded by training)."""

    def __init__(self, images: Dataset, *, max_shift: int, background: float) -> None:
        self.images = images
        self.max_shift = max_shift
        self.background = background

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        image, label = self.images[index]
        s = self.max_shift
        dy, dx = torch.randint(-s, s + 1, (2,)).tolist()
        padded = F.pad(image, (s, s, s, s), value=self.background)
        h, w = image.shape[-2:]
        return padded[..., s + dy : s + dy + h, s + dx : s + dx + w], label


IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
TORCHVISION_FOLDERS = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}


def read_idx(path: Path) -> np.ndarray:
    """The array of unsigned bytes in the IDX file ``path`` (MNIST's format: the magic bytes
    0, 0, 0x08, rank, then one big-endian 32-bit size per dimension), gzipped or not. A file that
    is not one, or is cut short, is an :class:`InputError` naming it."""
    try:
        with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as file:
            data = file.read()
    except (OSError, EOFError) as error:  # gzip's BadGzipFile is an OSError
        raise InputError(f"data.path: {path}: unreadable ({error})") from None
    if len(data) < 4 or data[:3] != b"\x00\x00\x08":
        raise InputError(f"data.path: {path}: not an IDX file of unsigned bytes")
    rank = data[3]
    header = 4 + 4 * rank
    if len(data) < header:
        raise InputError(f"data.path: {path}: cut short in its header")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(rank))
    if len(data) - header != math.prod(shape):
        raise InputError(
            f"data.path: {path}: {len(data) - header} bytes of data where its header says {shape}"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def _idx_path(root: Path, name: str, source: str) -> Path:
    for folder in (root, root / TORCHVISION_FOLDERS[source] / "raw"):
        for path in (folder / name, folder / f"{name}.gz"):
            if path.is_file():
                return path
    raise InputError(
        f"data.path: no {name}[.gz] under {root} (expected the IDX files of {source}; "
        "Debian's dataset-fashion-mnist package puts them in /usr/share/datasets/fashion-mnist)"
    )


def _read_idx_split(root: Path, split: str, source: str) -> tuple[Tensor, np.ndarray]:
    image_file, label_file = (_idx_path(root, name, source) for name in IDX_FILES[split])
    images, labels = read_idx(image_file), read_idx(label_file)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise InputError(
            f"data.path: {image_file.name} holds {images.shape} and {label_file.name} {labels.shape}; "
            "expected N images and N labels"
        )
    if labels.max(initial=0) > 9:
        raise InputError(f"data.path: {label_file}: label {labels.max()}, expected 0-9")
    return torch.from_numpy(images.copy()), labels


class GrayImages(Dataset):
    """Grayscale ``uint8`` images served as the model takes them: resized to ``size`` (per image,
    so that a 224-pixel model does not hold the whole set at that size), replicated to
    ``channels``, normalised by ``mean`` and ``std``."""

    def __init__(
        self,
        images: Tensor,
        labels: np.ndarray,
        *,
        size: tuple[int, int],
        channels: int,
        mean: float,
        std: float,
    ) -> None:
        self.images, self.labels = images, torch.tensor(labels, dtype=torch.long)
        self.size, self.channels, self.mean, self.std = size, channels, mean, std

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        image = self.images[index].to(torch.float32).div(255)[None, None]
        if tuple(image.shape[-2:]) != self.size:
            image = F.interpolate(image, size=self.size, mode="bilinear", antialias=True)
        image = ((image[0] - self.mean) / self.std).expand(self.channels, -1, -1).contiguous()
        return image, self.labels[index]


def _mnist(config: DataConfig, base: Architecture) -> DataSplits:
    root = Path(config.path)
    train_images, train_labels = _read_idx_split(root, "train", config.source)
    test_images, test_labels = _read_idx_split(root, "test", config.source)
    train, search_val = _split_indices(
        len(train_labels), config.search_val_fraction, seed=config.seed, labels=train_labels
    )
    if config.max_train_samples is not None:
        train = train[: config.max_train_samples]
    pixels = train_images[train].to(torch.float32).div(255)
    mean, std = pixels.mean().item(), pixels.std().item()
    served = functools.partial(GrayImages, size=_input_size(base), channels=base.in_chans, mean=mean, std=std)
    full, test = served(train_images, train_labels), served(test_images, test_labels)
    return _shifted_splits(full, train, search_val, test, config, background=-mean / std)


def _input_size(base: Architecture) -> tuple[int, int]:
    """The model's own input size (a pretrained_cfg keeps the size its weights were trained at)."""
    return (base.grid_size[0] * base.patch_size[0], base.grid_size[1] * base.patch_size[1])


def _timm_transforms(base: Architecture) -> tuple[object, object]:
    import timm
    from timm.data import create_transform, resolve_data_config

    with torch.device("meta"):
        model = timm.create_model(base.model, pretrained=False, **base.model_args)
    data_config = resolve_data_config(args={"input_size": (base.in_chans, *_input_size(base))}, model=model)
    return create_transform(**data_config, is_training=True), create_transform(
        **data_config, is_training=False
    )


def _carve(train_all: Dataset, eval_all: Dataset, config: DataConfig) -> tuple[Dataset, Dataset, Dataset]:
    """Split one training set into train (train transform), search-val and clean train (eval transform)."""
    train, search_val = _split_indices(len(train_all), config.search_val_fraction, seed=config.seed)
    if config.max_train_samples is not None:
        train = train[: config.max_train_samples]
    return Subset(train_all, train), Subset(eval_all, search_val), Subset(eval_all, train)


def _image_root(config: DataConfig) -> Path:
    root = Path(config.path)
    for split in ("train", "val"):
        if not (root / split).is_dir():
            raise InputError(f"data.path: {root / split} is missing (expected train/ and val/ class folders)")
    return root


def read_image(path: str) -> Any:
    """The RGB image at ``path``; a file PIL cannot decode is an :class:`InputError` naming it.

    Unreadable images are fatal, not skipped: a search must not quietly train on other data than
    the user gave it. Remove or replace the file, then run again (or ``--resume``).
    """
    from PIL import Image

    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except OSError as error:  # PIL's UnidentifiedImageError and truncated files are OSErrors
        raise InputError(f"data.path: {path}: not a readable image ({error})") from None


def check_images(config: DataConfig) -> int:
    """Open the header of every image of an ``imagefolder`` source (before any work starts), so
    that a file PIL cannot identify is named at once rather than minutes into training. Returns
    the number of files checked. Headers only: a file that is corrupt further in is caught by
    :func:`read_image` when it is first read."""
    from PIL import Image
    from torchvision.datasets.folder import IMG_EXTENSIONS

    root = _image_root(config)
    checked = 0
    for split in ("train", "val"):
        for path in sorted((root / split).rglob("*")):
            if path.is_file() and path.suffix.lower() in IMG_EXTENSIONS:
                try:
                    with Image.open(path):
                        checked += 1
                except OSError as error:
                    raise InputError(f"data.path: {path}: not a readable image ({error})") from None
    return checked


def num_classes(config: DataConfig) -> int:
    """The class count of ``config.source``, without reading any image."""
    if config.source == "digits":
        return 10
    if config.source in ("cifar10", "cifar100"):
        return 10 if config.source == "cifar10" else 100
    if config.source in TORCHVISION_FOLDERS:
        return 10
    classes = [entry for entry in (_image_root(config) / "train").iterdir() if entry.is_dir()]
    if not classes:
        raise InputError(f"data.path: {config.path}/train holds no class folders")
    return len(classes)


def _imagefolder(config: DataConfig, base: Architecture) -> DataSplits:
    from torchvision.datasets import ImageFolder

    root = _image_root(config)
    train_tf, eval_tf = _timm_transforms(base)
    try:
        train_all = ImageFolder(root / "train", transform=train_tf, loader=read_image)
        eval_all = ImageFolder(root / "train", transform=eval_tf, loader=read_image)
        test = ImageFolder(root / "val", transform=eval_tf, loader=read_image)
    except (FileNotFoundError, RuntimeError) as error:
        raise InputError(f"data.path: {root}: {error}") from None
    if test.classes != train_all.classes:
        raise InputError(f"data.path: {root}/val has classes {test.classes[:3]}…, unlike train/")
    train, search_val, clean = _carve(train_all, eval_all, config)
    return DataSplits(
        train, search_val, test, num_classes=len(train_all.classes), config=config, train_clean=clean
    )


def _cifar(config: DataConfig, base: Architecture) -> DataSplits:
    from torchvision.datasets import CIFAR10, CIFAR100

    dataset_cls, classes = (CIFAR10, 10) if config.source == "cifar10" else (CIFAR100, 100)
    train_tf, eval_tf = _timm_transforms(base)
    try:
        train_all = dataset_cls(str(config.path), train=True, transform=train_tf, download=False)
        eval_all = dataset_cls(str(config.path), train=True, transform=eval_tf, download=False)
        test = dataset_cls(str(config.path), train=False, transform=eval_tf, download=False)
    except RuntimeError:
        folder = "cifar-10-batches-py" if classes == 10 else "cifar-100-python"
        raise InputError(
            f"data.path: no {config.source} data under {config.path} (expected torchvision's {folder}/; "
            "download it where there is internet)"
        ) from None
    train, search_val, clean = _carve(train_all, eval_all, config)
    return DataSplits(train, search_val, test, num_classes=classes, config=config, train_clean=clean)


def load_data(config: DataConfig, base: Architecture) -> DataSplits:
    """The splits of ``config.source`` prepared for the model ``base``."""
    if config.path is not None and not Path(config.path).exists():
        raise InputError(f"data.path: {config.path} does not exist")
    loaders = {
        "digits": _digits,
        "imagefolder": _imagefolder,
        "cifar10": _cifar,
        "cifar100": _cifar,
        "mnist": _mnist,
        "fashion-mnist": _mnist,
    }
    splits = loaders[config.source](config, base)
    log.info(
        "%s: %d train, %d search-val, %d test images, %d classes",
        config.source,
        len(splits.train),
        len(splits.search_val),
        len(splits.test),
        splits.num_classes,
    )
    return splits
