"""The package's shape: public names are never shadowed by modules, the library never
loads Streamlit, and imports point one way (methods ← measure ← training ← runs ← views
← ui) with no cycles."""
from __future__ import annotations

import ast
import importlib
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import normlab

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ["methods", "measure", "training", "runs", "integrations", "views", "ui"]  # lower first


def _library_modules() -> list[str]:
    """Every module of normlab except the Streamlit helpers, ``__main__`` and the optional
    framework integrations (their packages need not be installed)."""
    return [m.name for m in pkgutil.walk_packages(normlab.__path__, "normlab.")
            if not m.name.startswith(("normlab.ui", "normlab.integrations."))
            and m.name != "normlab.__main__"]


def test_library_never_loads_streamlit():
    code = ("import importlib, sys\n"
            f"for name in {_library_modules()!r}:\n"
            "    importlib.import_module(name)\n"
            "import normlab\n"
            "for name in normlab.__all__:\n"
            "    getattr(normlab, name)\n"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] == 'streamlit')\n"
            "assert not bad, bad\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]


def _imports(path: Path, module: str) -> set[str]:
    """The normlab modules ``module`` imports anywhere (top level or inside functions)."""
    found = set()
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("normlab")}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1]
                                + ([base] if base else []))
            if not base.startswith("normlab"):
                continue
            for alias in node.names:  # `from normlab.x import y`: y may be a module
                candidate = f"{base}.{alias.name}"
                found.add(candidate if (ROOT / (candidate.replace(".", "/") + ".py")).exists()
                          else base)
    return found


def _graph() -> dict[str, set[str]]:
    graph = {}
    for path in sorted((ROOT / "normlab").rglob("*.py")):
        rel = path.relative_to(ROOT).with_suffix("")
        name = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        graph[name] = _imports(path, name) - {name}
    return graph


def _layer(module: str) -> int | None:
    parts = module.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 and parts[1] in LAYERS else None


def test_imports_point_one_way():
    wrong = []
    for module, targets in _graph().items():
        own = _layer(module)
        if own is None:  # normlab/__init__, __main__, cli: the top, may use anything
            continue
        wrong += [f"{module} -> {t}" for t in targets
                  if _layer(t) is not None and _layer(t) > own]
    assert not wrong, wrong


def test_no_import_cycles():
    graph = _graph()
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    cycles = []

    def visit(node, stack):
        state[node] = 1
        for nxt in graph.get(node, ()):
            if nxt == "normlab":  # the package's lazy __getattr__ imports nothing eagerly
                continue
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt in graph and not state.get(nxt):
                visit(nxt, stack + [nxt])
        state[node] = 2

    for node in graph:
        if not state.get(node):
            visit(node, [node])
    assert not cycles, cycles


def test_every_subpackage_says_what_it_holds():
    for name in LAYERS:
        doc = importlib.import_module(f"normlab.{name}").__doc__ if name != "ui" else \
            ast.get_docstring(ast.parse((ROOT / "normlab/ui/__init__.py").read_text()))
        assert doc and len(doc.split()) > 25, name


@pytest.fixture()
def no_engine(monkeypatch, tmp_path):
    import normlab.runs.comparisons as comparisons

    monkeypatch.setattr(comparisons, "ensure_engine", lambda *a, **k: None)
    monkeypatch.setenv("NORMLAB_STORE", str(tmp_path / "store.sqlite"))


def test_public_names_survive_importing_every_submodule(no_engine, tmp_path):
    """Importing a submodule binds it on its package: a public function must never be
    replaced by a module of the same name (``normlab.train`` once was)."""
    for name in _library_modules():
        importlib.import_module(name)
    from normlab.runs import exchange

    tiny = normlab.RunConfig(steps=3, width=8, depth=2, eval_interval=2, record_interval=1)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU())
    calls = {
        "RunConfig": lambda f: f(steps=3),
        "ConfigError": lambda f: f({"lr": "must be positive"}),
        "NORMS": None, "NORM_NAMES": None,
        "make_norm": lambda f: f("batch", 4),
        "build_norm": lambda f: f("layer", torch.nn.Linear(4, 4), 4),
        "wrap_layer": lambda f: f("weight", torch.nn.Linear(4, 4)),
        "norms_for": lambda f: f("mlp"),
        "build_model": lambda f: f(tiny, (64,), 10),
        "load_dataset": lambda f: f("moons", n_samples=100),
        "Probe": lambda f: f(model),
        "Trainer": lambda f: f(tiny),
        "train": lambda f: f(tiny),
        "Store": lambda f: f(),
        "submit": lambda f: f([tiny]),
        "compare": lambda f: f(tiny, norms=["none"]),
        "wait": lambda f: f(normlab.compare(tiny, norms=["none"])[0], timeout=0.01),
        "log": lambda f: f(model, name="mine").__enter__().__exit__(None, None, None),
        "read_export": lambda f: f(exchange.export(normlab.Store(), normlab.compare(
            tiny, norms=["none"])[0], tmp_path / "export.json")),
    }
    assert set(normlab.__all__) == set(calls), "a new public name needs a call here"
    for name in normlab.__all__:
        for _ in range(2):
            value = getattr(normlab, name)
            assert not isinstance(value, type(normlab)), f"normlab.{name} is a module"
            if calls[name] is None:
                continue
            try:
                calls[name](value)
            except TimeoutError:  # `wait` on a queued run (no engine here): it was called
                assert name == "wait"
