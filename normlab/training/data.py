"""Datasets for NormLab runs: load by name, split by seed, standardize with training statistics.

:func:`load_dataset` is the one way to get data. Names (see :data:`BUILTIN`):

* ``digits`` — the UCI optical hand-written digits (Alpaydin & Kaynak 1998) as bundled with
  scikit-learn (``load_digits``): 1,797 8×8 images, raw pixel values 0..16, 10 classes.
* ``mnist1d`` — MNIST-1D (Greydanus 2020, "Scaling down deep learning"), generated locally
  with ``mnist1d.data.make_dataset`` and its default arguments (never downloaded): 5,000
  signals of length 40, 10 classes; its train and test parts are pooled.
* ``spirals``, ``moons``, ``circles`` — 2-D, 2-class toy sets from our own seeded
  generators (moons and circles follow scikit-learn's ``make_moons``/``make_circles``).
* ``idx:FOLDER`` — MNIST / Fashion-MNIST IDX files (see :mod:`normlab.training.datafiles`); train
  and t10k are pooled, pixels scaled to [0, 1].
* ``csv:FILE`` — a CSV with a ``label`` column and numeric feature columns.

Every set is one pool of examples split into train/validation by a permutation from
``numpy.random.default_rng(seed)``; file sets and MNIST-1D therefore do *not* keep their
published test split — pooling keeps ``val_fraction`` meaningful for every name.
Standardization uses the training split's per-feature mean and (biased) std only, applied
to both splits; a feature constant in training (std < 1e-8) is centred but not scaled, as
scikit-learn's ``StandardScaler`` does, so a rare value in validation cannot blow up.

No network, ever. ``digits`` and ``mnist1d`` are cached as ``.npz`` in ``$NORMLAB_CACHE``
(default ``~/.cache/normlab``) so later processes import neither scikit-learn (~1 s) nor
regenerate MNIST-1D (~3 s); raw arrays are also cached in-process.
"""
from __future__ import annotations

import math
import os
import random
import threading
import uuid
import warnings
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

if TYPE_CHECKING:
    import torch

from normlab.training.datafiles import DatasetError, encode_labels, idx_signature, read_csv, read_idx_folder

__all__ = ["BUILTIN", "Dataset", "DatasetError", "cache_dir", "dataset_info", "load_dataset",
           "split_indices", "supports_cnn", "train_size"]

BUILTIN = ("digits", "mnist1d", "spirals", "moons", "circles")
SYNTHETIC = ("spirals", "moons", "circles")
STD_FLOOR = 1e-8  # a training std below this marks a constant feature (centred, not scaled)
_CACHE_VERSION = 1  # bump when a cached array's meaning changes
_GEN_STREAM = 1  # synthetic points use rng (seed, 1); the split uses rng(seed)
_MNIST1D_LOCK = threading.Lock()  # make_dataset reseeds global RNGs: one generation at a time
DESCRIPTIONS = {
    "digits": "8×8 hand-written digits (UCI, via scikit-learn), pixel values 0..16",
    "mnist1d": "MNIST-1D (Greydanus 2020): 1-D signals of length 40 drawn from digit templates",
    "spirals": "two interleaved spirals in 2-D",
    "moons": "two interleaving half circles in 2-D",
    "circles": "a small circle inside a large one in 2-D",
    "idx": "MNIST-format IDX images (train + t10k pooled), pixels in [0, 1]",
    "csv": "a CSV file: numeric feature columns and a 'label' column",
}


@dataclass(frozen=True, eq=False)  # eq=False: tensors have no single truth value
class Dataset:
    x_train: torch.Tensor  # (N_train, F) float32, flat
    y_train: torch.Tensor  # (N_train,) int64 in 0..num_classes-1
    x_val: torch.Tensor  # (N_val, F) float32, flat
    y_val: torch.Tensor  # (N_val,) int64
    num_classes: int  # K
    input_shape: tuple  # per-example shape for a CNN: (C, H, W), (C, L), or (F,) if none
    name: str  # the name it was loaded by
    mean: torch.Tensor | None = None  # (F,) training mean used to standardize, or None
    std: torch.Tensor | None = None  # (F,) training std used (constant features: 1), or None
    class_names: tuple[str, ...] = ()  # original label of each class index

    @property
    def num_features(self) -> int:
        return math.prod(self.input_shape)

    @property
    def spatial(self) -> bool:
        """Whether examples have channels and positions (images or signals), as a CNN needs."""
        return len(self.input_shape) >= 2

    def check_model(self, model: str) -> None:
        """Raise ValueError if ``model`` ('mlp' or 'cnn') cannot take this dataset."""
        if model not in ("mlp", "cnn"):
            raise ValueError(f"unknown model {model!r}; choose mlp or cnn")
        if model == "cnn" and not self.spatial:
            raise ValueError(_cnn_message(self.name, self.input_shape))

    def view(self, x: torch.Tensor, model: str) -> torch.Tensor:
        """``x`` (N, F) shaped for ``model``: (N, *input_shape) for 'cnn', (N, F) for 'mlp'."""
        self.check_model(model)
        if model == "cnn":
            return x.reshape(len(x), *self.input_shape)
        return x.reshape(len(x), self.num_features)

    def __repr__(self) -> str:
        return (f"Dataset({self.name!r}, train={len(self.y_train)}, val={len(self.y_val)}, "
                f"input_shape={self.input_shape}, num_classes={self.num_classes}, "
                f"standardized={self.mean is not None})")


