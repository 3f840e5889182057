"""Pieces of ``python -m normlab`` that are not commands: what ``run --help`` says about
each config field (its meaning from :class:`~normlab.training.config.RunConfig`'s comments,
the values it accepts, its default) and the progress bars ``run`` draws.
"""
from __future__ import annotations

import re
import sys

from normlab.training.config import DEFAULTS, FIELD_TYPES, RunConfig

# What ``run --help`` says a field accepts (choice fields list their values from the config).
_RANGES = {
    "depth": "a whole number 1..64", "width": "a whole number 1..4096",
    "steps": "a whole number 1..1,000,000", "batch_size": "a whole number ≥ 1",
    "eval_interval": "a whole number ≥ 1", "record_interval": "a whole number ≥ 1",
    "n_samples": "a whole number ≥ 1", "seed": "a whole number ≥ 0",
    "num_groups": "0 (auto) or a whole number dividing width",
    "group_size": "0 (auto) or a whole number dividing width",
    "lr": "a number > 0", "init_scale": "a number > 0", "eps": "a number > 0",
    "cosine_scale": "a number > 0", "rmax": "a number ≥ 1", "weight_decay": "a number ≥ 0",
    "noise": "a number ≥ 0", "dmax": "a number ≥ 0", "momentum": "a number in (0, 1]",
    "val_fraction": "a number in (0, 1)",
}


def field_help(name: str) -> str:
    """``run --help`` for one config field: its meaning, the values it accepts, its default."""
    from normlab.methods.specs import NORM_NAMES
    from normlab.training import config as c

    choices = {"dataset": (*c.BUILTIN_DATASETS, "idx:FOLDER", "csv:FILE"),
               "model": c.MODELS, "activation": c.ACTIVATIONS, "init": c.INITS,
               "optimizer": c.OPTIMIZERS, "norm": NORM_NAMES,
               "norm_position": c.NORM_POSITIONS, "weight_init": c.WEIGHT_INITS}
    meaning = _field_comments().get(name, "")
    if name in choices and " | " in meaning:  # the comment lists the choices, explained
        allowed, meaning = meaning, ""
    elif name in choices:
        allowed = "one of " + ", ".join(choices[name])
    elif FIELD_TYPES[name] == "bool":
        allowed = "1 or 0 (true/false)"
    else:
        allowed = _RANGES.get(name, f"a {FIELD_TYPES[name]}")
    meaning = f"{meaning}. " if meaning else ""
    return f"{meaning}Allowed: {allowed}. Default: {getattr(DEFAULTS, name)}"


def _field_comments() -> dict[str, str]:
    """Each RunConfig field's trailing comment (its meaning), read from the source."""
    import inspect

    out, last = {}, None
    for line in inspect.getsource(RunConfig).splitlines():
        if m := re.match(r"\s+(\w+): \w+ = [^#]*#\s*(.+)$", line):
            last = m.group(1)
            out[last] = m.group(2).strip()
        elif last and (m := re.match(r"\s+#\s{2,}(.+)$", line)):  # a continued comment
            out[last] += " " + m.group(1).strip()
        else:
            last = None
    out.pop("norm", None)  # "a name from normlab.NORMS": the list itself says more
    return {k: v.replace("%", "%%") for k, v in out.items()}


def _int(value) -> int:
    """A stored count as an int (0 when missing or not a number)."""
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        return 0


def _missing(value) -> bool:
    """None, NaN or pandas' NA (whose comparisons raise when made a bool)."""
    if value is None:
        return True
    try:
        return bool(value != value)
    except TypeError:
        return True


class ProgressBars:
    """One tqdm bar per run, fed from the store's progress columns; a grid of more than
    ``MANY_RUNS`` runs gets one overall bar (steps of all runs, finished ones counted).

    A bar's clock starts when its run leaves the queue, so the rate (steps/s) and the
    time left count training, not the wait for a free worker."""

    MANY_RUNS = 24

    def __init__(self, run_ids, configs, grid):
        from tqdm import tqdm

        self.bars = {}
        self.total = None
        self.started: set[str] = set()  # runs (or "all") whose bar's clock runs
        if len(run_ids) > self.MANY_RUNS:
            self.total = tqdm(total=sum(c.steps for c in configs), unit="step",
                              desc=f"{len(run_ids)} runs", dynamic_ncols=True)
            return
        for i, (rid, cfg) in enumerate(zip(run_ids, configs)):
            label = " ".join(f"{k}={getattr(cfg, k)}" for k in grid) or cfg.norm
            self.bars[rid] = tqdm(total=cfg.steps, desc=f"{rid} {label}", position=i,
                                  unit="step", leave=True, dynamic_ncols=True)

    def _advance(self, key: str, bar, started_at, n: int) -> None:
        """Move ``bar`` to ``n`` steps; its clock starts at ``started_at`` (the time the
        run left the queue, as the store keeps it; None or NaN while queued)."""
        if key not in self.started:
            if _missing(started_at):
                bar.refresh()
                return
            self.started.add(key)
            bar.reset(total=bar.total)  # tqdm's clock is time.time(), as the store's
            bar.start_t = bar.last_print_t = min(float(started_at), bar.start_t)
        if n > bar.n:
            bar.update(n - bar.n)
        elif n < bar.n:  # a run restarted from 0 (interrupted, re-run)
            bar.n = n
        bar.refresh()

    def update(self, runs) -> None:
        if self.total is not None:
            from normlab.runs.store import FINISHED

            finished = runs["status"].isin(FINISHED)
            steps = runs["step"].fillna(0).astype(int).where(~finished, runs["total_steps"])
            counts = runs["status"].value_counts()
            self.total.set_postfix_str(", ".join(f"{n} {s}" for s, n in counts.items()),
                                       refresh=False)
            self._advance("all", self.total, runs["started_at"].min(),
                          int(steps.fillna(0).sum()))
            return
        for row in runs.itertuples():
            bar = self.bars.get(row.id)
            if bar is not None:
                bar.set_postfix_str(row.status, refresh=False)
                self._advance(row.id, bar, row.started_at, _int(row.step))

    def note(self, text: str) -> None:
        from tqdm import tqdm

        tqdm.write(f"normlab run: {text}", file=sys.stderr)

    def close(self) -> None:
        if self.total is not None:
            self.total.close()
        for bar in self.bars.values():
            bar.close()
