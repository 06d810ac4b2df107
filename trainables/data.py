"""Datasets for the sweeps, held whole as tensors on the training device.

Supported datasets (``DATASETS``):

- ``digits``: scikit-learn's embedded 8×8 digits (never downloads). It has no official test
  split, so a fixed, stratified 20 % test set is carved with a seed that does not depend on
  ``split_seed``: every trial of every sweep is scored on the same test images.
- ``mnist`` / ``fashion_mnist``: the four standard IDX files (gzip or raw) in ``data_dir``.
- ``cifar10``: the *binary* CIFAR-10 batches in ``data_dir`` (or its ``cifar-10-batches-bin/``
  subfolder). Pickle files are never read.

Every split is deterministic: the validation set is a ``val_fraction`` share of the official
training set chosen by a numpy Generator seeded with ``split_seed``. Pixels go to [0, 1] and are
then standardised per channel with mean/std of the *training* part only (after the validation
split), so no statistic leaks from validation or test data. Images are NCHW float32, labels int64.

The data sets are small, so batching is plain tensor indexing (``iterate_batches``) and CIFAR
augmentation is a vectorised crop + flip (``random_crop_flip``); there is no DataLoader and no
per-sample Python work. Nothing is cached on disk. Any bad or missing file raises ``DataError``
with a one-line message that names the file.
"""

from __future__ import annotations

import dataclasses
import gzip
import math
import numbers
import os
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from trainables.config import DATASETS

__all__ = [
    "DATASETS",
    "DataError",
    "DatasetSplits",
    "iterate_batches",
    "load_dataset",
    "random_crop_flip",
    "random_shift",
    "read_idx",
]


#: Seed of the digits test carve; fixed so that the test set never depends on ``split_seed``.
DIGITS_TEST_SEED = 1797
DIGITS_TEST_FRACTION = 0.2

#: IDX type byte -> element dtype (big-endian as stored in the file).
_IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
IDX_IMAGES_MAGIC = 0x00000803  # 2051: ubyte, 3 dims (count, rows, cols)
IDX_LABELS_MAGIC = 0x00000801  # 2049: ubyte, 1 dim (count)

_IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
_CIFAR_TRAIN_FILES = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
_CIFAR_TEST_FILE = "test_batch.bin"
_CIFAR_SUBDIR = "cifar-10-batches-bin"
_CIFAR_SHAPE = (3, 32, 32)
_CIFAR_RECORD = 1 + 3 * 32 * 32


