"""The layout's rules, checked on the source (ast, nothing imported): data flows one way,
`worker` -> `model` -> `schemas`; inside `model/` a subpackage imports only those below it, and
only the commands and the settings sit at its top level; no function in `model/` or `worker/`
is longer than a screen (80 lines) or takes more than 8 parameters. A violation names the file,
the line and the import or function, so the fix is obvious."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Bottom to top: each subpackage of `model` may import itself and those listed before it.
# `settings` is the one top-level module with a place in the order: it only declares the
# programs' settings (read once, by a command), so the library may name their types.
MODEL_LAYERS = (
    "core",
    "net",
    "metrics",
    "data",
    "stores",
    "settings",
    "inference",
    "training",
    "evaluation",
    "lifecycle",
)
# What the top level of `model/` may hold besides its subpackages: the package map, the settings
# and the commands (each parses, reads settings, calls one library function, prints).
MODEL_TOP = {
    "__init__",
    "settings",
    "train",
    "evaluate",
    "export",
    "retrain",
    "promote",
    "label",
    "demo",
}
# Which of our top-level packages each may import (besides itself).
PACKAGES = {
    "schemas": set(),
    "model": {"schemas"},
    "worker": {"model", "schemas"},
    "bench": {"model", "worker", "schemas"},
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[tuple[int, str]]:
    """Absolute module names a file imports, with their line (relative imports resolved)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    here = _module_name(path).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            # `from model import data` imports the subpackage `model.data.mvtec`.
            subs = [f"{base}.{a.name}" for a in node.names if _is_module(f"{base}.{a.name}")]
            found += [(node.lineno, name) for name in subs or [base]]
    return found


def _sources(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def _is_module(name: str) -> bool:
    """Whether a dotted name is one of our modules or packages (not a name inside one)."""
    path = ROOT.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _violations_between_packages() -> list[str]:
    out = []
    for package, allowed in PACKAGES.items():
        for path in _sources(package):
            for line, name in _imports(path):
                top = name.split(".")[0]
                if top in PACKAGES and top != package and top not in allowed:
                    out.append(f"{path.relative_to(ROOT)}:{line} imports {name}")
    return out


def _model_rank(name: str) -> int | None:
    """A `model.<sub>` name's layer, -1 for the top level (commands, settings), None otherwise."""
    parts = name.split(".")
    if parts[0] != "model" or len(parts) < 2:
        return None
    if parts[1] in MODEL_LAYERS:
        return MODEL_LAYERS.index(parts[1])
    return -1 if _is_module(".".join(parts[:2])) else None


def _violations_inside_model() -> list[str]:
    out = []
    for path in _sources("model"):
        rel = path.relative_to(ROOT / "model").parts
        if len(rel) == 1 and rel[0] != "settings.py":
            continue  # the commands may import any subpackage
        mine = MODEL_LAYERS.index(Path(rel[0]).stem)
        for line, name in _imports(path):
            rank = _model_rank(name)
            if rank is None:
                continue
            if rank == -1:
                out.append(f"{path.relative_to(ROOT)}:{line} imports the top-level {name}")
            elif rank > mine:
                out.append(f"{path.relative_to(ROOT)}:{line} imports {name}, a layer above it")
    return out


def test_packages_import_one_way() -> None:
    """worker -> model -> schemas, never back; bench sits on top of all of them."""
    assert _violations_between_packages() == []


def test_model_subpackages_import_only_those_below() -> None:
    assert _violations_inside_model() == []


def test_every_model_subpackage_has_a_place_in_the_order() -> None:
    subpackages = {p.parent.name for p in (ROOT / "model").glob("*/__init__.py")}
    assert subpackages | {"settings"} == set(MODEL_LAYERS)


def test_model_top_level_holds_only_the_map_settings_and_commands() -> None:
    top = {p.stem for p in (ROOT / "model").glob("*.py")}
    assert top - MODEL_TOP == set(), "move library code into the subpackage it belongs to"


def test_every_subpackage_says_what_it_holds_and_may_import() -> None:
    for init in (ROOT / "model").glob("*/__init__.py"):
        doc = ast.get_docstring(ast.parse(init.read_text())) or ""
        assert "Imports:" in doc, f"{init.relative_to(ROOT)} must state what it may import"


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("from model.lifecycle.gate import decide\n", "a layer above it"),
        ("import model.train\n", "top-level model.train"),
        ("from ..stores import records\n", None),
    ],
)
def test_the_rule_catches_an_upward_import(
    tmp_path: Path, source: str, expected: str | None
) -> None:
    """The checker itself: an upward import in a lower layer is reported, a downward one not."""
    fake = tmp_path / "model" / "inference"
    fake.mkdir(parents=True)
    (tmp_path / "model" / "__init__.py").write_text("")
    (tmp_path / "model" / "train.py").write_text("")
    (fake / "__init__.py").write_text('"""Imports: none."""\n')
    (fake / "probe.py").write_text(source)
    for sub in MODEL_LAYERS:
        (tmp_path / "model" / sub).mkdir(exist_ok=True)
        (tmp_path / "model" / sub / "__init__.py").write_text("")
    globals()["ROOT"] = tmp_path
    try:
        found = _violations_inside_model()
    finally:
        globals()["ROOT"] = Path(__file__).resolve().parents[1]
    if expected is None:
        assert found == []
    else:
        assert len(found) == 1 and expected in found[0]


