"""Keep pandas and pyarrow out of the processes of a local Serve app (``pixelfleet up``).

Ray imports both whenever they are installed, though a Serve app without Ray Data uses neither:
Serve imports pandas only to register a JSON encoder for ``pandas.DataFrame`` responses
(``ray/serve/_private/utils.py``), and each worker imports pyarrow when it first deserializes an
object, to register Ray Data's Arrow serializers (``ray/_private/arrow_serialization.py``). Together
they take ~30 MiB of each process's proportional memory (PSS, the measure of issue 16; 65 MiB of
RSS for ``from ray import serve`` alone: 179 -> 114 MiB) in each of the app's processes: the
Serve controller, the HTTP proxy, every replica, and ``up``'s driver (``serve/cli.py`` calls
:func:`skip_unused_imports` there itself). BENCHMARKS.md, "idle memory". They stay installed because Ray
Train and Ray Data need them; pixelfleet's deployments never touch a DataFrame or an Arrow table
(job storage on fsspec's pyarrow-backed ``hdfs://`` would: it needs ``PIXELFLEET_IMPORT_PANDAS=1``).

:func:`skip_unused_imports` is Ray's ``worker_process_setup_hook`` for the job that
``pixelfleet up`` starts (:data:`SETUP_HOOK`): it runs in each of that job's worker processes
before any task, so before Serve is imported there. Other jobs on the same cluster (a training
run that joins) keep pandas. A family that needs pandas or pyarrow in its replicas sets
``PIXELFLEET_IMPORT_PANDAS=1`` in its app's ``runtime_env.env_vars`` (or in ``up``'s
environment, for every process). A Serve app deployed by config to a cluster of its own
(``serve deploy``, KubeRay's RayService) runs without the hook and imports both as Ray does.
"""

from __future__ import annotations

import os
import sys

#: modules that Serve imports only when they are installed and pixelfleet's Serve processes never use
UNUSED = ("pandas", "pyarrow")
#: the environment variable that keeps them importable (``1``)
KEEP_ENV = "PIXELFLEET_IMPORT_PANDAS"
#: ``ray.init(runtime_env={"worker_process_setup_hook": SETUP_HOOK})``
SETUP_HOOK = "pixelfleet.serve.skip_imports.skip_unused_imports"


def skip_unused_imports() -> None:
    """Make ``import pandas`` and ``import pyarrow`` raise ModuleNotFoundError in this process
    (``sys.modules[name] = None``, the import system's documented way to block a module), unless
    one is imported already or ``PIXELFLEET_IMPORT_PANDAS=1``. Libraries that import them
    optionally (Serve, Ray's serializers, transformers) go on without them;
    ``importlib.util.find_spec`` returns None for them. Raises nothing."""
    if os.environ.get(KEEP_ENV) == "1":
        return
    for name in UNUSED:
        sys.modules.setdefault(name, None)  # type: ignore[arg-type]
