"""Tests for normlab.training.data / normlab.training.datafiles: splits, standardization, the built-in sets
(against scikit-learn and mnist1d themselves), the caches, and the IDX/CSV parsers with
every malformed case. Each test uses a temporary NORMLAB_CACHE."""
from __future__ import annotations

import gzip
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from normlab.training import config, data
from normlab.training.data import BUILTIN, Dataset, DatasetError, load_dataset, split_indices

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("normlab-cache")


@pytest.fixture(autouse=True)
def _tmp_cache(cache, monkeypatch):
    monkeypatch.setenv("NORMLAB_CACHE", str(cache))


def pool_of(ds: Dataset, seed: int, val_fraction: float = 0.2):
    """The unsplit pool recovered from a raw (standardize=False) dataset and its split."""
    n = len(ds.y_train) + len(ds.y_val)
    tr, va = split_indices(n, val_fraction, seed)
    x = torch.empty(n, ds.num_features)
    y = torch.empty(n, dtype=torch.int64)
    x[tr], x[va], y[tr], y[va] = ds.x_train, ds.x_val, ds.y_train, ds.y_val
    return x, y


# ------------------------------------------------------------------------ split / scaling


def test_builtin_names_match_config():
    assert BUILTIN == config.BUILTIN_DATASETS


@settings(max_examples=50, deadline=None)
@given(n=st.integers(2, 500), vf=st.floats(0.01, 0.99), seed=st.integers(0, 2**32 - 1))
def test_split_is_a_partition(n, vf, seed):
    tr, va = split_indices(n, vf, seed)
    assert sorted(np.concatenate([tr, va]).tolist()) == list(range(n))  # disjoint, covering
    assert len(va) == max(1, min(n - 1, round(n * vf)))
    again_tr, again_va = split_indices(n, vf, seed)
    assert np.array_equal(tr, again_tr) and np.array_equal(va, again_va)


def test_split_deterministic_by_seed_and_differs_across_seeds():
    a, b, c = (load_dataset("digits", seed=s, standardize=False) for s in (0, 0, 1))
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_val, b.y_val)
    assert not torch.equal(a.x_train, c.x_train)
    xa, ya = pool_of(a, 0)
    xc, yc = pool_of(c, 1)
    assert torch.equal(xa, xc) and torch.equal(ya, yc)  # same pool, different split


def test_bad_val_fraction():
    with pytest.raises(ValueError, match=r"val_fraction must be between 0 and 1 \(got 1.5\)"):
        load_dataset("moons", val_fraction=1.5)


def test_standardization_uses_training_stats_only():
    raw = load_dataset("digits", seed=3, standardize=False)
    ds = load_dataset("digits", seed=3)
    assert raw.mean is None and raw.std is None
    x64 = raw.x_train.double()
    mean, std = x64.mean(0), x64.std(0, unbiased=False)
    constant = std < 1e-8
    assert constant.sum() == 3  # digits pixels 0, 32, 39 are always 0
    torch.testing.assert_close(ds.mean, mean.float())
    torch.testing.assert_close(ds.std, torch.where(constant, 1.0, std).float())
    assert not torch.allclose(ds.mean, raw.x_val.mean(0), atol=1e-3)  # not the val stats
    torch.testing.assert_close(ds.x_train.mean(0), torch.zeros(64), atol=1e-5, rtol=0)
    torch.testing.assert_close(ds.x_train.std(0, unbiased=False)[~constant],
                               torch.ones(int((~constant).sum())), atol=1e-4, rtol=0)
    torch.testing.assert_close(ds.x_val, (raw.x_val - ds.mean) / ds.std)
    assert torch.isfinite(ds.x_val).all()


def test_constant_training_feature_cannot_blow_up(tmp_path):
    seed = next(s for s in range(100) if 20 in split_indices(21, 0.3, s)[1])
    rows = ["a,b,label"] + [f"{i},0,{i % 2}" for i in range(20)] + ["5,7,0"]
    path = tmp_path / "const.csv"
    path.write_text("\n".join(rows))
    ds = load_dataset(f"csv:{path}", seed=seed, val_fraction=0.3)  # the b=7 row in val
    assert ds.std[1] == 1 and ds.mean[1] == 0  # b constant in training: centred, not scaled
    assert ds.x_val[:, 1].max() == 7 and (ds.x_train[:, 1] == 0).all()


