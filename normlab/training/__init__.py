"""Training: the run configuration, datasets, models and the instrumented trainer.

``config`` is the frozen ``RunConfig`` (a run's identity) and its validation; ``data`` and
``datafiles`` the datasets (bundled, generated, or read from the user's files — never
downloaded); ``models`` the MLP and CNN built around a norm name; ``trainer`` the seeded
CPU training loop that yields record batches through a probe. Knows nothing of the store
or the dashboard. Depends on :mod:`normlab.methods` and :mod:`normlab.measure`.
"""
