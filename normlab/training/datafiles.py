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

Safety (a dataset name can arrive in a link): only regular files are opened (never a
device, FIFO or socket, which could hang or never end), every read is bounded by
:func:`normlab.training.limits.max_file_bytes` — for gzip the *decompressed* size, and an
IDX header's declared size is checked before its payload is read, so a gzip bomb is
refused after reading only its header — and messages name the file, the row and the
problem but never quote the file's content.
"""
from __future__ import annotations

import gzip
import io
import math
import os
import stat
import zlib
from pathlib import Path

import numpy as np

from normlab.training.limits import max_file_bytes

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
    number (:data:`IMAGE_MAGIC` or :data:`LABEL_MAGIC`) and exactly the declared payload.

    The header is read first; a declared size above the file limit is refused before the
    payload is read, and at most the declared size plus one byte is ever decompressed."""
    path = Path(path)
    kind = "an IDX image file" if magic == IMAGE_MAGIC else "an IDX label file"
    limit = max_file_bytes()
    with _open_data(path, kind) as f:
        head = f.read(4)
        if not head:
            raise DatasetError(f"{path.name}: file is empty (0 bytes); expected {kind} — "
                               "re-download or re-extract it")
        if len(head) < 4:
            raise DatasetError(f"{path.name}: only {len(head)} bytes, too short for an IDX "
                               f"header; expected {kind} — re-download or re-extract it")
        found = int.from_bytes(head, "big")
        if found != magic:
            hint = {IMAGE_MAGIC: " (that is an image file: are the file names swapped?)",
                    LABEL_MAGIC: " (that is a label file: are the file names swapped?)"}
            raise DatasetError(f"{path.name}: bad magic number 0x{found:08X}, expected "
                               f"0x{magic:08X} ({kind}){hint.get(found, '')}")
        ndim = magic & 0xFF
        sizes = f.read(4 * ndim)
        header = 4 + 4 * ndim
        if len(sizes) < 4 * ndim:
            raise DatasetError(f"{path.name}: truncated header ({4 + len(sizes)} bytes, need "
                               f"{header} for {ndim} dimension sizes) — re-download the file")
        dims = tuple(int.from_bytes(sizes[4 * i: 4 * i + 4], "big") for i in range(ndim))
        expected = math.prod(dims)  # Python ints: cannot overflow
        shape = " × ".join(map(str, dims))
        if expected > limit:
            raise DatasetError(f"{path.name}: the header declares {shape} = {expected:,} "
                               f"bytes, more than the {limit >> 20} MB limit for a data file; "
                               "use a smaller file or raise NORMLAB_MAX_FILE_MB")
        payload = f.read(expected + 1)
    if len(payload) < expected:
        raise DatasetError(f"{path.name}: truncated payload: the header declares {shape} = "
                           f"{expected} bytes but only {len(payload)} follow — re-download "
                           "the file")
    if len(payload) > expected:
        raise DatasetError(f"{path.name}: more bytes after the {expected} the header declares "
                           f"({shape}); the file is corrupt or not IDX — re-download it")
    return np.frombuffer(payload, dtype=np.uint8).reshape(dims)


class _Reader:
    """A bounded reader over a regular file, gunzipping it if it starts with gzip's magic."""

    def __init__(self, path: Path, kind: str):
        self.path, self.kind = path, kind
        try:  # O_NONBLOCK: opening a FIFO must not wait for a writer
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        except FileNotFoundError:
            raise DatasetError(f"{path}: file does not exist") from None
        except OSError as e:
            raise DatasetError(f"{path.name}: cannot be read ({e.strerror})") from None
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            os.close(fd)
            what = "a folder" if stat.S_ISDIR(mode) else "not a regular file (a device, " \
                "pipe or socket)"
            raise DatasetError(f"{path}: {what}; give the path of {kind}")
        os.set_blocking(fd, True)
        self.raw = os.fdopen(fd, "rb")
        self.file = self.raw
        if self.raw.read(2) == b"\x1f\x8b":  # gzip magic bytes
            self.raw.seek(0)
            self.file = gzip.GzipFile(fileobj=self.raw, mode="rb")
        else:
            self.raw.seek(0)

    def read(self, n: int) -> bytes:
        try:
            return self.file.read(n)
        except (OSError, EOFError, zlib.error) as e:
            raise DatasetError(f"{self.path.name}: broken gzip data ({type(e).__name__}); "
                               "re-download it or store it uncompressed") from None

    def __enter__(self) -> "_Reader":
        return self

    def __exit__(self, *exc) -> None:
        self.file.close()
        self.raw.close()


