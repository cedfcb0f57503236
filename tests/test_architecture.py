"""The house rules, checked on the source: imports point one way, nothing below ``flows/`` imports
Prefect, every package says what it owns, and no module grows past ~500 lines without a reason.

Imports are read with ``ast`` from every module (imports inside functions included), so a lazy
import cannot slip past the rule.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("flows", "pipeline", "planner", "classifiers", "warehouse", "demo")
MAX_LINES = 500
LONG_REASON = "This module is long because"

# Which project packages each package may import (besides itself).
ALLOWED: dict[str, set[str]] = {
    "flows": {"pipeline", "planner", "classifiers", "warehouse", "demo"},
    "pipeline": {"planner", "classifiers", "warehouse", "demo"},
    "planner": set(),
    "classifiers": set(),
    "warehouse": set(),
    "demo": set(),
}
PLANNER_ROOT = {"errors", "settings", "messages", "stats", "redact"}
# Rooms of planner/, lowest first: each may import the root modules and what is listed.
ROOMS: dict[str, set[str]] = {
    "models": set(),
    "replay": {"models"},
    "evaluate": {"models"},
    "runs": {"replay.wire"},
    "report": {"evaluate", "runs"},
}


def modules() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))


def imported(path: Path) -> set[str]:
    """Absolute module names this file imports (relative imports resolved)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    inside = path.is_relative_to(ROOT)
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1]) if inside else ""
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            out.add(module)
            out.update(f"{module}.{a.name}" for a in node.names)  # `from planner import x`
    return out


def owner(path: Path) -> str:
    return path.relative_to(ROOT).parts[0]


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_point_one_way(path: Path) -> None:
    pkg = owner(path)
    names = imported(path)
    tops = {n.split(".")[0] for n in names}
    if pkg != "flows":
        assert not {"prefect", "prefect_dask"} & tops, f"{path}: Prefect is for flows/ only"
    foreign = (tops & set(PACKAGES)) - {pkg} - ALLOWED[pkg]
    assert not foreign, f"{path}: {pkg}/ may not import {sorted(foreign)}"


def _room(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "planner" or len(parts) < 2:
        return None
    return parts[1] if parts[1] in ROOMS else "root"


@pytest.mark.parametrize(
    "path", [p for p in modules() if owner(p) == "planner"], ids=lambda p: p.name
)
def test_planner_rooms_import_only_lower_rooms(path: Path) -> None:
    here = path.relative_to(ROOT).with_suffix("").parts
    room = here[1] if len(here) > 2 and here[1] in ROOMS else "root"
    allowed = {"root", room} | ({r.split(".")[0] for r in ROOMS[room]} if room != "root" else set())
    for name in imported(path):
        target = _room(name)
        if target is None or name == "planner":
            continue
        if target == "root":
            parts = name.split(".")
            assert parts[1] in PLANNER_ROOT or parts[1] in ROOMS, f"{path}: unknown {name}"
            continue
        assert target in allowed, f"{path} ({room}) may not import {name}"
        narrow = {r for r in ROOMS.get(room, set()) if "." in r}
        if target != room and any(r.startswith(target + ".") for r in narrow):
            assert any(name.startswith(f"planner.{r}") for r in narrow), f"{path}: {name}"


def test_the_rule_catches_a_violation(tmp_path: Path) -> None:
    """The checker itself can fail: a Prefect import inside a function is seen."""
    sample = tmp_path / "x.py"
    sample.write_text("def f():\n    from prefect import flow\n    import warehouse.ingest\n")
    assert {"prefect", "warehouse.ingest"} <= imported(sample)


@pytest.mark.parametrize(
    "init",
    sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("__init__.py")),
    ids=lambda p: str(p.relative_to(ROOT)),
)
def test_every_package_says_what_it_owns(init: Path) -> None:
    doc = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8")))
    assert doc and len(doc) > 80, f"{init}: a docstring saying what the package owns"
    if init.parent.name in (*PACKAGES[1:], *ROOMS) and init.parent.name != "classifiers":
        assert "import" in doc, f"{init}: say what it may import"


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_modules_stay_small_or_say_why(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    if text.count("\n") <= MAX_LINES:
        return
    doc = ast.get_docstring(ast.parse(text)) or ""
    assert LONG_REASON in doc, f"{path}: {text.count(chr(10))} lines; split it or say why"
