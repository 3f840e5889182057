"""Parsers for users' own data files: IDX folders (MNIST / Fashion-MNIST) and labelled CSVs.

:mod:`normlab.training.data` turns what these return into a :class:`~normlab.training.data.Dataset`; this
module only reads and checks files. Every problem is a :class:`DatasetError` whose message
names the file, says what is wrong (with the values found) and how to fix it.

IDX is the format of LeCun, Cortes & Burges' MNIST distribution
(http://yann.lecun.com/exdb/mnist/, "FILE FORMATS FOR THE MNIST DATABASE"), also used by
Fashion-MNIST (Xiao, Rasul & Vollgraf 2017): a 4-byte magic number ``0x0000TTNN`` (two zero
bytes, a type byte ``TT`` — ``0x08`` is unsigned byte — and the number of dimensions
``NN``), then ``NN`` big-endian uint32 sizes, then the row-major payload. Images are
``0x00000803`` (count, rows, cols), labels ``0x00000801`` (count). Files may be gzipped
(detected by the gzip magic bytes, whatever the name says).
"""
from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

IMAGE_MAGIC = 0x00000803  # unsigned bytes, 3 dimensions: count, rows, cols
LABEL_MAGIC = 0x00000801  # unsigned bytes, 1 dimension: count
IDX_FILES = {  # role -> canonical stem (the names MNIST and Fashion-MNIST ship with)
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
LABEL_COLUMN = "label"


class DatasetError(ValueError):
    """A dataset that cannot be loaded: missing or malformed files, or an unknown name."""


# ---------------------------------------------------------------------------------- IDX


def idx_paths(folder: str | Path) -> dict[str, Path]:
    """The four IDX files in ``folder``, by role (see :data:`IDX_FILES`).

    Accepts each file plain or gzipped (``.gz``) and the dotted variant some mirrors use
    (``train-images.idx3-ubyte``)."""
    folder = Path(folder).expanduser()
    if not folder.exists():
        raise DatasetError(f"folder {folder} does not exist; give idx: a folder holding the "
                           "four MNIST/Fashion-MNIST IDX files")
    if not folder.is_dir():
        raise DatasetError(f"{folder} is a file, not a folder; give idx: the folder holding "
                           "the four IDX files (train-images, train-labels, t10k-images, "
                           "t10k-labels)")
    return {role: _find_idx(folder, stem) for role, stem in IDX_FILES.items()}


def _find_idx(folder: Path, stem: str) -> Path:
    dotted = stem.replace("-idx", ".idx")  # train-images-idx3-ubyte -> train-images.idx3-ubyte
    for name in (stem, stem + ".gz", dotted, dotted + ".gz"):
        if (folder / name).is_file():
            return folder / name
    raise DatasetError(f"folder {folder} has no {stem}[.gz] (nor {dotted}[.gz]); put the "
                       "four MNIST/Fashion-MNIST IDX files there, gzipped or not")


def read_idx(path: str | Path, magic: int) -> np.ndarray:
    """The uint8 array stored in IDX file ``path``, checking it has the expected ``magic``
    number (:data:`IMAGE_MAGIC` or :data:`LABEL_MAGIC`) and exactly the declared payload."""
    path = Path(path)
    kind = "an IDX image file" if magic == IMAGE_MAGIC else "an IDX label file"
    data = _read_bytes(path, kind)
    if len(data) < 4:
        raise DatasetError(f"{path.name}: only {len(data)} bytes, too short for an IDX "
                           f"header; expected {kind} — re-download or re-extract it")
    found = int.from_bytes(data[:4], "big")
    if found != magic:
        hint = {IMAGE_MAGIC: " (that is an image file: are the file names swapped?)",
                LABEL_MAGIC: " (that is a label file: are the file names swapped?)"}
        raise DatasetError(f"{path.name}: bad magic number 0x{found:08X}, expected "
                           f"0x{magic:08X} ({kind}){hint.get(found, '')}")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DatasetError(f"{path.name}: truncated header ({len(data)} bytes, need {header} "
                           f"for {ndim} dimension sizes) — re-download the file")
    dims = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(dims, dtype=np.int64))
    payload = len(data) - header
    shape = " × ".join(map(str, dims))
    if payload < expected:
        raise DatasetError(f"{path.name}: truncated payload: the header declares {shape} = "
                           f"{expected} bytes but only {payload} follow — re-download the file")
    if payload > expected:
        raise DatasetError(f"{path.name}: {payload - expected} bytes after the {expected} "
                           f"the header declares ({shape}); the file is corrupt or not IDX "
                           "— re-download it")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def _read_bytes(path: Path, kind: str) -> bytes:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DatasetError(f"{path}: file does not exist") from None
    except OSError as e:
        raise DatasetError(f"{path.name}: cannot be read ({e.strerror})") from None
    if not data:
        raise DatasetError(f"{path.name}: file is empty (0 bytes); expected {kind} — "
                           "re-download or re-extract it")
    if data[:2] == b"\x1f\x8b":  # gzip magic bytes
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as e:
            raise DatasetError(f"{path.name}: broken gzip data ({e}); re-download it or "
                               "store it uncompressed") from None
        if not data:
            raise DatasetError(f"{path.name}: gzip file holds no data; expected {kind}")
    return data