# ---------------------------------------------------------------------------- built-ins


def test_digits_match_sklearn_exactly():
    from sklearn.datasets import load_digits

    ref = load_digits()
    ds = load_dataset("digits", seed=0, standardize=False)
    x, y = pool_of(ds, 0)
    assert x.shape == (1797, 64) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert torch.equal(x, torch.from_numpy(ref.data).float())
    assert torch.equal(y, torch.from_numpy(ref.target))
    assert (ds.num_classes, ds.input_shape, ds.num_features) == (10, (1, 8, 8), 64)
    assert (len(ds.y_train), len(ds.y_val)) == (1438, 359)
    img = ds.view(ds.x_train, "cnn")
    assert img.shape == (1438, 1, 8, 8)
    assert torch.equal(img[5, 0, 2], ds.x_train[5, 16:24])  # row-major 8×8
    assert ds.view(ds.x_val, "mlp").shape == (359, 64)


def test_digits_cache_is_written_and_warm_load_skips_sklearn(cache):
    load_dataset("digits")
    assert (cache / "digits-v1.npz").is_file()
    code = ("import sys; from normlab.training.data import load_dataset; d = load_dataset('digits'); "
            "print(len(d.y_train) + len(d.y_val), 'sklearn' in sys.modules)")
    env = {**os.environ, "NORMLAB_CACHE": str(cache), "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout.split()
    assert out == ["1797", "False"]


def test_corrupt_cache_is_regenerated(tmp_path, monkeypatch):
    monkeypatch.setenv("NORMLAB_CACHE", str(tmp_path))
    (tmp_path / "digits-v1.npz").write_bytes(b"not a zip")
    data._builtin_pool.cache_clear()
    with pytest.warns(UserWarning, match="unreadable cache"):
        ds = load_dataset("digits", standardize=False)
    assert len(ds.y_train) + len(ds.y_val) == 1797
    with np.load(tmp_path / "digits-v1.npz") as f:
        assert f["x"].shape == (1797, 64)


@pytest.fixture(scope="module")
def mnist1d_cold(cache):
    """MNIST-1D loaded on a cold cache (generated), with the global RNG states around it."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NORMLAB_CACHE", str(cache))
        (cache / "mnist1d-v1.npz").unlink(missing_ok=True)
        data._builtin_pool.cache_clear()
        np.random.seed(1234)
        random.seed(1234)
        before = (np.random.get_state(), random.getstate())
        ds = load_dataset("mnist1d", seed=0, standardize=False)
        after = (np.random.get_state(), random.getstate())
        data._builtin_pool.cache_clear()
        warm = load_dataset("mnist1d", seed=0, standardize=False)  # from the npz
    return ds, warm, before, after


def test_mnist1d_leaves_global_rng_untouched(mnist1d_cold):
    _, _, (np_before, py_before), (np_after, py_after) = mnist1d_cold
    assert py_before == py_after
    assert np_before[0] == np_after[0] and np.array_equal(np_before[1], np_after[1])
    assert np_before[2:] == np_after[2:]


def test_mnist1d_matches_make_dataset(mnist1d_cold):
    from mnist1d.data import get_dataset_args, make_dataset

    ds, warm, _, _ = mnist1d_cold
    assert (ds.input_shape, ds.num_features, ds.num_classes) == ((1, 40), 40, 10)
    assert (len(ds.y_train), len(ds.y_val)) == (4000, 1000)
    x, y = pool_of(ds, 0)
    ref = make_dataset(get_dataset_args())
    assert torch.equal(x, torch.from_numpy(np.concatenate([ref["x"], ref["x_test"]])).float())
    assert torch.equal(y, torch.from_numpy(np.concatenate([ref["y"], ref["y_test"]])).long())
    assert torch.bincount(y).tolist() == [500] * 10
    assert torch.equal(warm.x_train, ds.x_train) and torch.equal(warm.y_val, ds.y_val)
    assert ds.view(ds.x_val, "cnn").shape == (1000, 1, 40)


@pytest.mark.parametrize("name", ["spirals", "moons", "circles"])
def test_synthetic_sizes_classes_and_noise(name):
    ds = load_dataset(name, n_samples=301, noise=0.1, seed=2, standardize=False)
    x, y = pool_of(ds, 2)
    assert x.shape == (301, 2) and ds.input_shape == (2,) and ds.num_classes == 2
    assert torch.bincount(y).tolist() == [150, 151]
    assert (len(ds.y_train), len(ds.y_val)) == (241, 60)
    assert data.train_size(name, n_samples=301) == 241
    same = load_dataset(name, n_samples=301, noise=0.1, seed=2, standardize=False)
    assert torch.equal(same.x_train, ds.x_train)
    x_clean, y_clean = pool_of(load_dataset(name, n_samples=301, noise=0, seed=2,
                                            standardize=False), 2)
    assert torch.equal(y_clean, y) and not torch.allclose(x_clean, x)
    dev = (x - x_clean).std().item()
    assert 0.08 < dev < 0.12  # noise is the std of the added Gaussian
    with pytest.raises(ValueError, match="use model 'mlp'"):
        ds.view(ds.x_train, "cnn")


def test_noise_free_shapes_are_exact():
    x, y = pool_of(load_dataset("circles", n_samples=100, noise=0, standardize=False), 0)
    r = x.norm(dim=1)
    torch.testing.assert_close(r[y == 0], torch.ones(50))
    torch.testing.assert_close(r[y == 1], torch.full((50,), 0.5))
    x, y = pool_of(load_dataset("moons", n_samples=100, noise=0, standardize=False), 0)
    torch.testing.assert_close(x[y == 0].norm(dim=1), torch.ones(50))
    assert (x[y == 0, 1] >= -1e-6).all()
    inner = x[y == 1] - torch.tensor([1.0, 0.5])
    torch.testing.assert_close(inner.norm(dim=1), torch.ones(50))
    x, y = pool_of(load_dataset("spirals", n_samples=100, noise=0, standardize=False), 0)
    torch.testing.assert_close(x[y == 0], -x[y == 1], atol=1e-6, rtol=0)  # arms: π apart


def test_unknown_name_lists_valid_names():
    with pytest.raises(DatasetError, match="digits, mnist1d, spirals, moons, circles"):
        load_dataset("cifar")
    with pytest.raises(DatasetError, match="names no path"):
        load_dataset("csv: ")


def test_info_and_train_size_agree_with_load():
    info = data.dataset_info("digits", val_fraction=0.25)
    ds = load_dataset("digits", val_fraction=0.25)
    assert info["examples"] == 1797 and info["features"] == 64 and info["classes"] == 10
    assert info["train"] == len(ds.y_train) == data.train_size("digits", val_fraction=0.25)
    assert info["input_shape"] == (1, 8, 8) and info["cnn"] is True
    assert data.dataset_info("moons", n_samples=50)["cnn"] is False
    assert [data.supports_cnn(n) for n in BUILTIN] == [True, True, False, False, False]
    assert data.supports_cnn("idx:/x") and not data.supports_cnn("csv:/x.csv")


# --------------------------------------------------------------------------------- IDX


def idx_bytes(arr: np.ndarray, magic: int | None = None) -> bytes:
    magic = (0x0800 | arr.ndim) if magic is None else magic
    head = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in arr.shape)
    return head + arr.astype(np.uint8).tobytes()


def write_idx_folder(folder: Path, gz: bool = False, dotted: bool = False, n=(6, 3),
                     labels=None, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Four small IDX files of 4×4 images; returns the pooled (train then test) arrays."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    images = rng.integers(0, 256, size=(sum(n), 4, 4), dtype=np.uint8)
    if labels is None:
        labels = np.arange(sum(n), dtype=np.uint8) % 3
    parts = {"train-images-idx3-ubyte": images[:n[0]], "train-labels-idx1-ubyte": labels[:n[0]],
             "t10k-images-idx3-ubyte": images[n[0]:], "t10k-labels-idx1-ubyte": labels[n[0]:]}
    for stem, arr in parts.items():
        name = stem.replace("-idx", ".idx") if dotted else stem
        raw = idx_bytes(arr)
        (folder / (name + ".gz" if gz else name)).write_bytes(gzip.compress(raw) if gz else raw)
    return images, labels


@pytest.mark.parametrize("gz,dotted", [(False, False), (True, False), (True, True)])
def test_idx_parses_exactly(tmp_path, gz, dotted):
    images, labels = write_idx_folder(tmp_path / "mnist", gz=gz, dotted=dotted)
    ds = load_dataset(f"idx:{tmp_path / 'mnist'}", seed=5, standardize=False, val_fraction=0.3)
    x, y = pool_of(ds, 5, 0.3)
    assert torch.equal(x, torch.from_numpy(images.reshape(9, 16)).float() / 255)
    assert torch.equal(y, torch.from_numpy(labels).long())
    assert (ds.input_shape, ds.num_classes, ds.class_names) == ((1, 4, 4), 3, ("0", "1", "2"))
    assert torch.equal(ds.view(ds.x_train, "cnn")[0, 0], ds.x_train[0].reshape(4, 4))
    assert x.min() >= 0 and x.max() <= 1


def test_idx_labels_are_mapped_in_sorted_order(tmp_path):
    labels = np.array([7, 3, 7, 3, 9, 3, 7, 9, 3], dtype=np.uint8)
    write_idx_folder(tmp_path / "f", labels=labels)
    ds = load_dataset(f"idx:{tmp_path / 'f'}", standardize=False)
    _, y = pool_of(ds, 0)
    assert y.tolist() == [1, 0, 1, 0, 2, 0, 1, 2, 0] and ds.class_names == ("3", "7", "9")


def _break(folder: Path, stem: str, content: bytes) -> None:
    (folder / stem).write_bytes(content)


@pytest.mark.parametrize("case,file,message", [
    ("bad_magic", "train-images-idx3-ubyte",
     r"train-images-idx3-ubyte: bad magic number 0x00000802, expected 0x00000803 "
     r"\(an IDX image file\)"),
    ("swapped", "t10k-labels-idx1-ubyte", r"bad magic number 0x00000803.*swapped"),
    ("truncated", "train-images-idx3-ubyte", r"truncated payload.*96 bytes but only 95"),
    ("extra", "train-labels-idx1-ubyte", r"more bytes after the 6 the header declares"),
    ("empty", "t10k-images-idx3-ubyte", r"file is empty"),
    ("short", "t10k-images-idx3-ubyte", r"too short for an IDX header"),
    ("count", "train-labels-idx1-ubyte", r"has 6 images but train-labels-idx1-ubyte has 5"),
    ("bad_gzip", "train-images-idx3-ubyte.gz", r"broken gzip data"),
    ("missing", "train-labels-idx1-ubyte", r"has no train-labels-idx1-ubyte\[\.gz\]"),
    ("one_class", "mnist", r"only 1 class"),
    ("size", "t10k-images-idx3-ubyte", r"4×4 images but t10k-images-idx3-ubyte holds 2×8"),
])
def test_idx_malformed(tmp_path, case, file, message):
    folder = tmp_path / "mnist"
    images, labels = write_idx_folder(folder)
    train_images, train_labels = images[:6], labels[:6]
    if case == "bad_magic":
        _break(folder, file, idx_bytes(train_images, magic=0x0802))
    elif case == "swapped":
        _break(folder, file, idx_bytes(images[6:]))
    elif case == "truncated":
        _break(folder, file, idx_bytes(train_images)[:-1])
    elif case == "extra":
        _break(folder, file, idx_bytes(train_labels) + b"\0")
    elif case == "empty":
        _break(folder, file, b"")
    elif case == "short":
        _break(folder, file, b"\0\0\x08")
    elif case == "count":
        _break(folder, file, idx_bytes(train_labels[:5]))
    elif case == "bad_gzip":
        (folder / "train-images-idx3-ubyte").unlink()
        _break(folder, file, gzip.compress(idx_bytes(train_images))[:20])
    elif case == "missing":
        (folder / file).unlink()
    elif case == "one_class":
        write_idx_folder(folder, labels=np.full(9, 4, dtype=np.uint8))
    elif case == "size":
        _break(folder, file, idx_bytes(images[6:].reshape(3, 2, 8)))
    with pytest.raises(DatasetError, match=message) as err:
        load_dataset(f"idx:{folder}")
    assert file.removesuffix(".gz") in str(err.value)


def test_idx_folder_that_does_not_exist(tmp_path):
    with pytest.raises(DatasetError, match=r"folder .*nowhere does not exist"):
        load_dataset(f"idx:{tmp_path / 'nowhere'}")
    (tmp_path / "afile").write_text("x")
    with pytest.raises(DatasetError, match=r"afile is a file, not a folder"):
        load_dataset(f"idx:{tmp_path / 'afile'}")


def test_idx_cache_sees_file_changes(tmp_path):
    folder = tmp_path / "m"
    write_idx_folder(folder, seed=0)
    first = load_dataset(f"idx:{folder}", standardize=False)
    images, _ = write_idx_folder(folder, seed=1)
    os.utime(folder / "train-images-idx3-ubyte", ns=(1, 1))  # a different mtime for sure
    second = load_dataset(f"idx:{folder}", standardize=False)
    x, _ = pool_of(second, 0)
    assert torch.equal(x, torch.from_numpy(images.reshape(9, 16)).float() / 255)
    assert not torch.equal(first.x_train, second.x_train)


# --------------------------------------------------------------------------------- CSV


def test_csv_string_labels_sorted(tmp_path):
    path = tmp_path / "animals.csv"
    path.write_text("a, b, label\n1,2.5,dog\n3,4,cat\n5,6,emu\n7,8,cat\n9,10,dog\n")
    ds = load_dataset(f"csv:{path}", standardize=False, val_fraction=0.4, seed=1)
    x, y = pool_of(ds, 1, 0.4)
    assert torch.equal(x, torch.tensor([[1, 2.5], [3, 4], [5, 6], [7, 8], [9, 10]]))
    assert y.tolist() == [1, 0, 2, 0, 1] and ds.class_names == ("cat", "dog", "emu")
    assert (ds.input_shape, ds.num_classes, ds.num_features) == ((2,), 3, 2)
    with pytest.raises(ValueError, match="CNN|cnn"):
        ds.view(ds.x_train, "cnn")


def test_csv_int_labels_sorted_numerically(tmp_path):
    path = tmp_path / "n.csv"
    path.write_text("label,f\n10,0\n2,1\n10,2\n-1,3\n")
    x, y = pool_of(load_dataset(f"csv:{path}", standardize=False), 0)
    assert y.tolist() == [2, 1, 2, 0] and x[:, 0].tolist() == [0, 1, 2, 3]
    assert load_dataset(f"csv:{path}").class_names == ("-1", "2", "10")


@pytest.mark.parametrize("text,message", [
    ("a,b,c\n1,2,3\n4,5,6\n", r"labels\.csv has no 'label' column \(among its 3 columns\)"),
    ("a,b,label\n1,2,0\n3,4,1\n5,abc,0\n", r"labels\.csv: column 2 is not numeric "
                                          r"\(row 3\)"),
    ("a,b,label\n1,2,0\n3,,1\n", r"labels\.csv: column 2 has a missing value in row 2"),
    ("a,label\n1,x\n2,x\n", r"labels\.csv: only 1 class among its labels"),
    ("a,label\n1,x\n2,\n", r"labels\.csv: column 'label' is empty in row 2"),
    ("", r"labels\.csv: file is empty"),
    ("a,label\n", r"labels\.csv has a header but no rows"),
    ("label\n1\n2\n", r"labels\.csv has only a 'label' column"),
])
def test_csv_malformed(tmp_path, text, message):
    path = tmp_path / "labels.csv"
    path.write_text(text)
    with pytest.raises(DatasetError, match=message):
        load_dataset(f"csv:{path}")


def test_csv_missing_file(tmp_path):
    with pytest.raises(DatasetError, match=r"labels\.csv: file does not exist"):
        load_dataset(f"csv:{tmp_path / 'labels.csv'}")
    with pytest.raises(DatasetError, match="is a folder"):
        load_dataset(f"csv:{tmp_path}")
