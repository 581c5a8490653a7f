"""The import rule of the layout: arrows point down (serve -> jobs -> deployments -> models; train ->
models), so no package imports one above it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
#: package folder -> the pixelfleet packages it must not import
FORBIDDEN = {
    "models": ("pixelfleet.serve", "pixelfleet.deployments", "pixelfleet.train"),
    "deployments": ("pixelfleet.serve", "pixelfleet.train"),
    "train": ("pixelfleet.serve", "pixelfleet.deployments"),
    "jobs": ("pixelfleet.serve", "pixelfleet.train"),
}


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_package_imports_one_above_it(package):
    offenders = [
        f"{path.relative_to(REPO)} imports {name}"
        for path in sorted((REPO / package).rglob("*.py"))
        for name in imported_modules(path)
        if name.startswith(FORBIDDEN[package])
    ]
    assert not offenders, offenders


def test_nothing_imports_the_top_level_folders_by_their_bare_names():
    """``serve``, ``train``, ``deployments`` and ``models`` are importable only as pixelfleet.*."""
    bare = ("serve", "train", "deployments", "models", "jobs")
    offenders = [
        f"{path.relative_to(REPO)} imports {name}"
        for folder in (*bare, "tests", "bench")
        for path in sorted((REPO / folder).rglob("*.py"))
        for name in imported_modules(path)
        if name.split(".")[0] in bare
    ]
    assert not offenders, offenders


PRIVATE_RAY = ("serve._private", "_get_global_client", "_get_serve_request_context", "_private.api")


def test_private_ray_calls_stay_in_one_module():
    """Every private Ray Serve call of pixelfleet lives in pixelfleet/ray_private.py."""
    offenders = [
        f"{path.relative_to(REPO)}: {name}"
        for folder in ("serve", "jobs", "deployments", "models", "train", "pixelfleet")
        for path in sorted((REPO / folder).rglob("*.py"))
        if path.name != "ray_private.py"
        for name in PRIVATE_RAY
        if name in path.read_text()
    ]
    assert not offenders, offenders