class DataError(ValueError):
    """Bad or missing data file; message is one line and names the file."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))  # collapse newlines: always one line


@dataclass(frozen=True, eq=False, repr=False)
class DatasetSplits:
    """Train/validation/test tensors of one dataset, all on the same device.

    ``eq=False``: element-wise tensor equality has no single truth value, so splits compare by
    identity; ``repr`` is a one-line summary instead of printing every tensor.
    """

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    input_shape: tuple[int, int, int]  # (C, H, W)

    _TENSOR_FIELDS = ("train_x", "train_y", "val_x", "val_y", "test_x", "test_y")

    def __post_init__(self) -> None:
        for part in ("train", "val", "test"):
            x, y = getattr(self, f"{part}_x"), getattr(self, f"{part}_y")
            if x.shape[0] != y.shape[0] or tuple(x.shape[1:]) != tuple(self.input_shape):
                raise ValueError(
                    f"{self.name} {part}: x {tuple(x.shape)} / y {tuple(y.shape)} do not match "
                    f"input_shape {self.input_shape}"
                )

    @property
    def sizes(self) -> dict[str, int]:
        """Number of samples per split, e.g. ``{"train": 54000, "val": 6000, "test": 10000}``."""
        return {part: int(getattr(self, f"{part}_y").shape[0]) for part in ("train", "val", "test")}

    @property
    def device(self) -> torch.device:
        """Device holding the tensors."""
        return self.train_x.device

    def to(self, device: torch.device | str) -> DatasetSplits:
        """Copy of the splits with every tensor moved to ``device``."""
        device = torch.device(device)
        moved = {f: getattr(self, f).to(device) for f in self._TENSOR_FIELDS}
        return dataclasses.replace(self, **moved)

    def __repr__(self) -> str:
        return (
            f"DatasetSplits(name={self.name!r}, sizes={self.sizes}, num_classes={self.num_classes}, "
            f"input_shape={self.input_shape}, device={self.device})"
        )


# --------------------------------------------------------------------------------------------
# Public entry point
# --------------------------------------------------------------------------------------------


def load_dataset(
    name: str,
    data_dir: str | os.PathLike | None = None,
    *,
    val_fraction: float = 0.1,
    split_seed: int = 0,
    device: torch.device | str = "cpu",
) -> DatasetSplits:
    """Load ``name`` into standardised train/val/test tensors on ``device``.

    ``data_dir`` is required for mnist, fashion_mnist and cifar10 and ignored for digits. Same
    arguments give bit-identical tensors.
    """
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; known datasets: {', '.join(DATASETS)}")
    _check_val_fraction(val_fraction)
    if name == "digits":
        raw = _load_digits_raw()
    else:
        directory = _require_dir(name, data_dir)
        raw = _load_cifar10_raw(directory) if name == "cifar10" else _load_idx_dir_raw(directory)
    return _build_splits(name, raw, val_fraction=val_fraction, split_seed=split_seed, device=device)


# --------------------------------------------------------------------------------------------
# Raw loaders: each returns uint8 NCHW images + int64 labels, unsplit and unnormalised
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class _RawData:
    """Integer pixels (NCHW, values 0..``scale``) and labels of the official train/test sets."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    scale: float  # pixel value that maps to 1.0
    num_classes: int


def _load_digits_raw() -> _RawData:
    """scikit-learn digits (values 0..16) with a fixed, stratified 20 % test carve."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    images = bunch.images.astype(np.uint8)[:, None, :, :]  # (1797, 1, 8, 8), exact integers
    labels = bunch.target.astype(np.int64)
    train_idx, test_idx = train_test_split(
        np.arange(labels.shape[0]),
        test_size=DIGITS_TEST_FRACTION,
        stratify=labels,
        random_state=DIGITS_TEST_SEED,
    )
    train_idx, test_idx = np.sort(train_idx), np.sort(test_idx)
    return _RawData(
        train_images=images[train_idx],
        train_labels=labels[train_idx],
        test_images=images[test_idx],
        test_labels=labels[test_idx],
        scale=16.0,
        num_classes=10,
    )


def _load_idx_dir_raw(directory: Path) -> _RawData:
    """The four MNIST-style IDX files of ``directory`` (serves mnist and fashion_mnist)."""
    paths = {key: _find_file(directory, (f"{base}.gz", base)) for key, base in _IDX_FILES.items()}
    parts = {}
    for split in ("train", "test"):
        images_path, labels_path = paths[f"{split}_images"], paths[f"{split}_labels"]
        images = read_idx(images_path, expected_magic=IDX_IMAGES_MAGIC)
        labels = read_idx(labels_path, expected_magic=IDX_LABELS_MAGIC)
        if images.shape[0] != labels.shape[0]:
            raise DataError(
                f"{images_path}: has {images.shape[0]} images but {labels_path} has "
                f"{labels.shape[0]} labels (counts must match)"
            )
        _check_labels(labels, 10, labels_path)
        parts[split] = (images[:, None, :, :], labels.astype(np.int64))
    train_hw, test_hw = parts["train"][0].shape[2:], parts["test"][0].shape[2:]
    if train_hw != test_hw:
        raise DataError(
            f"{paths['test_images']}: images are {test_hw[0]}x{test_hw[1]} but "
            f"{paths['train_images']} has {train_hw[0]}x{train_hw[1]}"
        )
    return _RawData(*parts["train"], *parts["test"], scale=255.0, num_classes=10)


def _load_cifar10_raw(directory: Path) -> _RawData:
    """CIFAR-10 binary batches from ``directory`` or its ``cifar-10-batches-bin/`` subfolder."""

    def find(name: str) -> Path:
        return _find_file(directory, (name, f"{_CIFAR_SUBDIR}/{name}"))

    train_paths = [find(name) for name in _CIFAR_TRAIN_FILES]
    test_path = find(_CIFAR_TEST_FILE)
    train = [_read_cifar_batch(p) for p in train_paths]
    test_images, test_labels = _read_cifar_batch(test_path)
    return _RawData(
        train_images=np.concatenate([images for images, _ in train]),
        train_labels=np.concatenate([labels for _, labels in train]),
        test_images=test_images,
        test_labels=test_labels,
        scale=255.0,
        num_classes=10,
    )


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 binary batch: records of 1 label byte + 3072 channel-major pixel bytes."""
    data = np.frombuffer(_read_bytes(path), dtype=np.uint8)
    if data.size == 0 or data.size % _CIFAR_RECORD:
        raise DataError(
            f"{path}: size {data.size} bytes is not a positive multiple of the "
            f"{_CIFAR_RECORD}-byte CIFAR-10 record (1 label + 3072 pixels)"
        )
    records = data.reshape(-1, _CIFAR_RECORD)
    labels = records[:, 0].astype(np.int64)
    _check_labels(labels, 10, path)
    images = records[:, 1:].reshape(-1, *_CIFAR_SHAPE).copy()
    return images, labels


