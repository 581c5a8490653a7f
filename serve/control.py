"""Talking to the Serve controller: submit a Serve config file, read back and change what runs.

Ray Serve's public Python API deploys ``Application`` objects (``serve.run``); deploying a
*config file* (what ``serve deploy``, ``serve run CONFIG`` and KubeRay do, and what keeps
``user_config`` and per-deployment options declarative) goes through the controller client,
which Ray keeps private (the ``serve`` CLI and the dashboard's REST API
call the same method). The private calls themselves sit in ``pixelfleet/ray_private.py``.
"""

from __future__ import annotations

from dataclasses import dataclass

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


@dataclass(frozen=True)
class Replicas:
    """One deployment's replicas as the controller holds them.

    ``min_replicas``: its autoscaling minimum (None: a fixed ``num_replicas``); ``target``: the
    replicas it wants now; ``running``: those in state RUNNING; ``status``: the deployment's
    status (``HEALTHY``, ``UPSCALING``, ``UNHEALTHY``, ...).
    """

    min_replicas: int | None
    target: int
    running: int
    status: str

    @property
    def scaled_to_zero(self) -> bool:
        """May scale to zero (``min_replicas`` 0) and has no running replica now: calling it starts
        one (a cold start), so probes and listings must not."""
        return self.min_replicas == 0 and self.running == 0


def replicas() -> dict[tuple[str, str], Replicas]:
    """``(application, deployment) -> Replicas`` of every deployment, from one call to the
    controller (its serve details, what ``serve status`` and the dashboard read)."""
    views = {}
    for app_name, app in _client().get_serve_details().get("applications", {}).items():
        for name, deployment in (app.get("deployments") or {}).items():
            autoscaling = (deployment.get("deployment_config") or {}).get("autoscaling_config") or None
            views[(app_name, name)] = Replicas(
                min_replicas=autoscaling.get("min_replicas", 1) if autoscaling else None,
                target=int(deployment.get("target_num_replicas") or 0),
                running=sum(replica.get("state") == "RUNNING" for replica in deployment.get("replicas") or []),
                status=str(getattr(deployment.get("status"), "value", deployment.get("status"))),
            )
    return views


def submit(schema: ServeDeploySchema) -> None:
    """Submit ``schema`` declaratively (applications missing from it are deleted).

    Changes to ``user_config``, replica counts and autoscaling of an application whose
    ``import_path``, ``runtime_env`` and ``args`` stay the same are applied to its running
    replicas (``reconfigure``), without restarting them.
    """
    _client().deploy_apps(schema, _blocking=False)