class _Pool(NamedTuple):
    """All examples of a dataset before splitting (arrays are shared: never mutate)."""
    x: np.ndarray  # (N, F), any numeric dtype; float32 after _to_float
    y: np.ndarray  # (N,) int64
    input_shape: tuple
    class_names: tuple[str, ...]
    scale: float = 1.0  # x / scale gives the model's raw inputs (IDX bytes: 255)


# ------------------------------------------------------------------------------ public API


def load_dataset(name: str, *, seed: int = 0, val_fraction: float = 0.2,
                 standardize: bool = True, n_samples: int = 2000,
                 noise: float = 0.1) -> Dataset:
    """The dataset called ``name``, split into train/validation by ``seed``.

    ``n_samples`` and ``noise`` only apply to the synthetic 2-D sets. With ``standardize``
    each feature is shifted and scaled by the training split's mean and std (both splits);
    without it inputs stay raw. Raises DatasetError for unknown names and bad files.
    """
    import torch  # here, not at the top: validating a config needs no torch

    pool = _pool(name, seed=seed, n_samples=n_samples, noise=noise)
    train_idx, val_idx = split_indices(len(pool.y), val_fraction, seed)
    x_train, x_val = _to_float(pool, train_idx), _to_float(pool, val_idx)
    mean = std = None
    if standardize:
        mean, std = _train_moments(x_train)
        x_train = (x_train - mean) / std
        x_val = (x_val - mean) / std
        mean, std = torch.from_numpy(mean), torch.from_numpy(std)
    return Dataset(
        x_train=torch.from_numpy(x_train), y_train=torch.from_numpy(pool.y[train_idx]),
        x_val=torch.from_numpy(x_val), y_val=torch.from_numpy(pool.y[val_idx]),
        num_classes=len(pool.class_names), input_shape=tuple(pool.input_shape), name=name,
        mean=mean, std=std, class_names=pool.class_names,
    )


