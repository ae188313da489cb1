"""Datasets: digits, MNIST / Fashion-MNIST IDX, CIFAR-10 batches, text corpora, root resolution."""

from __future__ import annotations

import gzip
import json
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from trustworthy_dl.config import DataConfig
from trustworthy_dl.data import DATASETS, load_dataset
from trustworthy_dl.data.cifar10 import CIFAR10_MEAN, CIFAR10_STD, safe_load_pickle
from trustworthy_dl.data.idx import read_idx
from trustworthy_dl.data.paths import ENV_VAR
from trustworthy_dl.data.text import default_corpus, make_blocks
from trustworthy_dl.data.tokenizer import ByteTokenizer, get_tokenizer
from trustworthy_dl.errors import DataError

SHARED_DATA = Path(__file__).parents[2] / "shared" / "data"


def _needs(folder: str) -> Path:
    path = SHARED_DATA / folder
    if not path.is_dir():
        pytest.skip(f"real data {path} is absent (the shared data folder is not checked out beside the repo)")
    return path


@pytest.fixture(autouse=True)
def _no_data_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_VAR, raising=False)


# --------------------------------------------------------------------------- registry


def test_every_dataset_is_registered() -> None:
    assert {"digits", "mnist", "fashion-mnist", "cifar10", "text", "tinyshakespeare"} <= set(DATASETS.names())
    assert DATASETS.canonical("fashion_mnist") == "fashion-mnist"
    assert DataConfig(name="fashion_mnist").name == "fashion-mnist"


# --------------------------------------------------------------------------- digits


def test_digits_shapes_and_normalisation() -> None:
    b = load_dataset(DataConfig(name="digits"))
    assert b.kind == "image" and b.num_classes == 10 and b.input_shape == (1, 8, 8)
    assert b.x_train.shape == (1438, 1, 8, 8) and b.x_test.shape == (359, 1, 8, 8)
    assert b.x_train.dtype == torch.float32 and b.y_train.dtype == torch.int64
    assert abs(float(b.x_train.mean())) < 1e-4 and abs(float(b.x_train.std()) - 1) < 1e-3
    assert set(b.y_train.tolist()) == set(range(10)) == set(b.y_test.tolist())
    # Stratified: every class is ~20% test.
    for c in range(10):
        frac = (b.y_test == c).sum() / ((b.y_test == c).sum() + (b.y_train == c).sum())
        assert 0.17 < float(frac) < 0.23


def test_digits_split_is_fixed() -> None:
    a, b = load_dataset(DataConfig(name="digits")), load_dataset(DataConfig(name="digits"))
    assert torch.equal(a.x_test, b.x_test) and torch.equal(a.y_train, b.y_train)


def test_max_samples_cut_the_bundle() -> None:
    b = load_dataset(DataConfig(name="digits", max_train_samples=100, max_test_samples=7))
    assert b.x_train.shape[0] == b.y_train.shape[0] == 100 and b.x_test.shape[0] == 7


# --------------------------------------------------------------------------- IDX


