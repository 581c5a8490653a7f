"""What a replica may use of its machine (shared by the family deployments)."""

from __future__ import annotations

import math
import os

import ray


def replica_threads(requested: int | None = None) -> int:
    """Compute threads for this replica: ``requested``, else its Ray CPUs rounded up (>= 1).

    Ray sets ``OMP_NUM_THREADS=1`` inside replicas, which would leave a replica granted several
    CPUs on one core. Outside Ray (tests, benchmarks) the default is every core.
    """
    if requested:
        return requested
    if not ray.is_initialized():
        return os.cpu_count() or 1
    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU")
    return max(1, math.ceil(cpus)) if cpus else 1