def split_indices(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(train_idx, val_idx)``: a permutation of range(n) from ``default_rng(seed)``, its
    first ``round(n · val_fraction)`` (at least 1, at most n − 1) entries for validation."""
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be between 0 and 1 (got {val_fraction})")
    if n < 2:
        raise DatasetError(f"a dataset of {n} example(s) cannot be split into training and "
                           "validation; it needs at least 2")
    n_val = _n_val(n, val_fraction)
    perm = np.random.default_rng(seed).permutation(n)
    return perm[n_val:], perm[:n_val]


def train_size(name: str, *, val_fraction: float = 0.2, n_samples: int = 2000,
               **kw) -> int:
    """Number of training examples ``load_dataset(name, ...)`` gives (for checking
    batch_size). Synthetic sets need no loading; the others use the cached pool."""
    if name in SYNTHETIC:
        return n_samples - _n_val(n_samples, val_fraction)
    n = len(_pool(name, seed=kw.get("seed", 0), n_samples=n_samples,
                  noise=kw.get("noise", 0.1)).y)
    return n - _n_val(n, val_fraction)


def dataset_info(name: str, *, val_fraction: float = 0.2, n_samples: int = 2000,
                 noise: float = 0.1, seed: int = 0) -> dict:
    """Cheap facts for the UI: examples, train/val sizes, features, classes, input shape,
    whether a CNN applies, a one-line description. Loads (cached) but does not split."""
    pool = _pool(name, seed=seed, n_samples=n_samples, noise=noise)
    n, n_val = len(pool.y), _n_val(len(pool.y), val_fraction)
    return {
        "name": name, "description": DESCRIPTIONS[_kind(name)], "examples": n,
        "train": n - n_val, "val": n_val, "features": math.prod(pool.input_shape),
        "classes": len(pool.class_names), "class_names": pool.class_names,
        "input_shape": tuple(pool.input_shape), "cnn": len(pool.input_shape) >= 2,
    }


def supports_cnn(name: str) -> bool:
    """Whether a CNN can take dataset ``name`` (decided by name, without loading)."""
    return _kind(name) in ("digits", "mnist1d", "idx")


def cache_dir() -> Path:
    """Where digits/MNIST-1D arrays are cached: ``$NORMLAB_CACHE`` or ``~/.cache/normlab``."""
    return Path(os.environ.get("NORMLAB_CACHE") or "~/.cache/normlab").expanduser()


# ------------------------------------------------------------------------------ internals


def _n_val(n: int, val_fraction: float) -> int:
    return max(1, min(n - 1, round(n * val_fraction)))


def _kind(name: str) -> str:
    if name in BUILTIN:
        return name
    for prefix in ("idx", "csv"):
        if name.startswith(prefix + ":"):
            if not name[len(prefix) + 1:].strip():
                raise DatasetError(f"{name!r} names no path; write {prefix}:/path/to/"
                                   + ("folder" if prefix == "idx" else "file.csv"))
            return prefix
    raise DatasetError(f"unknown dataset {name!r}; choose one of {', '.join(BUILTIN)}, or "
                       "idx:FOLDER (MNIST-format IDX files) / csv:FILE for your own data")


def _cnn_message(name: str, input_shape: tuple) -> str:
    return (f"model 'cnn' needs image or signal data (digits, mnist1d, idx:FOLDER), but "
            f"{name!r} has {math.prod(input_shape)} plain features with no spatial layout; "
            "use model 'mlp'")


def _pool(name: str, *, seed: int, n_samples: int, noise: float) -> _Pool:
    kind = _kind(name)
    if kind in SYNTHETIC:
        return _synthetic(kind, n_samples, noise, seed)
    if kind in ("digits", "mnist1d"):
        return _builtin_pool(kind, str(cache_dir()))
    path = Path(name.split(":", 1)[1].strip()).expanduser()
    if kind == "idx":
        return _idx_pool(str(path), idx_signature(path))
    if not path.is_file():  # checked here so the stat below cannot fail first
        read_csv(path)  # raises the descriptive DatasetError
    st = path.stat()
    return _csv_pool(str(path.resolve()), st.st_size, st.st_mtime_ns)


def _to_float(pool: _Pool, idx: np.ndarray) -> np.ndarray:
    x = pool.x[idx].astype(np.float32)  # fancy indexing copies: the pool stays untouched
    return x / np.float32(pool.scale) if pool.scale != 1 else x


def _train_moments(x_train: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and biased std of the training split, in float64, returned float32;
    a std under STD_FLOOR (a constant feature) is replaced by 1."""
    mean = x_train.mean(axis=0, dtype=np.float64)  # (F,), accumulated in float64
    std = x_train.std(axis=0, dtype=np.float64)  # (F,), biased (ddof=0)
    std = np.where(std < STD_FLOOR, 1.0, std)
    return mean.astype(np.float32), std.astype(np.float32)


def _frozen(pool: _Pool) -> _Pool:
    pool.x.flags.writeable = False
    pool.y.flags.writeable = False
    return pool


# --- built-in sets: disk cache + in-process cache ---


@lru_cache(maxsize=4)
def _builtin_pool(name: str, directory: str) -> _Pool:
    """Raw arrays of ``digits`` / ``mnist1d``, from ``directory``'s npz or generated."""
    path = Path(directory) / f"{name}-v{_CACHE_VERSION}.npz"
    arrays = _read_npz(path)
    if arrays is None:
        arrays = _make_digits() if name == "digits" else _make_mnist1d()
        _write_npz(path, arrays)
    shape = (1, 8, 8) if name == "digits" else (1, arrays["x"].shape[1])
    return _frozen(_Pool(arrays["x"], arrays["y"], shape, tuple(str(k) for k in range(10))))


def _read_npz(path: Path) -> dict[str, np.ndarray] | None:
    try:
        with np.load(path, allow_pickle=False) as f:
            return {"x": f["x"], "y": f["y"]}
    except FileNotFoundError:
        return None
    except Exception as e:  # a corrupt or foreign file: regenerate and overwrite it
        warnings.warn(f"normlab: ignoring unreadable cache {path} ({e}); regenerating it")
        return None


def _write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write atomically (temp file + rename) so concurrent readers never see half a file."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        warnings.warn(f"normlab: could not write cache {path} ({e}); set NORMLAB_CACHE to a "
                      "writable folder to make later loads fast")


