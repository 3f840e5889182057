"""Test-suite settings: engines started by the tests stop when the test process dies
(``normlab.runs.engine.WATCH_ENV``), so a killed pytest leaves no engine behind."""
import os

os.environ.setdefault("NORMLAB_ENGINE_WATCH", "1")
