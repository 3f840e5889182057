"""Test-suite settings: engines started by the tests stop when the test process dies
(``normlab.runs.engine.WATCH_ENV``), so a killed pytest leaves no engine behind; probes
use the compiled kernels (``NORMLAB_KERNELS``, :mod:`normlab.measure.backends`), so runs
compared for bit-identical metrics use one implementation whatever the cache holds (the
browser test's cold server and test_backends.py try the automatic choice)."""
import os

os.environ.setdefault("NORMLAB_ENGINE_WATCH", "1")
os.environ.setdefault("NORMLAB_KERNELS", "compiled")