def read_idx_folder(folder: str | Path) -> tuple[np.ndarray, np.ndarray, int]:
    """``(images, labels, n_train)`` from an IDX folder: the train and t10k parts pooled
    (train first), images uint8 (N, rows, cols), labels uint8 (N,)."""
    paths = idx_paths(folder)
    parts = {}
    for split in ("train", "test"):
        img_path, lab_path = paths[f"{split}_images"], paths[f"{split}_labels"]
        images = read_idx(img_path, IMAGE_MAGIC)
        labels = read_idx(lab_path, LABEL_MAGIC)
        if len(images) != len(labels):
            raise DatasetError(f"{img_path.name} has {len(images)} images but {lab_path.name} "
                               f"has {len(labels)} labels; they must match one to one — "
                               "check both come from the same release")
        parts[split] = (images, labels)
    (tr_x, tr_y), (te_x, te_y) = parts["train"], parts["test"]
    if tr_x.shape[1:] != te_x.shape[1:]:
        raise DatasetError(f"{paths['train_images'].name} holds {tr_x.shape[1]}×{tr_x.shape[2]} "
                           f"images but {paths['test_images'].name} holds "
                           f"{te_x.shape[1]}×{te_x.shape[2]}; both must come from one dataset")
    images = np.concatenate([tr_x, te_x])  # (N, rows, cols)
    labels = np.concatenate([tr_y, te_y])  # (N,)
    if len(images) == 0 or images.shape[1] * images.shape[2] == 0:
        raise DatasetError(f"folder {folder}: the IDX files hold no pixels "
                           f"(images of shape {images.shape}); re-download them")
    return images, labels, len(tr_x)


def idx_signature(folder: str | Path) -> tuple:
    """What identifies the folder's current content (paths, sizes, mtimes): a cache key."""
    out = []
    for path in idx_paths(folder).values():
        st = path.stat()
        out.append((str(path.resolve()), st.st_size, st.st_mtime_ns))
    return tuple(out)


# ---------------------------------------------------------------------------------- CSV


def read_csv(path: str | Path) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """``(features float32 (N, F), labels, feature_names)`` from a CSV with a ``label``
    column; every other column must be numeric. Labels are returned as given (ints or
    strings); :func:`encode_labels` maps them to 0..K−1."""
    import pandas as pd  # ~0.3 s; only file datasets need it

    path = Path(path).expanduser()
    if not path.exists():
        raise DatasetError(f"{path}: file does not exist; give csv: the path of a CSV file")
    if path.is_dir():
        raise DatasetError(f"{path} is a folder; give csv: a CSV file (for IDX folders use "
                           "idx:)")
    try:
        frame = pd.read_csv(path, skipinitialspace=True)
    except pd.errors.EmptyDataError:
        raise DatasetError(f"{path.name}: file is empty; expected a header row with a "
                           f"'{LABEL_COLUMN}' column and numeric feature columns") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as e:
        raise DatasetError(f"{path.name}: not a readable CSV ({e})") from None
    frame.columns = [str(c).strip() for c in frame.columns]
    if LABEL_COLUMN not in frame.columns:
        raise DatasetError(f"{path.name} has no '{LABEL_COLUMN}' column (columns: "
                           f"{', '.join(frame.columns)}); name the class column "
                           f"'{LABEL_COLUMN}'")
    names = tuple(c for c in frame.columns if c != LABEL_COLUMN)
    if not names:
        raise DatasetError(f"{path.name} has only a '{LABEL_COLUMN}' column; add numeric "
                           "feature columns")
    if len(frame) == 0:
        raise DatasetError(f"{path.name} has a header but no rows; add examples")
    labels = frame[LABEL_COLUMN]
    if labels.isna().any():
        row = int(np.flatnonzero(labels.isna().to_numpy())[0]) + 1
        raise DatasetError(f"{path.name}: column '{LABEL_COLUMN}' is empty in row {row}; "
                           "every example needs a class")
    x = np.stack([_numeric_column(frame[c], c, path.name) for c in names], axis=1)
    return x.astype(np.float32), labels.to_numpy(), names


def _numeric_column(col, name: str, file: str) -> np.ndarray:
    """Column ``name`` as float64, or DatasetError naming the first bad row (rows count
    data rows from 1, the header not included)."""
    import pandas as pd

    values = pd.to_numeric(col, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    missing = col.isna().to_numpy()
    if missing.any():
        row = int(np.flatnonzero(missing)[0]) + 1
        raise DatasetError(f"{file}: column '{name}' has a missing value in row {row}; fill "
                           "it in or drop the row")
    bad = ~np.isfinite(values)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DatasetError(f"{file}: column '{name}' is not numeric (row {i + 1}: "
                           f"{col.iloc[i]!r}); make every value a finite number or drop "
                           "the column")
    return values


def encode_labels(labels: np.ndarray, file: str) -> tuple[np.ndarray, tuple[str, ...]]:
    """``(codes int64 0..K−1, class_names)``: classes in sorted order (numeric order for
    numbers, string order otherwise). Fewer than 2 classes is a DatasetError."""
    if labels.dtype.kind not in "biuf":  # strings or mixed: compare as text
        labels = labels.astype(str)
    classes, codes = np.unique(labels, return_inverse=True)
    if len(classes) < 2:
        found = ", ".join(repr(_label_name(c)) for c in classes) or "none"
        raise DatasetError(f"{file}: only {len(classes)} class ({found}); a classifier needs "
                           "at least 2 — add examples of other classes")
    return codes.astype(np.int64), tuple(_label_name(c) for c in classes)


def _label_name(value) -> str:
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    return str(value)
