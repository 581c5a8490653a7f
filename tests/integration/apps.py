"""Small Serve applications deployed beside the session's app, from a config, as an operator would."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from ray.serve.schema import ServeApplicationSchema, ServeDeploySchema


@contextmanager
def beside_session(app: ServeApplicationSchema, timeout_s: float = 300) -> Iterator[ServeDeploySchema]:
    """Deploy ``app`` next to what runs (a declarative submit of everything deployed plus it),
    wait until it runs, and on exit submit what ran before (which deletes ``app`` and any
    application it added). Yields the config that was running before."""
    from pixelfleet.serve import control
    from pixelfleet.serve.runner import wait_until_running

    original = control.deployed_config()
    assert original is not None, "the session's app was not deployed from a config"
    deploy = original.model_copy(deep=True)
    deploy.applications.append(app)
    control.submit(deploy)
    try:
        wait_until_running(app.name, timeout_s)
        yield original
    finally:
        control.submit(original)
