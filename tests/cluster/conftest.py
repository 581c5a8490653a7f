"""Tests that start a Ray cluster of their own (a head and worker nodes as separate raylets on
this machine). One process holds one Ray, and the integration session holds another, so these
run in a pytest process of their own: ``make test`` runs ``pytest tests/cluster`` after the main
suite (``testpaths`` leaves this folder out). Collected together with other tests (``pytest
tests``), they skip and say so."""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if all(HERE in Path(item.path).parents for item in items):
        return
    skip = pytest.mark.skip(reason="starts a Ray cluster of its own: run alone, `pytest tests/cluster` (make test does)")
    for item in items:
        if HERE in Path(item.path).parents:
            item.add_marker(skip)
