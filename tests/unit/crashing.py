"""A job context that fails like a lost replica, for the resume tests of batch and video jobs."""

from __future__ import annotations

from pixelfleet.jobs.local import LocalContext
from pixelfleet.models.errors import ModelUnavailable


class CrashingContext(LocalContext):
    """A :class:`LocalContext` whose ``crash_on``-th inference raises 503 ``ModelUnavailable``:
    a service error ends the run, as a replica that died does."""

    def __init__(self, *args, crash_on: int | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.calls, self.crash_on = 0, crash_on

    async def infer(self, family, operation, data, params, model=None):
        self.calls += 1
        if self.calls == self.crash_on:
            raise ModelUnavailable("the variant's replica died")
        return await super().infer(family, operation, data, params, model)