def test_every_package_folder_is_installed() -> None:
    """pyproject.toml lists the packages (one of them lives outside its parent's folder): a new
    subpackage missing there would be left out of the wheel and the container image."""
    tomllib = pytest.importorskip("tomllib")
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(setuptools["packages"])
    folders = {
        _module_name(init)
        for top in ("model", "schemas", "worker")
        for init in (ROOT / top).rglob("__init__.py")
    }
    assert folders - listed == set(), "add these packages to pyproject.toml"
    for package, folder in setuptools.get("package-dir", {}).items():
        assert package in listed and (ROOT / folder / "__init__.py").is_file()


# -- unit size: a function that needs more than a screen, or more than a handful of parameters,
# is several functions (the house rule). `self` and `cls` are not counted.
MAX_LINES = 80
MAX_PARAMS = 8


def _oversized(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    out = []
    for node in ast.walk(tree):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        a = node.args
        params = [p.arg for p in (*a.posonlyargs, *a.args, *a.kwonlyargs)]
        params += [p.arg for p in (a.vararg, a.kwarg) if p is not None]
        params = [p for p in params if p not in ("self", "cls")]
        lines = (node.end_lineno or node.lineno) - node.lineno + 1
        where = f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}:{node.lineno}"
        if lines > MAX_LINES:
            out.append(f"{where} {node.name} is {lines} lines (at most {MAX_LINES})")
        if len(params) > MAX_PARAMS:
            out.append(f"{where} {node.name} takes {len(params)} parameters (at most {MAX_PARAMS})")
    return out


def test_no_function_in_model_or_worker_is_too_long_or_takes_too_many_parameters() -> None:
    found = [v for package in ("model", "worker") for p in _sources(package) for v in _oversized(p)]
    assert not found, "split these into their steps:\n" + "\n".join(found)


def test_the_size_rule_catches_a_long_function_and_a_wide_one(tmp_path: Path) -> None:
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_LINES))
    wide = ", ".join(f"p{i}" for i in range(MAX_PARAMS + 1))
    src = tmp_path / "units.py"
    src.write_text(
        f"def long():\n{body}\n\n\ndef wide({wide}):\n    pass\n\n\n"
        f"class C:\n    def fine(self, {', '.join(f'q{i}' for i in range(MAX_PARAMS))}):\n"
        "        pass\n"
    )
    found = _oversized(src)
    assert len(found) == 2, found
    assert "long is 81 lines" in found[0] and "wide takes 9 parameters" in found[1]