# --------------------------------------------------------------------------------------------
# IDX files
# --------------------------------------------------------------------------------------------


def read_idx(path: str | os.PathLike, expected_magic: int | None = None) -> np.ndarray:
    """Parse one IDX file (gzip if the name ends in ``.gz``) into a native-endian array.

    The magic is ``0x0000`` + type byte + ndim byte, followed by ``ndim`` big-endian uint32
    dims; the payload must be exactly ``prod(dims)`` elements (no truncation, no trailing bytes).
    """
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 4:
        raise DataError(f"{path}: truncated IDX header: {len(data)} bytes, need at least 4")
    magic = int(np.frombuffer(data, dtype=">u4", count=1)[0])
    zero, type_code, ndim = magic >> 16, (magic >> 8) & 0xFF, magic & 0xFF
    if expected_magic is not None and magic != expected_magic:
        raise DataError(f"{path}: wrong IDX magic number {magic}, expected {expected_magic}")
    if zero != 0 or type_code not in _IDX_DTYPES:
        raise DataError(f"{path}: not an IDX file (magic number {magic:#010x})")
    header_len = 4 + 4 * ndim
    if len(data) < header_len:
        raise DataError(f"{path}: truncated IDX header: {len(data)} bytes, need {header_len} for {ndim} dims")
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    dtype = _IDX_DTYPES[type_code]
    expected = math.prod(dims) * dtype.itemsize
    actual = len(data) - header_len
    if actual != expected:
        what = "truncated" if actual < expected else "trailing bytes"
        raise DataError(
            f"{path}: {what}: dims {'x'.join(map(str, dims))} need {expected} data bytes after the "
            f"{header_len}-byte header, file has {actual}"
        )
    array = np.frombuffer(data, dtype=dtype, offset=header_len).reshape(dims)
    return array.astype(dtype.newbyteorder("="))  # native order, writable copy