def _idx_bytes(arr: np.ndarray) -> bytes:
    codes = {
        np.uint8: 0x08,
        np.int8: 0x09,
        np.int16: 0x0B,
        np.int32: 0x0C,
        np.float32: 0x0D,
        np.float64: 0x0E,
    }
    code = codes[arr.dtype.type]
    header = struct.pack(">BBBB", 0, 0, code, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return header + arr.astype(arr.dtype.newbyteorder(">")).tobytes()


def _write_mnist(folder: Path, n_train: int = 30, n_test: int = 10, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        (folder / f"{prefix}-images-idx3-ubyte.gz").write_bytes(gzip.compress(_idx_bytes(images)))
        (folder / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(_idx_bytes(labels)))
    return folder


@settings(max_examples=30, deadline=None)
@given(
    shape=st.lists(st.integers(0, 5), min_size=1, max_size=3),
    dtype=st.sampled_from([np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64]),
    compress=st.booleans(),
)
def test_read_idx_round_trip(
    tmp_path_factory: pytest.TempPathFactory, shape: list[int], dtype: type, compress: bool
) -> None:
    arr = (np.arange(int(np.prod(shape))) % 100).astype(dtype).reshape(shape)
    data = _idx_bytes(arr)
    path = tmp_path_factory.mktemp("idx") / "a.idx"
    path.write_bytes(gzip.compress(data) if compress else data)
    out = read_idx(path)
    assert out.shape == arr.shape and np.array_equal(out, arr)


def test_synthetic_mnist_loads_and_normalises(tmp_path: Path) -> None:
    _write_mnist(tmp_path / "mnist")
    b = load_dataset(DataConfig(name="mnist", root=str(tmp_path)))
    assert b.x_train.shape == (30, 1, 28, 28) and b.x_test.shape == (10, 1, 28, 28)
    assert b.x_train.dtype == torch.float32 and b.y_train.dtype == torch.int64
    raw = read_idx(tmp_path / "mnist" / "train-images-idx3-ubyte.gz")
    expected = (torch.from_numpy(raw.astype(np.float32)) / 255 - 0.1307) / 0.3081
    torch.testing.assert_close(b.x_train[:, 0], expected)
    # root may also point straight at the folder holding the files
    c = load_dataset(DataConfig(name="mnist", root=str(tmp_path / "mnist")))
    assert torch.equal(b.x_train, c.x_train)


def test_uncompressed_idx_files_are_accepted(tmp_path: Path) -> None:
    folder = _write_mnist(tmp_path / "fashion-mnist")
    for gz in folder.glob("*.gz"):
        gz.with_suffix("").write_bytes(gzip.decompress(gz.read_bytes()))
        gz.unlink()
    b = load_dataset(DataConfig(name="fashion-mnist", root=str(tmp_path)))
    assert b.x_train.shape == (30, 1, 28, 28)


@pytest.mark.parametrize(
    ("corrupt", "match"),
    [
        (lambda raw: raw[: len(raw) // 2], "truncated gzip"),  # gzip stream cut short
        (lambda raw: raw[:10] + b"\x00" * (len(raw) - 10), "corrupt or truncated"),
        (lambda raw: gzip.compress(gzip.decompress(raw)[:-100]), "size mismatch"),  # IDX payload short
        (lambda raw: gzip.compress(b"\x12\x34" + gzip.decompress(raw)[2:]), "not an IDX file"),
    ],
)
def test_corrupt_idx_is_a_data_error(tmp_path: Path, corrupt, match: str) -> None:  # type: ignore[no-untyped-def]
    folder = _write_mnist(tmp_path / "mnist")
    path = folder / "train-images-idx3-ubyte.gz"
    path.write_bytes(corrupt(path.read_bytes()))
    with pytest.raises(DataError, match=match) as err:
        load_dataset(DataConfig(name="mnist", root=str(tmp_path)))
    assert str(path) in str(err.value)


def test_labels_out_of_range_and_count_mismatch(tmp_path: Path) -> None:
    folder = _write_mnist(tmp_path / "mnist")
    lbl = folder / "t10k-labels-idx1-ubyte.gz"
    lbl.write_bytes(gzip.compress(_idx_bytes(np.full(10, 11, np.uint8))))
    with pytest.raises(DataError, match=r"labels must be 0\.\.9"):
        load_dataset(DataConfig(name="mnist", root=str(tmp_path)))
    lbl.write_bytes(gzip.compress(_idx_bytes(np.zeros(9, np.uint8))))
    with pytest.raises(DataError, match="10 images but 9 labels"):
        load_dataset(DataConfig(name="mnist", root=str(tmp_path)))


def test_missing_root_names_every_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "env"))
    with pytest.raises(DataError) as err:
        load_dataset(DataConfig(name="mnist"))
    msg = str(err.value)
    shared = tmp_path.parent / "shared" / "data"
    for d in (
        tmp_path / "env" / "mnist",
        tmp_path / "env",
        tmp_path / "data" / "mnist",
        shared / "mnist",
        shared,
    ):
        assert f"{d.resolve()} (no such directory)" in msg
    assert "train-images-idx3-ubyte.gz" in msg and "yann.lecun.com" in msg and ENV_VAR in msg
    # With data.root set, only it is searched.
    with pytest.raises(DataError, match="only it was searched") as err:
        load_dataset(DataConfig(name="fashion-mnist", root=str(tmp_path / "nowhere")))
    assert str(tmp_path / "env") not in str(err.value) and "zalandoresearch" in str(err.value)


def test_partial_folder_reports_missing_files(tmp_path: Path) -> None:
    folder = _write_mnist(tmp_path / "mnist")
    (folder / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match=r"missing t10k-labels-idx1-ubyte\.gz"):
        load_dataset(DataConfig(name="mnist", root=str(tmp_path)))


def test_default_root_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write_mnist(tmp_path / "env" / "mnist", n_train=20)
    _write_mnist(tmp_path / "work" / "data" / "mnist", n_train=40)
    _write_mnist(tmp_path / "shared" / "data" / "mnist", n_train=50)
    monkeypatch.chdir(tmp_path / "work")
    assert len(load_dataset(DataConfig(name="mnist")).x_train) == 40  # ./data before ../shared/data
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "env"))
    assert len(load_dataset(DataConfig(name="mnist")).x_train) == 20  # $TDL_DATA_ROOT first
    monkeypatch.delenv(ENV_VAR)
    monkeypatch.chdir(tmp_path / "shared")  # ./data is now shared/data
    assert len(load_dataset(DataConfig(name="mnist")).x_train) == 50