def _open_data(path: Path, kind: str) -> _Reader:
    return _Reader(path, kind)


def read_limited(path: str | Path, kind: str) -> bytes:
    """The whole content of regular file ``path`` (gunzipped), at most the file limit;
    DatasetError if it is larger, empty, not a regular file or unreadable."""
    path = Path(path)
    limit = max_file_bytes()
    with _open_data(path, kind) as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise DatasetError(f"{path.name}: larger than the {limit >> 20} MB limit for a data "
                           "file; use a smaller file or raise NORMLAB_MAX_FILE_MB")
    if not data:
        raise DatasetError(f"{path.name}: file is empty (0 bytes); expected {kind}")
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
    data = read_limited(path, "a CSV file")
    try:
        frame = pd.read_csv(io.BytesIO(data), skipinitialspace=True)
    except pd.errors.EmptyDataError:
        raise DatasetError(f"{path.name}: file is empty; expected a header row with a "
                           f"'{LABEL_COLUMN}' column and numeric feature columns") from None
    except pd.errors.ParserError as e:
        where = str(e).split("C error: ")[-1][:80] if "line" in str(e) else "bad layout"
        raise DatasetError(f"{path.name}: not a readable CSV ({where}); every row needs as "
                           "many fields as the header") from None
    except UnicodeDecodeError:
        raise DatasetError(f"{path.name}: not a readable CSV (not UTF-8 text)") from None
    frame.columns = [str(c).strip() for c in frame.columns]
    if LABEL_COLUMN not in frame.columns:
        raise DatasetError(f"{path.name} has no '{LABEL_COLUMN}' column (among its "
                           f"{len(frame.columns)} columns); name the class column "
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
    position = {c: i + 1 for i, c in enumerate(frame.columns)}
    x = np.stack([_numeric_column(frame[c], position[c], path.name) for c in names], axis=1)
    return x.astype(np.float32), labels.to_numpy(), names


def _numeric_column(col, number: int, file: str) -> np.ndarray:
    """Column ``col`` as float64, or DatasetError naming the column by its number (from 1)
    and the first bad row (data rows from 1, the header not included) — never its name or
    value: the file's content stays out of messages."""
    import pandas as pd

    values = pd.to_numeric(col, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    missing = col.isna().to_numpy()
    if missing.any():
        row = int(np.flatnonzero(missing)[0]) + 1
        raise DatasetError(f"{file}: column {number} has a missing value in row {row}; fill "
                           "it in or drop the row")
    bad = ~np.isfinite(values)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DatasetError(f"{file}: column {number} is not numeric (row {i + 1}); make "
                           "every value a finite number or drop the column")
    return values


def encode_labels(labels: np.ndarray, file: str) -> tuple[np.ndarray, tuple[str, ...]]:
    """``(codes int64 0..K−1, class_names)``: classes in sorted order (numeric order for
    numbers, string order otherwise). Fewer than 2 classes is a DatasetError."""
    if labels.dtype.kind not in "biuf":  # strings or mixed: compare as text
        labels = labels.astype(str)
    classes, codes = np.unique(labels, return_inverse=True)
    if len(classes) < 2:
        raise DatasetError(f"{file}: only {len(classes)} class among its labels; "
                           "a classifier needs at least 2 — add examples of other classes")
    return codes.astype(np.int64), tuple(_label_name(c) for c in classes)


def _label_name(value) -> str:
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    return str(value)
