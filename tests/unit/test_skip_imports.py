"""serve/skip_imports.py: the setup hook that keeps pandas and pyarrow out of Serve's processes,
run in fresh interpreters (a module once imported cannot be taken back)."""

from __future__ import annotations

import os
import subprocess
import sys

from pixelfleet.serve.skip_imports import KEEP_ENV

PROBE = """
import importlib.util, sys
from pixelfleet.serve.skip_imports import skip_unused_imports
skip_unused_imports()
from ray import serve  # imports pandas whenever it can
import ray._private.arrow_serialization as arrow  # Ray's Arrow serializers: they import pyarrow whenever they can
if "pyarrow" in sys.modules and sys.modules["pyarrow"] is None:
    arrow._register_custom_datasets_serializers(None)  # returns at once, before it touches the context
loaded = sorted(name for name in ("pandas", "pyarrow") if sys.modules.get(name) is not None)
try:
    import pandas
    blocked = False
except ModuleNotFoundError:
    blocked = True
print(loaded, blocked, importlib.util.find_spec("pyarrow") is None)
"""


def probe(env: dict[str, str]) -> str:
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip()


def test_serve_and_ray_s_serializers_load_without_pandas_and_pyarrow():
    env = {key: value for key, value in os.environ.items() if key != KEEP_ENV}
    assert probe(env) == "[] True True"


def test_the_environment_variable_keeps_them():
    assert probe({**os.environ, KEEP_ENV: "1"}) == "['pandas', 'pyarrow'] False False"