@pytest.mark.parametrize(
    ("name", "counts"),
    [
        ("mnist", [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]),
        ("fashion-mnist", [6000] * 10),
    ],
)
def test_real_idx_datasets(name: str, counts: list[int]) -> None:
    _needs(name)
    b = load_dataset(DataConfig(name=name, root=str(SHARED_DATA)))
    assert b.x_train.shape == (60000, 1, 28, 28) and b.x_test.shape == (10000, 1, 28, 28)
    assert b.y_train.shape == (60000,) and b.y_test.shape == (10000,)
    assert b.x_train.dtype == torch.float32 and b.y_train.dtype == torch.int64
    assert torch.bincount(b.y_train, minlength=10).tolist() == counts
    assert int(b.y_test.min()) == 0 and int(b.y_test.max()) == 9
    # Standard mean/std: the training set is close to zero mean, unit variance.
    assert abs(float(b.x_train.mean())) < 0.01 and abs(float(b.x_train.std()) - 1) < 0.01


# --------------------------------------------------------------------------- CIFAR-10


def _write_cifar(folder: Path, n: int = 4, protocol: int = 2, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for i, name in enumerate(names):
        batch = {
            b"batch_label": f"batch {i}".encode(),
            b"labels": [int(v) for v in rng.integers(0, 10, n)],
            b"data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
            b"filenames": [f"img{j}.png".encode() for j in range(n)],
        }
        (folder / name).write_bytes(pickle.dumps(batch, protocol=protocol))
    meta = {b"label_names": [c.encode() for c in ("airplane", "automobile", "bird", "cat", "deer")]}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=protocol))
    return folder


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_cifar10_tiny_batches(tmp_path: Path, protocol: int) -> None:
    folder = _write_cifar(tmp_path / "cifar-10-batches-py", protocol=protocol)
    b = load_dataset(DataConfig(name="cifar10", root=str(tmp_path)))
    assert b.x_train.shape == (20, 3, 32, 32) and b.x_test.shape == (4, 3, 32, 32)
    assert b.x_train.dtype == torch.float32 and b.y_train.dtype == torch.int64
    assert b.input_shape == (3, 32, 32) and b.num_classes == 10
    assert b.meta["classes"][:2] == ["airplane", "automobile"]
    with (folder / "test_batch").open("rb") as f:
        raw = pickle.load(f)
    pixels = torch.from_numpy(raw[b"data"].astype(np.float32)).view(-1, 3, 32, 32) / 255
    mean, std = torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1), torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)
    torch.testing.assert_close(b.x_test, (pixels - mean) / std)
    assert b.y_test.tolist() == raw[b"labels"]


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused(tmp_path: Path) -> None:
    folder = _write_cifar(tmp_path / "cifar-10-batches-py")
    marker = tmp_path / "pwned"
    batch = {b"data": np.zeros((1, 3072), np.uint8), b"labels": [0], b"x": _Evil(marker)}
    (folder / "data_batch_3").write_bytes(pickle.dumps(batch, protocol=2))
    with pytest.raises(DataError, match=r"refusing to load global (posix|os|nt)\.system"):
        load_dataset(DataConfig(name="cifar10", root=str(tmp_path)))
    assert not marker.exists()


@pytest.mark.parametrize(
    "payload",
    [
        np.array([1, "a"], dtype=object),  # object arrays would hold arbitrary pickled objects
        {b"f": print},
        {b"f": getattr},
    ],
)
def test_restricted_unpickler_allows_only_plain_data(tmp_path: Path, payload: object) -> None:
    path = tmp_path / "p.pkl"
    path.write_bytes(pickle.dumps(payload, protocol=2))
    with pytest.raises(DataError, match="refusing"):
        safe_load_pickle(path)


def test_cifar10_bad_batch_shape_and_missing(tmp_path: Path) -> None:
    folder = _write_cifar(tmp_path / "cifar-10-batches-py")
    (folder / "test_batch").write_bytes(
        pickle.dumps({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]})
    )
    with pytest.raises(DataError, match=r"shape \(n, 3072\)"):
        load_dataset(DataConfig(name="cifar10", root=str(tmp_path)))
    with pytest.raises(DataError, match=r"cifar-10-python\.tar\.gz") as err:
        load_dataset(DataConfig(name="cifar10", root=str(tmp_path / "none")))
    assert str((tmp_path / "none" / "cifar-10-batches-py").resolve()) in str(err.value)


# --------------------------------------------------------------------------- text