def _read_bytes(path: Path) -> bytes:
    """Whole file contents, gunzipped if the name ends in ``.gz``; any failure is a DataError."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    if path.suffix != ".gz":
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{path}: corrupt gzip file: {exc}") from exc


# --------------------------------------------------------------------------------------------
# Shared helpers
# --------------------------------------------------------------------------------------------


def _check_val_fraction(val_fraction: float) -> None:
    """``val_fraction`` must lie strictly between 0 and 1."""
    if not isinstance(val_fraction, numbers.Real) or not 0.0 < float(val_fraction) < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction!r}")


def _require_dir(name: str, data_dir: str | os.PathLike | None) -> Path:
    """``data_dir`` as an existing directory, else a DataError naming it."""
    if data_dir is None:
        raise DataError(f"dataset {name!r} needs data_dir (the directory holding its files)")
    directory = Path(data_dir)
    if not directory.exists():
        raise DataError(f"data_dir {directory} for dataset {name!r} does not exist")
    if not directory.is_dir():
        raise DataError(f"data_dir {directory} for dataset {name!r} is not a directory")
    return directory


def _find_file(directory: Path, candidates: tuple[str, ...]) -> Path:
    """First of ``candidates`` (relative to ``directory``) that is a file, else a DataError."""
    for candidate in candidates:
        path = directory / candidate
        if path.is_file():
            return path
    raise DataError(f"missing data file in {directory}: looked for {', '.join(candidates)}")


def _check_labels(labels: np.ndarray, num_classes: int, path: Path) -> None:
    """Labels must be integers in ``[0, num_classes)``."""
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(f"{path}: labels range {int(labels.min())}..{int(labels.max())}, expected 0..{num_classes - 1}")


def _val_split(n: int, val_fraction: float, split_seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (train, val) indices of ``range(n)``; val is ``round(val_fraction * n)`` samples."""
    n_val = int(round(val_fraction * n))
    if not 0 < n_val < n:
        raise ValueError(f"val_fraction={val_fraction} of {n} training samples leaves an empty train or val split")
    perm = np.random.default_rng(split_seed).permutation(n)
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def _channel_stats(images: np.ndarray, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Exact per-channel mean/std (population) of ``images / scale`` from byte histograms.

    Histogramming the integer pixels is exact, order-independent (hence bit-reproducible) and
    needs no float copy of the data (torch's uint8 bincount is ~30x faster than numpy's).
    """
    means, stds = [], []
    for c in range(images.shape[1]):
        channel = torch.from_numpy(np.ascontiguousarray(images[:, c]).reshape(-1))
        counts = torch.bincount(channel, minlength=256).numpy().astype(np.float64)
        values = np.arange(counts.size, dtype=np.float64) / scale
        total = counts.sum()
        mean = float((counts * values).sum() / total)
        std = math.sqrt(float((counts * (values - mean) ** 2).sum() / total))
        means.append(mean)
        stds.append(std if std > 1e-12 else 1.0)
    return np.asarray(means), np.asarray(stds)


def _standardise(
    images: np.ndarray, scale: float, mean: np.ndarray, std: np.ndarray, device: torch.device
) -> torch.Tensor:
    """uint8 NCHW -> float32 ``(x / scale - mean) / std`` on ``device`` (bytes are moved, not floats)."""
    x = torch.from_numpy(np.ascontiguousarray(images)).to(device).to(torch.float32)
    shape = (1, -1, 1, 1)
    mean_t = torch.as_tensor(mean, dtype=torch.float32, device=device).view(shape)
    std_t = torch.as_tensor(std, dtype=torch.float32, device=device).view(shape)
    return x.div_(scale).sub_(mean_t).div_(std_t)


def _build_splits(
    name: str, raw: _RawData, *, val_fraction: float, split_seed: int, device: torch.device | str
) -> DatasetSplits:
    """Carve validation from ``raw``'s training set, standardise with train stats, move to ``device``."""
    device = torch.device(device)
    train_idx, val_idx = _val_split(raw.train_labels.shape[0], val_fraction, split_seed)
    train_images = raw.train_images[train_idx]
    mean, std = _channel_stats(train_images, raw.scale)

    def images(x: np.ndarray) -> torch.Tensor:
        return _standardise(x, raw.scale, mean, std, device)

    def labels(y: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(y, dtype=np.int64)).to(device)

    c, h, w = raw.train_images.shape[1:]
    return DatasetSplits(
        name=name,
        train_x=images(train_images),
        train_y=labels(raw.train_labels[train_idx]),
        val_x=images(raw.train_images[val_idx]),
        val_y=labels(raw.train_labels[val_idx]),
        test_x=images(raw.test_images),
        test_y=labels(raw.test_labels),
        num_classes=raw.num_classes,
        input_shape=(int(c), int(h), int(w)),
    )


# --------------------------------------------------------------------------------------------
# Batching and augmentation
# --------------------------------------------------------------------------------------------


def _draw_device(x: torch.Tensor, generator: torch.Generator | None) -> torch.device:
    """Where random numbers must be drawn: on the generator's device, else on ``x``'s."""
    return generator.device if generator is not None else x.device


def iterate_batches(
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int,
    *,
    generator: torch.Generator | None = None,
    shuffle: bool = True,
    augment: Callable[[torch.Tensor, torch.Generator | None], torch.Tensor] | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``(x_batch, y_batch)`` covering every sample once; the last batch may be partial.

    With ``shuffle`` the order is one ``randperm`` drawn from ``generator`` (on the generator's
    device, then moved to ``x``'s, so a CPU generator works for CUDA data). ``augment(xb,
    generator)`` is applied to each image batch.
    """
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x has {x.shape[0]} samples but y has {y.shape[0]}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    n = x.shape[0]
    order = None
    if shuffle:
        order = torch.randperm(n, generator=generator, device=_draw_device(x, generator))
        order = order.to(x.device)
    for start in range(0, n, batch_size):
        if order is None:
            xb, yb = x[start : start + batch_size], y[start : start + batch_size]
        else:
            idx = order[start : start + batch_size]
            xb, yb = x.index_select(0, idx), y.index_select(0, idx.to(y.device))
        if augment is not None:
            xb = augment(xb, generator)
        yield xb, yb


def random_crop_flip(
    x: torch.Tensor, generator: torch.Generator | None, padding: int = 4, flip: bool = True
) -> torch.Tensor:
    """Standard CIFAR augmentation of a batch (N, C, H, W): zero-pad, random crop, random h-flip.

    Each sample gets its own crop offset in ``[0, 2 * padding]`` and (with ``flip``) a fair-coin
    horizontal flip, drawn from ``generator``; the crop/flip is one vectorised gather with
    per-sample index grids.  ``flip=False`` gives random shifts (for digits, where a mirrored
    image is another symbol).
    """
    if x.dim() != 4:
        raise ValueError(f"random_crop_flip expects (N, C, H, W), got shape {tuple(x.shape)}")
    if padding < 0:
        raise ValueError(f"padding must be >= 0, got {padding}")
    n, c, h, w = x.shape
    draw = _draw_device(x, generator)
    off_y = torch.randint(0, 2 * padding + 1, (n,), generator=generator, device=draw).to(x.device)
    off_x = torch.randint(0, 2 * padding + 1, (n,), generator=generator, device=draw).to(x.device)
    flips = (
        torch.randint(0, 2, (n,), generator=generator, device=draw).to(x.device).bool()
        if flip
        else torch.zeros(n, dtype=torch.bool, device=x.device)
    )

    padded = F.pad(x, (padding, padding, padding, padding)) if padding else x
    rows = off_y[:, None] + torch.arange(h, device=x.device)  # (N, H)
    cols_fwd = torch.arange(w, device=x.device)
    cols = off_x[:, None] + torch.where(flips[:, None], cols_fwd.flip(0), cols_fwd)  # (N, W)
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    chan = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[batch, chan, rows[:, None, :, None], cols[:, None, None, :]]


def random_shift(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Digit augmentation: each image moved by up to 2 pixels each way (zero-filled), never mirrored."""
    return random_crop_flip(x, generator, padding=2, flip=False)
