"""Waiting in tests for the cluster to reach a state (a replica started, a count reached)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import pytest

T = TypeVar("T")


def until(check: Callable[[], T], timeout_s: float, what: str) -> T:
    """Call ``check`` every 0.1 s until it returns something true and return that; fail the
    test with ``what`` after ``timeout_s`` seconds."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    pytest.fail(f"not within {timeout_s:g} s: {what}")