def test_text_default_corpus() -> None:
    b = load_dataset(DataConfig(name="text", block_size=32))
    assert b.kind == "text" and b.num_classes == b.vocab_size == 256 and b.input_shape == (32,)
    assert b.x_train.dtype == b.y_train.dtype == torch.int64 and b.x_train.shape[1] == 32
    assert b.labels is None
    n = len(b.x_train) + len(b.x_test)
    assert n == len(default_corpus().encode()) // 33
    assert len(b.x_test) == round(0.1 * n)
    assert torch.equal(b.x_train[:, 1:], b.y_train[:, :-1])
    first = ByteTokenizer().decode(torch.cat([b.x_train[0], b.y_train[0, -1:]]))
    assert default_corpus().startswith(first)


def test_text_folder_reads_sorted_txt_files(tmp_path: Path) -> None:
    (tmp_path / "b.txt").write_text("B" * 50)
    (tmp_path / "a.txt").write_text("A" * 50)
    (tmp_path / "skip.md").write_text("M" * 50)
    b = load_dataset(DataConfig(name="text", root=str(tmp_path), block_size=9))
    stream = torch.cat([torch.cat([x, y[-1:]]) for x, y in zip(b.x_train, b.y_train)])
    assert ByteTokenizer().decode(stream) == ("A" * 50 + "\n" + "B" * 50)[: len(stream)]
    assert len(b.x_train) + len(b.x_test) == 101 // 10


def test_text_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        load_dataset(DataConfig(name="text", root=str(tmp_path / "nope")))
    with pytest.raises(DataError, match=r"no \*\.txt files"):
        load_dataset(DataConfig(name="text", root=str(tmp_path)))
    (tmp_path / "short.txt").write_text("tiny")
    with pytest.raises(DataError, match="at least 2"):
        load_dataset(DataConfig(name="text", root=str(tmp_path), block_size=8))


@settings(max_examples=50, deadline=None)
@given(n_tokens=st.integers(0, 300), block_size=st.integers(2, 40))
def test_make_blocks_property(n_tokens: int, block_size: int) -> None:
    tokens = torch.arange(n_tokens)
    x, y = make_blocks(tokens, block_size)
    n = n_tokens // (block_size + 1)
    assert x.shape == y.shape == (n, block_size)
    if n:
        blocks = torch.cat([x, y[:, -1:]], dim=1).reshape(-1)
        assert torch.equal(blocks, tokens[: n * (block_size + 1)])  # non-overlapping, in order


def test_tinyshakespeare() -> None:
    _needs("tinyshakespeare")
    b = load_dataset(DataConfig(name="tinyshakespeare", root=str(SHARED_DATA), block_size=64))
    assert b.meta["num_tokens"] == 1115394
    assert len(b.x_train) + len(b.x_test) == 1115394 // 65
    assert ByteTokenizer().decode(b.x_train[0]).startswith("First Citizen:")
    c = load_dataset(DataConfig(name="tinyshakespeare", root=str(SHARED_DATA / "tinyshakespeare")))
    assert torch.equal(b.x_test, c.x_test)


def _bytes_to_unicode() -> dict[int, str]:
    # GPT-2's reversible byte -> printable character map (Radford et al. 2019).
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    cs = bs[:]
    extra = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + extra)
            extra += 1
    return dict(zip(bs, map(chr, cs)))


def _write_tiny_gpt2(folder: Path) -> Path:
    folder.mkdir()
    b2u = _bytes_to_unicode()
    vocab = {b2u[b]: b for b in range(256)}
    for tok in ("Ġt", "he", "Ġthe", "<|endoftext|>"):
        vocab[tok] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\nĠ t\nh e\nĠt he\n")
    return folder


def test_gpt2_tokenizer_from_local_files(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    tok_dir = _write_tiny_gpt2(tmp_path / "tok")
    tok = get_tokenizer("gpt2", tok_dir)
    ids = tok.encode("so the end, the start")
    assert 258 in ids.tolist() and tok.decode(ids) == "so the end, the start"
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "c.txt").write_text("the cat and the hat " * 20)
    b = load_dataset(
        DataConfig(
            name="text",
            root=str(tmp_path / "corpus"),
            tokenizer="gpt2",
            tokenizer_path=str(tok_dir),
            block_size=8,
        )
    )
    assert b.vocab_size == b.num_classes == 260 and b.meta["tokenizer"] == "gpt2"
    assert int(b.x_train.max()) < 260


def test_gpt2_tokenizer_missing_files_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="tokenizer_path is not set"):
        load_dataset(DataConfig(name="text", tokenizer="gpt2"))
    with pytest.raises(DataError, match=r"no vocab\.json \+ merges\.txt"):
        load_dataset(DataConfig(name="text", tokenizer="gpt2", tokenizer_path=str(tmp_path)))
