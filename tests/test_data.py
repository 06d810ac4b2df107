"""Tests for trainables.data: splits, IDX/CIFAR parsing and errors, batching, augmentation.

All file-based tests write tiny IDX / CIFAR files into ``tmp_path``; no real data is needed.
"""

from __future__ import annotations

import gzip
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from trainables.data import (
    DATASETS,
    DataError,
    DatasetSplits,
    iterate_batches,
    load_dataset,
    random_crop_flip,
    random_shift,
    read_idx,
)

IDX_NAMES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


# ------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------


def idx_bytes(array: np.ndarray, magic: int | None = None) -> bytes:
    """Serialise a uint8 array as IDX (magic 0x08 type, ndim dims)."""
    array = np.asarray(array, dtype=np.uint8)
    if magic is None:
        magic = 0x0800 | array.ndim
    header = np.array([magic, *array.shape], dtype=">u4").tobytes()
    return header + array.tobytes()


def write_file(path: Path, payload: bytes) -> Path:
    """Write ``payload`` gzip-compressed if the name ends in .gz, else raw."""
    path.write_bytes(gzip.compress(payload) if path.suffix == ".gz" else payload)
    return path


def make_idx_dir(
    directory: Path,
    *,
    gz: bool,
    n_train: int = 50,
    n_test: int = 20,
    rows: int = 5,
    cols: int = 4,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Write the four MNIST-style IDX files; return the arrays written."""
    rng = np.random.default_rng(seed)
    arrays = {
        "train_images": rng.integers(0, 256, (n_train, rows, cols), dtype=np.uint8),
        "train_labels": np.arange(n_train, dtype=np.uint8) % 10,
        "test_images": rng.integers(0, 256, (n_test, rows, cols), dtype=np.uint8),
        "test_labels": (np.arange(n_test, dtype=np.uint8) * 3) % 10,
    }
    directory.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if gz else ""
    for key, array in arrays.items():
        write_file(directory / f"{IDX_NAMES[key]}{suffix}", idx_bytes(array))
    return arrays


def cifar_bytes(images: np.ndarray, labels: np.ndarray) -> bytes:
    """CIFAR-10 binary records: label byte + 3072 channel-major pixel bytes."""
    records = np.concatenate([labels.astype(np.uint8)[:, None], images.reshape(len(labels), -1)], 1)
    return records.astype(np.uint8).tobytes()


def make_cifar_dir(directory: Path, per_batch: int = 4, n_test: int = 6) -> dict[str, np.ndarray]:
    """Write data_batch_1..5.bin and test_batch.bin; return the concatenated arrays."""
    rng = np.random.default_rng(1)
    directory.mkdir(parents=True, exist_ok=True)
    train_x, train_y = [], []
    for i in range(1, 6):
        x = rng.integers(0, 256, (per_batch, 3, 32, 32), dtype=np.uint8)
        y = rng.integers(0, 10, per_batch, dtype=np.uint8)
        (directory / f"data_batch_{i}.bin").write_bytes(cifar_bytes(x, y))
        train_x.append(x)
        train_y.append(y)
    test_x = rng.integers(0, 256, (n_test, 3, 32, 32), dtype=np.uint8)
    test_y = rng.integers(0, 10, n_test, dtype=np.uint8)
    (directory / "test_batch.bin").write_bytes(cifar_bytes(test_x, test_y))
    return {
        "train_x": np.concatenate(train_x),
        "train_y": np.concatenate(train_y),
        "test_x": test_x,
        "test_y": test_y,
    }


def names_file(path: Path) -> str:
    """Regex matching a message that contains ``path``."""
    return re.escape(str(path))


def row_keys(x: torch.Tensor) -> set[bytes]:
    """Hashable identity of each sample (for set comparisons between splits)."""
    return {row.numpy().tobytes() for row in x.reshape(x.shape[0], -1)}


# ------------------------------------------------------------------------------------------
# digits
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits() -> DatasetSplits:
    return load_dataset("digits")


def test_digits_shapes_and_classes(digits: DatasetSplits) -> None:
    assert digits.name == "digits"
    assert digits.num_classes == 10
    assert digits.input_shape == (1, 8, 8)
    assert sum(digits.sizes.values()) == 1797
    assert digits.sizes["test"] == 360  # 20 % carved test set
    assert digits.sizes["val"] == round(0.1 * (1797 - 360))
    for part in ("train", "val", "test"):
        x, y = getattr(digits, f"{part}_x"), getattr(digits, f"{part}_y")
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        assert tuple(x.shape[1:]) == (1, 8, 8)
        assert int(y.min()) >= 0 and int(y.max()) <= 9
    # stratified test set: every class present in roughly equal numbers
    assert torch.bincount(digits.test_y, minlength=10).min() >= 30
    # standardised with training statistics
    assert abs(float(digits.train_x.mean())) < 1e-4
    assert abs(float(digits.train_x.std()) - 1.0) < 1e-2


def test_digits_splits_are_disjoint(digits: DatasetSplits) -> None:
    train, val, test = row_keys(digits.train_x), row_keys(digits.val_x), row_keys(digits.test_x)
    # the 1797 digits images are pairwise distinct, so pixel identity is sample identity
    assert not (train & val) and not (train & test) and not (val & test)
    assert len(train | val | test) == 1797


def test_digits_split_determinism(digits: DatasetSplits) -> None:
    same = load_dataset("digits", split_seed=0)
    other = load_dataset("digits", split_seed=1)
    for field in ("train_x", "train_y", "val_x", "val_y", "test_x", "test_y"):
        assert torch.equal(getattr(digits, field), getattr(same, field))
    assert row_keys(digits.val_x) != row_keys(other.val_x)
    # the test set does not depend on split_seed (only its standardisation stats do)
    assert torch.equal(digits.test_y, other.test_y)
    raw_test = load_dataset("digits", split_seed=1, val_fraction=0.3).test_y
    assert torch.equal(digits.test_y, raw_test)


def test_splits_to_and_repr(digits: DatasetSplits) -> None:
    moved = digits.to("cpu")
    assert isinstance(moved, DatasetSplits)
    assert moved.device == torch.device("cpu")
    assert moved.sizes == digits.sizes
    assert "digits" in repr(digits) and "\n" not in repr(digits)


@pytest.mark.parametrize("bad", [0.0, 1.0, -0.1, 1.5])
def test_bad_val_fraction(bad: float) -> None:
    with pytest.raises(ValueError, match="val_fraction"):
        load_dataset("digits", val_fraction=bad)


def test_unknown_dataset_lists_known_names() -> None:
    with pytest.raises(DataError, match="known datasets") as info:
        load_dataset("imagenet")
    for name in DATASETS:
        assert name in str(info.value)


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist", "cifar10"])
def test_data_dir_required(name: str) -> None:
    with pytest.raises(DataError, match="data_dir"):
        load_dataset(name)


# ------------------------------------------------------------------------------------------
# IDX (mnist / fashion_mnist)
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [True, False])
@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
def test_idx_round_trip(tmp_path: Path, gz: bool, name: str) -> None:
    arrays = make_idx_dir(tmp_path, gz=gz)
    splits = load_dataset(name, tmp_path, val_fraction=0.2, split_seed=3)
    assert splits.input_shape == (1, 5, 4)
    assert splits.num_classes == 10
    assert splits.sizes == {"train": 40, "val": 10, "test": 20}
    assert torch.equal(splits.test_y, torch.from_numpy(arrays["test_labels"].astype(np.int64)))

    # undo standardisation: train + val are exactly the official training set, disjoint
    assert abs(float(splits.train_x.mean())) < 1e-5  # standardised with training statistics
    all_train = np.concatenate([splits.train_y.numpy(), splits.val_y.numpy()])
    assert sorted(all_train.tolist()) == sorted(arrays["train_labels"].astype(int).tolist())

    # raw pixels recovered via the affine map fitted on train: check exact ordering of test set
    raw = arrays["test_images"].astype(np.float64) / 255.0
    got = splits.test_x.numpy()[:, 0].astype(np.float64)
    slope, intercept = np.polyfit(raw.ravel(), got.ravel(), 1)
    np.testing.assert_allclose(got, slope * raw + intercept, atol=1e-4)


def test_idx_prefers_existing_variant_and_is_deterministic(tmp_path: Path) -> None:
    make_idx_dir(tmp_path, gz=True)
    a = load_dataset("mnist", tmp_path, split_seed=5)
    b = load_dataset("mnist", tmp_path, split_seed=5)
    c = load_dataset("mnist", tmp_path, split_seed=6)
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.val_x, b.val_x)
    assert row_keys(a.val_x) != row_keys(c.val_x)


def test_read_idx_generic(tmp_path: Path) -> None:
    array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    raw = write_file(tmp_path / "x.idx", idx_bytes(array))
    packed = write_file(tmp_path / "x.idx.gz", idx_bytes(array))
    np.testing.assert_array_equal(read_idx(raw), array)
    np.testing.assert_array_equal(read_idx(packed, expected_magic=0x0803), array)
    # other IDX element types (big-endian int32) parse too
    ints = np.array([[1, -2], [70000, 3]], dtype=">i4")
    header = np.array([0x0C02, 2, 2], dtype=">u4").tobytes()
    path = write_file(tmp_path / "ints.idx", header + ints.tobytes())
    np.testing.assert_array_equal(read_idx(path), ints.astype(np.int32))


def test_missing_dir(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(DataError, match=names_file(missing)):
        load_dataset("mnist", missing)
    not_dir = write_file(tmp_path / "file", b"x")
    with pytest.raises(DataError, match=names_file(not_dir)):
        load_dataset("fashion_mnist", not_dir)


def test_missing_file(tmp_path: Path) -> None:
    make_idx_dir(tmp_path, gz=True)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte\.gz, t10k-labels-idx1-ubyte") as info:
        load_dataset("mnist", tmp_path)
    assert str(tmp_path) in str(info.value)


@pytest.mark.parametrize("gz", [True, False])
def test_truncated_file(tmp_path: Path, gz: bool) -> None:
    make_idx_dir(tmp_path, gz=gz)
    path = tmp_path / ("train-images-idx3-ubyte" + (".gz" if gz else ""))
    payload = gzip.decompress(path.read_bytes()) if gz else path.read_bytes()
    write_file(path, payload[:-7])
    with pytest.raises(DataError, match=names_file(path) + r".*truncated.*1000.*993"):
        load_dataset("mnist", tmp_path)


def test_trailing_bytes(tmp_path: Path) -> None:
    make_idx_dir(tmp_path, gz=False)
    path = tmp_path / "t10k-labels-idx1-ubyte"
    path.write_bytes(path.read_bytes() + b"junk")
    with pytest.raises(DataError, match=names_file(path) + ".*trailing"):
        load_dataset("mnist", tmp_path)


def test_wrong_magic(tmp_path: Path) -> None:
    make_idx_dir(tmp_path, gz=True)
    path = tmp_path / "train-labels-idx1-ubyte.gz"
    write_file(path, idx_bytes(np.zeros(50, dtype=np.uint8), magic=2051))
    with pytest.raises(DataError, match=names_file(path) + ".*magic.*2051.*expected 2049"):
        load_dataset("mnist", tmp_path)


def test_count_mismatch(tmp_path: Path) -> None:
    make_idx_dir(tmp_path, gz=False)
    labels = tmp_path / "train-labels-idx1-ubyte"
    write_file(labels, idx_bytes(np.zeros(49, dtype=np.uint8)))
    images = tmp_path / "train-images-idx3-ubyte"
    with pytest.raises(DataError, match=names_file(images) + ".*50.*" + names_file(labels) + ".*49"):
        load_dataset("mnist", tmp_path)


@pytest.mark.parametrize("damage", ["not_gzip", "cut_stream", "bad_crc"])
def test_corrupt_gzip(tmp_path: Path, damage: str) -> None:
    make_idx_dir(tmp_path, gz=True)
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    data = bytearray(path.read_bytes())
    if damage == "not_gzip":
        data = bytearray(b"definitely not gzip data")
    elif damage == "cut_stream":
        data = data[: len(data) // 2]
    else:
        data[-8] ^= 0xFF  # CRC32 of the trailer
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match=names_file(path) + ".*gzip") as info:
        load_dataset("mnist", tmp_path)
    assert "\n" not in str(info.value)


def test_labels_out_of_range(tmp_path: Path) -> None:
    make_idx_dir(tmp_path, gz=False)
    path = tmp_path / "t10k-labels-idx1-ubyte"
    write_file(path, idx_bytes(np.full(20, 12, dtype=np.uint8)))
    with pytest.raises(DataError, match=names_file(path) + ".*labels"):
        load_dataset("mnist", tmp_path)


# ------------------------------------------------------------------------------------------
# CIFAR-10 binary
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("subdir", [False, True])
def test_cifar_binary_loads(tmp_path: Path, subdir: bool) -> None:
    arrays = make_cifar_dir(tmp_path / "cifar-10-batches-bin" if subdir else tmp_path)
    splits = load_dataset("cifar10", tmp_path, val_fraction=0.25)
    assert splits.input_shape == (3, 32, 32)
    assert splits.sizes == {"train": 15, "val": 5, "test": 6}
    assert splits.test_x.shape == (6, 3, 32, 32) and splits.test_x.dtype == torch.float32
    assert torch.equal(splits.test_y, torch.from_numpy(arrays["test_y"].astype(np.int64)))
    all_train = np.concatenate([splits.train_y.numpy(), splits.val_y.numpy()])
    assert sorted(all_train.tolist()) == sorted(arrays["train_y"].astype(int).tolist())
    # channel-major layout: per-channel standardisation of test equals affine map of raw channel
    for c in range(3):
        raw = arrays["test_x"][:, c].astype(np.float64).ravel()
        got = splits.test_x[:, c].numpy().astype(np.float64).ravel()
        slope, intercept = np.polyfit(raw, got, 1)
        np.testing.assert_allclose(got, slope * raw + intercept, atol=1e-4)


def test_cifar_wrong_size(tmp_path: Path) -> None:
    make_cifar_dir(tmp_path)
    path = tmp_path / "data_batch_3.bin"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(DataError, match=names_file(path) + ".*3073"):
        load_dataset("cifar10", tmp_path)


def test_cifar_missing_batch(tmp_path: Path) -> None:
    make_cifar_dir(tmp_path)
    (tmp_path / "test_batch.bin").unlink()
    with pytest.raises(DataError, match="test_batch.bin") as info:
        load_dataset("cifar10", tmp_path)
    assert str(tmp_path) in str(info.value)


# ------------------------------------------------------------------------------------------
# batching and augmentation
# ------------------------------------------------------------------------------------------


def test_iterate_batches_covers_each_sample_once() -> None:
    x = torch.arange(23, dtype=torch.float32).view(23, 1, 1, 1)
    y = torch.arange(23)
    batches = list(iterate_batches(x, y, 5, generator=torch.Generator().manual_seed(0)))
    assert [len(yb) for _, yb in batches] == [5, 5, 5, 5, 3]  # partial last batch included
    seen = torch.cat([yb for _, yb in batches])
    assert sorted(seen.tolist()) == list(range(23))
    assert seen.tolist() != list(range(23))  # shuffled
    for xb, yb in batches:  # x and y stay aligned
        assert torch.equal(xb.view(-1).long(), yb)


def test_iterate_batches_deterministic_and_unshuffled() -> None:
    x, y = torch.randn(17, 2), torch.arange(17)

    def order(seed: int) -> list[int]:
        gen = torch.Generator().manual_seed(seed)
        return torch.cat([yb for _, yb in iterate_batches(x, y, 4, generator=gen)]).tolist()

    assert order(1) == order(1)
    assert order(1) != order(2)
    plain = torch.cat([yb for _, yb in iterate_batches(x, y, 4, shuffle=False)])
    assert plain.tolist() == list(range(17))


def test_iterate_batches_applies_augment() -> None:
    x, y = torch.zeros(10, 1, 2, 2), torch.arange(10)
    calls = []

    def augment(xb: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
        calls.append(gen)
        return xb + 1

    gen = torch.Generator().manual_seed(0)
    out = list(iterate_batches(x, y, 4, generator=gen, augment=augment))
    assert len(calls) == 3 and all(g is gen for g in calls)
    assert all(bool((xb == 1).all()) for xb, _ in out)


def test_random_crop_flip_shape_and_determinism() -> None:
    x = torch.randn(8, 3, 32, 32)
    a = random_crop_flip(x, torch.Generator().manual_seed(0))
    b = random_crop_flip(x, torch.Generator().manual_seed(0))
    c = random_crop_flip(x, torch.Generator().manual_seed(1))
    assert a.shape == x.shape and a.dtype == x.dtype
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_random_crop_flip_without_padding_only_flips() -> None:
    x = torch.randn(64, 2, 5, 7)
    out = random_crop_flip(x, torch.Generator().manual_seed(0), padding=0)
    same = (out == x).flatten(1).all(1)
    mirrored = (out == x.flip(-1)).flatten(1).all(1)
    assert bool((same | mirrored).all())
    assert 0 < int(mirrored.sum()) < 64  # both outcomes occur


def test_random_crop_flip_crops_a_shifted_window() -> None:
    x = torch.arange(2 * 6 * 6, dtype=torch.float32).view(2, 1, 6, 6) + 1  # no zeros inside
    out = random_crop_flip(x, torch.Generator().manual_seed(3), padding=2)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(2):  # the output is some window of the padded image, possibly mirrored
        windows = padded[i, 0].unfold(0, 6, 1).unfold(1, 6, 1).reshape(-1, 6, 6)
        match = (windows == out[i, 0]).flatten(1).all(1) | (windows.flip(-1) == out[i, 0]).flatten(1).all(1)
        assert bool(match.any())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_data_with_cpu_generator(digits: DatasetSplits) -> None:
    gpu = digits.to("cuda")
    gen = torch.Generator().manual_seed(0)
    batches = list(iterate_batches(gpu.train_x, gpu.train_y, 128, generator=gen, augment=random_crop_flip))
    assert all(xb.is_cuda and yb.is_cuda for xb, yb in batches)
    assert sum(len(yb) for _, yb in batches) == digits.sizes["train"]
    on_gpu = load_dataset("digits", device="cuda")
    assert torch.equal(on_gpu.train_y.cpu(), digits.train_y)
    torch.testing.assert_close(on_gpu.train_x.cpu(), digits.train_x)


def test_random_shift_moves_without_mirroring() -> None:
    x = torch.arange(16 * 7 * 7, dtype=torch.float32).view(16, 1, 7, 7) + 1  # asymmetric, no zeros inside
    out = random_shift(x, torch.Generator().manual_seed(0))
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    moved = 0
    for i in range(16):  # each output is one window of the padded image, never a mirrored one
        windows = padded[i, 0].unfold(0, 7, 1).unfold(1, 7, 1).reshape(-1, 7, 7)
        assert bool((windows == out[i, 0]).flatten(1).all(1).any())
        moved += not torch.equal(out[i], x[i])
    assert moved > 8  # 24 of the 25 offsets move the image
