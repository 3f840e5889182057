"""Hostile data files: devices, FIFOs, oversized files, gzip bombs, overflowing IDX headers,
and files whose content must never appear in a message (issue 11, points 1 and 5)."""
from __future__ import annotations

import gzip
import os
import resource
import threading

import numpy as np
import pytest

from normlab.training.data import load_dataset
from normlab.training.datafiles import IMAGE_MAGIC, DatasetError, read_csv, read_idx

SECRET = "TOPSECRET_9f3a"


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@pytest.mark.parametrize("text", [
    f"{SECRET}=1\nB=2\n",  # like /proc/self/environ: no label column
    f"a,label\n1,0\n{SECRET},1\n",  # a secret where a number should be
    f"{SECRET},label\n,0\n2,1\n",  # a secret as a column name, missing value
    f"label,a\n{SECRET},1\n{SECRET},2\n",  # a secret as the only class
    f"a,label\n1,0\n2,1,{SECRET}\n",  # a row with too many fields
    f"root:$6${SECRET}:19000:0:99999:7:::\n",  # like /etc/shadow
])
def test_csv_errors_never_quote_the_content(tmp_path, text):
    path = tmp_path / "secret.csv"
    path.write_text(text)
    with pytest.raises(DatasetError) as info:
        load_dataset(f"csv:{path}")
    message = str(info.value)
    assert "secret.csv" in message and SECRET not in message


def test_device_is_refused_without_reading():
    with pytest.raises(DatasetError, match="not a regular file"):
        read_csv("/dev/zero")


def test_fifo_is_refused_without_hanging(tmp_path):
    fifo = tmp_path / "pipe.csv"
    os.mkfifo(fifo)
    result = {}

    def attempt():
        try:
            read_csv(fifo)
        except DatasetError as exc:
            result["error"] = str(exc)

    thread = threading.Thread(target=attempt, daemon=True)
    thread.start()
    thread.join(5)
    assert not thread.is_alive(), "reading a FIFO hung"
    assert "not a regular file" in result["error"]


def test_file_over_the_size_limit_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("NORMLAB_MAX_FILE_MB", "0.001")  # 1 KB
    path = tmp_path / "big.csv"
    path.write_text("a,label\n" + "1,0\n2,1\n" * 200)
    with pytest.raises(DatasetError, match=r"big\.csv: larger than the 0 MB limit"):
        read_csv(path)
    monkeypatch.setenv("NORMLAB_MAX_FILE_MB", "1")
    assert read_csv(path)[0].shape == (400, 1)


def _idx_header(dims) -> bytes:
    magic = 0x0800 | len(dims)
    return magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in dims)


def test_gzip_bomb_is_refused_from_its_header(tmp_path):
    # header declares 60000 × 2^16 × 2^16 bytes (2.5e14): refused before any payload is read
    path = tmp_path / "bomb.gz"
    with gzip.open(path, "wb", compresslevel=9) as f:
        f.write(_idx_header((60000, 65535, 65535)))
        block = bytes(1 << 20)
        for _ in range(256):  # 256 MB of zeros, ~250 KB compressed
            f.write(block)
    before = _peak_rss_mb()
    with pytest.raises(DatasetError, match=r"bomb\.gz: the header declares 60000 × 65535 × "
                                           r"65535 = .* more than the 512 MB limit"):
        read_idx(path, IMAGE_MAGIC)
    assert _peak_rss_mb() - before < 50


def test_gzip_bomb_with_small_header_reads_only_what_it_declares(tmp_path):
    path = tmp_path / "tail.gz"
    with gzip.open(path, "wb") as f:
        f.write(_idx_header((2, 4, 4)) + bytes(32))
        block = bytes(1 << 20)
        for _ in range(256):
            f.write(block)
    before = _peak_rss_mb()
    with pytest.raises(DatasetError, match=r"tail\.gz: more bytes after the 32"):
        read_idx(path, IMAGE_MAGIC)
    assert _peak_rss_mb() - before < 50


def test_overflowing_header_dims_name_the_file(tmp_path):
    # 2^32-1 cubed overflows int64; the message names the file instead of a reshape error
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(_idx_header((2**32 - 1, 2**32 - 1, 2**32 - 1)) + bytes(16))
    with pytest.raises(DatasetError, match=r"train-images-idx3-ubyte: the header declares "
                                           r"4294967295 × "):
        read_idx(path, IMAGE_MAGIC)


def test_valid_gzipped_idx_still_reads(tmp_path):
    arr = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    path = tmp_path / "ok.gz"
    path.write_bytes(gzip.compress(_idx_header(arr.shape) + arr.tobytes()))
    np.testing.assert_array_equal(read_idx(path, IMAGE_MAGIC), arr)
