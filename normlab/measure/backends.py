"""Which statistics kernels a probe uses: compiled (numba) once they are compiled, numpy
until then — so a freshly installed machine shows its first curve without waiting for
the compiler.

The probes' arithmetic has two implementations with one contract (the constants and
:func:`workspace` below, the functions' signatures and outputs):

* :mod:`normlab.measure.kernels` — compiled by numba, a few tens of µs per recorded step,
  cached on disk; compiling every kernel takes 10–20 s of CPU on a fresh machine;
* :mod:`normlab.measure.fallback` — the same outputs from numpy's vectorized calls
  (exact order statistics, the same bucket arithmetic, float64 sums), a few hundred µs
  more per recorded step, and nothing to compile.

:func:`current` picks one when a probe is made; a probe on the fallback moves to the
compiled kernels at its next flush once they exist (:func:`upgrade`), so only a run's first
seconds on a fresh machine are measured in numpy. ``NORMLAB_KERNELS`` decides: ``compiled`` (the
test suite, and anyone who wants bit-identical metrics across runs), ``fallback``, or
``auto`` (the default): compiled if a marker says this machine's kernel cache is built,
else the fallback, while one background process (``python -m normlab.measure.precompile``,
one per machine at a time, behind a lock file) compiles the kernels and writes the marker.
The engine starts that compile at its warm-up, so runs claimed later use the compiled
kernels.

What differs between the two: means, variances and norms are float64 sums taken in a
different order, so they can differ in the last bits (relative 1e-15); percentiles,
median intervals, histograms, saturation, dead units and accuracy are identical (the
same order statistics and the same float64 bucket arithmetic).
"""
from __future__ import annotations

import functools
import hashlib
import os
import platform
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from types import ModuleType

MODE_ENV = "NORMLAB_KERNELS"  # compiled | fallback | auto (default)
MODES = ("auto", "compiled", "fallback")
COMPILE_MODULE = "normlab.measure.precompile"  # python -m ...: the background compile
COMPILE_NICENESS = 19  # the compile gets the CPU time the runs, the dashboard and the browser
#   leave (Linux's scheduler weighs nice 19 at 15 against 1024 for a run at 0; nice 5: 335)

_started = False  # this process already started the background compile


def mode() -> str:
    """``NORMLAB_KERNELS``, checked (a bad value names the good ones)."""
    value = os.environ.get(MODE_ENV, "auto").strip().lower() or "auto"
    if value not in MODES:
        raise ValueError(f"{MODE_ENV}={value!r} is not a kernel mode; use one of "
                         f"{', '.join(MODES)}")
    return value


@functools.cache
def _key() -> str:
    source = Path(__file__).with_name("kernels.py").read_bytes()
    try:
        numba_version = metadata.version("numba")
    except metadata.PackageNotFoundError:
        numba_version = "none"
    return hashlib.sha1(b"\0".join([source, numba_version.encode(), sys.version.encode(),
                                    platform.machine().encode()])).hexdigest()[:16]


def marker() -> Path:
    """The file that says the compiled kernels of this source, numba, Python and machine
    are in numba's cache (next to the cache: ``NUMBA_CACHE_DIR``, else the package's
    ``__pycache__``, else ``~/.cache/normlab``)."""
    name = f"normlab-kernels-{_key()}.ready"
    if os.environ.get("NUMBA_CACHE_DIR"):
        return Path(os.environ["NUMBA_CACHE_DIR"]) / name
    in_tree = Path(__file__).parent / "__pycache__"
    if os.access(in_tree if in_tree.exists() else in_tree.parent, os.W_OK):
        return in_tree / name
    return Path.home() / ".cache" / "normlab" / name


def ready() -> bool:
    """Whether the compiled kernels load from the cache (the marker exists)."""
    return marker().exists()


def current() -> ModuleType:
    """The kernels a new probe uses (see the module docstring); in ``auto`` mode without
    compiled kernels, starts the background compile once per process."""
    chosen = mode()
    if chosen == "compiled" or (chosen == "auto" and ready()):
        from normlab.measure import kernels
        return kernels
    if chosen == "auto":
        start_compile()
    from normlab.measure import fallback
    return fallback


def upgrade(chosen: ModuleType) -> ModuleType:
    """``chosen``, or the compiled kernels if ``chosen`` is the numpy fallback picked in
    ``auto`` mode and the compiled ones have been built since (a stat call otherwise)."""
    if chosen.__name__ != "normlab.measure.fallback" or mode() != "auto" or not ready():
        return chosen
    from normlab.measure import kernels
    return kernels


def start_compile() -> subprocess.Popen | None:
    """Start ``python -m normlab.measure.precompile`` in the background (once per process;
    the child itself exits at once if another compile holds the lock)."""
    global _started
    if _started or ready():
        return None
    _started = True
    root = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ, **{MODE_ENV: "compiled"})
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    try:
        log_file = marker().with_suffix(".log")  # why a compile failed, if one does
        log_file.parent.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", COMPILE_MODULE]
        if shutil.which("nice"):  # the runs training meanwhile, and the first curve, come first
            cmd = ["nice", "-n", str(COMPILE_NICENESS), *cmd]
        with open(log_file, "ab") as log:
            return subprocess.Popen(cmd, cwd=root, env=env, stdin=subprocess.DEVNULL,
                                    stdout=log, stderr=log, start_new_session=True)
    except OSError:  # no process or file to spare: the fallback stays, runs still work
        return None
