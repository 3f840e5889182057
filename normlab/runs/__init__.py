"""Runs: the store that keeps them, the engine that trains them, and how they travel.

``storedb`` (tables, migrations, connections) and ``chunks`` (metrics as compressed
series) underlie ``store``, the one SQLite file of comparisons, runs and metrics;
``engine`` is the background process whose workers train queued runs; ``comparisons``
submits a grid of configs and waits for it (``normlab.compare``); ``exchange`` exports
and imports runs as JSON, Parquet or CSV. Depends on :mod:`normlab.training` and
:mod:`normlab.measure`.
"""
