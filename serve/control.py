"""Talking to the Serve controller: submit a Serve config file, read back and change what runs.

Ray Serve's public Python API deploys ``Application`` objects (``serve.run``); deploying a
*config file* (what ``serve deploy``, ``serve run CONFIG`` and KubeRay do, and what keeps
``user_config`` and per-deployment options declarative) goes through the controller client,
which Ray keeps private (the ``serve`` CLI and the dashboard's REST API
call the same method). The private calls themselves sit in ``pixelfleet/ray_private.py``.
"""

from __future__ import annotations

from ray.serve.schema import ServeApplicationSchema, ServeDeploySchema


from pixelfleet.ray_private import controller_client as _client
from pixelfleet.ray_private import serve_start


def start_and_deploy(schema: ServeDeploySchema) -> None:
    """Start Serve with the config's HTTP options and submit the whole config (what
    ``serve run CONFIG`` does), without waiting for the applications to run."""
    client = serve_start(schema.http_options.model_dump(), schema.proxy_location)
    client.deploy_apps(schema, _blocking=False)


def deployed_config() -> ServeDeploySchema | None:
    """The config of every application as last submitted, or None where an application was
    deployed from Python (``serve.run``) and has no config to resubmit."""
    details = _client().get_serve_details()
    applications = []
    for app in details.get("applications", {}).values():
        if app.get("status") == "DELETING":  # on its way out: not part of what is deployed
            continue
        config = app.get("deployed_app_config")
        if config is None:
            return None
        applications.append(ServeApplicationSchema.model_validate(config))
    return ServeDeploySchema(
        http_options=details.get("http_options") or {},
        proxy_location=details.get("proxy_location") or "EveryNode",
        applications=applications,
    )


def submit(schema: ServeDeploySchema) -> None:
    """Submit ``schema`` declaratively (applications missing from it are deleted).

    Changes to ``user_config``, replica counts and autoscaling of an application whose
    ``import_path``, ``runtime_env`` and ``args`` stay the same are applied to its running
    replicas (``reconfigure``), without restarting them.
    """
    _client().deploy_apps(schema, _blocking=False)