def _make_digits() -> dict[str, np.ndarray]:
    from sklearn.datasets import load_digits  # ~1 s import: only on a cold cache

    d = load_digits()
    return {"x": d.data.astype(np.float32), "y": d.target.astype(np.int64)}  # (1797, 64)


def _make_mnist1d() -> dict[str, np.ndarray]:
    """MNIST-1D's default dataset, train and test pooled. ``make_dataset`` seeds Python's and
    numpy's global RNGs; both states are saved and restored around it."""
    from mnist1d.data import get_dataset_args, make_dataset

    with _MNIST1D_LOCK:
        np_state, py_state = np.random.get_state(), random.getstate()
        try:
            d = make_dataset(get_dataset_args())
        finally:
            np.random.set_state(np_state)
            random.setstate(py_state)
    x = np.concatenate([d["x"], d["x_test"]]).astype(np.float32)  # (5000, 40)
    y = np.concatenate([d["y"], d["y_test"]]).astype(np.int64)
    return {"x": x, "y": y}


# --- synthetic 2-D sets (2 classes, n // 2 points of class 0, the rest class 1) ---


def _synthetic(name: str, n_samples: int, noise: float, seed: int) -> _Pool:
    if n_samples < 2:
        raise ValueError(f"n_samples must be at least 2 for {name!r} (got {n_samples})")
    if not (math.isfinite(noise) and noise >= 0):
        raise ValueError(f"noise must be zero or positive (got {noise})")
    rng = np.random.default_rng((seed, _GEN_STREAM))
    n0 = n_samples // 2
    n1 = n_samples - n0
    points = {"spirals": _spirals, "moons": _moons, "circles": _circles}[name](n0, n1)  # (N, 2)
    points = points + noise * rng.standard_normal(points.shape)
    y = np.repeat(np.array([0, 1], dtype=np.int64), [n0, n1])
    return _Pool(points.astype(np.float32), y, (2,), ("0", "1"))


def _moons(n0: int, n1: int) -> np.ndarray:
    """Upper unit half circle (class 0) and a lower one shifted to (1, 0.5) (class 1)."""
    t0, t1 = np.linspace(0, np.pi, n0), np.linspace(0, np.pi, n1)
    outer = np.stack([np.cos(t0), np.sin(t0)], axis=1)
    inner = np.stack([1 - np.cos(t1), 0.5 - np.sin(t1)], axis=1)
    return np.concatenate([outer, inner])


def _circles(n0: int, n1: int, factor: float = 0.5) -> np.ndarray:
    """Unit circle (class 0) around a circle of radius ``factor`` (class 1)."""
    t0 = np.linspace(0, 2 * np.pi, n0, endpoint=False)
    t1 = np.linspace(0, 2 * np.pi, n1, endpoint=False)
    outer = np.stack([np.cos(t0), np.sin(t0)], axis=1)
    inner = factor * np.stack([np.cos(t1), np.sin(t1)], axis=1)
    return np.concatenate([outer, inner])


def _spirals(n0: int, n1: int, turns: float = 1.5) -> np.ndarray:
    """Two arms r = t, angle = 2π·turns·t (t in [0.05, 1]), the second rotated by π."""
    arms = []
    for k, n in enumerate((n0, n1)):
        t = np.linspace(0.05, 1, n)
        angle = 2 * np.pi * turns * t + k * np.pi
        arms.append(np.stack([t * np.cos(angle), t * np.sin(angle)], axis=1))
    return np.concatenate(arms)


# --- file sets (in-process cache keyed by path, size and mtime) ---


@lru_cache(maxsize=2)
def _idx_pool(folder: str, signature: tuple) -> _Pool:
    images, labels, _ = read_idx_folder(folder)  # uint8 (N, rows, cols), (N,)
    codes, names = encode_labels(labels, f"folder {folder}")
    N, rows, cols = images.shape
    return _frozen(_Pool(images.reshape(N, rows * cols), codes, (1, rows, cols), names, 255.0))


@lru_cache(maxsize=4)
def _csv_pool(path: str, size: int, mtime_ns: int) -> _Pool:
    x, labels, _ = read_csv(path)
    codes, names = encode_labels(labels, Path(path).name)
    return _frozen(_Pool(x, codes, (x.shape[1],), names))
