"""Adding and removing variants of a running app, without restarting any other replica.

A Serve application restarts every replica when its ``args`` change, so a variant added at run
time is a Serve application of its own (``<app>-<family>-<variant>``, one deployment, no HTTP
route) that the ingress calls by handle; the config's variants stay where they are. Removing an
added variant deletes its application; removing a variant of the config takes it out of the
ingress's routing (its deployment keeps its replicas until the config drops it).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from typing import TYPE_CHECKING

from pydantic import ValidationError
from ray.serve.schema import ApplicationStatus, DeploymentSchema, ServeApplicationSchema, ServeDeploySchema

from pixelfleet.deployments.spec import deployment_name
from pixelfleet.models.errors import Conflict, Unprocessable
from pixelfleet.serve.errors import describe_validation
from pixelfleet.serve.traffic import AddedVariant, FamilyTraffic

if TYPE_CHECKING:
    from pixelfleet.serve.config import AppConfig
    from pixelfleet.serve.ingress import Ingress

DEPLOY_TIMEOUT_S = 600.0
logger = logging.getLogger("ray.serve")


def variant_app_name(app: str, family: str, variant: str) -> str:
    """The Serve application of a variant added at run time."""
    return f"{app}-{family}-{variant}"


def variant_config_model(ingress: "Ingress", family: str):
    """The pydantic model of one variant's config block in ``family``."""
    annotation = ingress.families[family].spec.config.model_fields["variants"].annotation
    return annotation.__args__[1]  # dict[str, VariantModel]


def variant_app_schema(app: str, app_config: "AppConfig", family: str, variant: str, config: dict, deployment: dict) -> ServeApplicationSchema:
    """The Serve config of the application that holds a variant added to application ``app``."""
    options = {"name": deployment_name(family, variant), **deployment}
    return ServeApplicationSchema(
        name=variant_app_name(app, family, variant),
        route_prefix=None,
        import_path="pixelfleet.serve.app:build_variant_app",
        args={"family": family, "kind": app_config.families[family].kind, "variant": variant, "config": config,
              "limits": app_config.limits.model_dump()},  # fmt: skip
        deployments=[DeploymentSchema.model_validate(options)],
        runtime_env={"env_vars": {"HF_HUB_OFFLINE": "1"}},
    )


async def _wait_running(app: str, timeout_s: float) -> None:
    from ray import serve

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = (await asyncio.to_thread(serve.status)).applications.get(app)
        if status is not None and status.status == ApplicationStatus.RUNNING:
            return
        if status is not None and status.status in (ApplicationStatus.DEPLOY_FAILED, ApplicationStatus.UNHEALTHY):
            logger.warning("variant application %s failed to start: %s", app, status.message)  # a traceback: logs only
            raise Unprocessable(f"variant application {app} failed to start (its replica could not load the variant; see the Serve logs)")
        await asyncio.sleep(0.5)
    raise Unprocessable(f"variant application {app} was not running after {timeout_s:.0f} s")


#: What a caller may set of an added variant's deployment: replicas and resources, never its
#: runtime environment (pip packages, env vars, interpreter: code execution on the cluster).
DEPLOYMENT_OPTIONS = {"num_replicas", "max_ongoing_requests", "max_queued_requests", "autoscaling_config", "ray_actor_options"}
ACTOR_OPTIONS = {"num_cpus", "num_gpus", "memory"}
VARIANT_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,47}$")


def _deployment_options(deployment: dict) -> dict:
    """``deployment`` if it sets only replicas and resources; raises Unprocessable otherwise."""
    unknown = set(deployment) - DEPLOYMENT_OPTIONS
    actor = deployment.get("ray_actor_options") or {}
    if not isinstance(actor, dict):
        raise Unprocessable("deployment.ray_actor_options must be a mapping")
    unknown |= {f"ray_actor_options.{key}" for key in set(actor) - ACTOR_OPTIONS}
    if unknown:
        raise Unprocessable(f"deployment options not allowed here: {', '.join(sorted(unknown))}; allowed: "
                            f"{', '.join(sorted(DEPLOYMENT_OPTIONS))}, ray_actor_options.{{{','.join(sorted(ACTOR_OPTIONS))}}}")  # fmt: skip
    return deployment


async def add_variant(ingress: "Ingress", family: str, variant: str, config: dict, deployment: dict) -> dict:
    """Deploy a new variant of ``family`` at weight 0 and add it to the routing of every ingress replica.

    Raises:
        NotFound: no such family. Conflict: the variant exists. Unprocessable: a bad name, config
            or deployment option, or its replica failed to start (its application is then
            deleted again).
    """
    serving = ingress.family(family)
    if not VARIANT_NAME.match(variant):
        raise Unprocessable(f"variant name {variant!r}: lowercase letters, digits, '-' and '_', 48 at most")
    if variant in serving.variants or variant in serving.config.variants:
        raise Conflict(f"{family} already has a variant {variant!r}")
    try:
        validated = variant_config_model(ingress, family).model_validate(config)
        serving.spec.config.model_validate({"default": variant, "variants": {variant: config}})
        options = DeploymentSchema.model_validate({"name": deployment_name(family, variant), **_deployment_options(deployment)})
    except ValidationError as err:
        raise Unprocessable(describe_validation(err.errors())) from None
    app_schema = variant_app_schema(
        ingress.app_name, ingress.config, family, variant, validated.model_dump(mode="json"), options.model_dump(exclude_unset=True, exclude={"name"})
    )

    def deploy(schema: ServeDeploySchema) -> None:
        if any(a.name == app_schema.name for a in schema.applications):
            raise Conflict(f"an application {app_schema.name} is already deployed")
        parent = ingress.own_app(schema).runtime_env or {}  # the variant's replicas import what the app's do
        env_vars = {**(parent.get("env_vars") or {}), **app_schema.runtime_env["env_vars"]}
        app_schema.runtime_env = {**parent, "env_vars": env_vars}
        schema.applications.append(app_schema)

    if not await ingress.change_deployed(deploy):
        raise Unprocessable("variants can be added only to an app deployed from a config (pixelfleet up, serve deploy, KubeRay)")
    try:
        await _wait_running(app_schema.name, DEPLOY_TIMEOUT_S)
    except (Unprocessable, asyncio.CancelledError):  # failed, or the caller went away: take it back
        await ingress.change_deployed(lambda schema: _drop_app(schema, app_schema.name))
        raise

    def add(state) -> None:
        state.added.setdefault(family, {})[variant] = AddedVariant(config=validated.model_dump(mode="json"), deployment=deployment, app=app_schema.name)
        traffic = state.families.get(family) or ingress.families[family].traffic
        state.families[family] = FamilyTraffic(weights={**traffic.weights, variant: 0.0}, shadow=traffic.shadow)

    await ingress.commit(add)
    return {"family": family, "variant": variant, "app": app_schema.name, "traffic": ingress.traffic()["families"][family]}


def _drop_app(schema: ServeDeploySchema, name: str) -> None:
    schema.applications = [a for a in schema.applications if a.name != name]


async def remove_variant(ingress: "Ingress", family: str, variant: str) -> dict:
    """Take ``variant`` out of service: delete its application (an added variant) or take it out
    of routing and scale its deployment to zero (a variant of the config).

    Raises:
        NotFound: no such family. Unprocessable: an unknown variant, or one that still has
            traffic or a shadow share.
    """
    ingress.family(family)
    removed: dict = {}

    def remove(state) -> None:  # under the change lock, against the newest traffic
        serving = ingress.families[family]
        if variant not in serving.variants:
            raise Unprocessable(f"{family} has no variant {variant!r}")
        if serving.traffic.weights.get(variant, 0) > 0 or variant in serving.traffic.shadow:
            raise Unprocessable(f"move {family}/{variant}'s traffic and shadow share to other variants first")
        removed["added"] = state.added.get(family, {}).pop(variant, None)
        if removed["added"] is None:
            state.removed.setdefault(family, []).append(variant)
        traffic = state.families.get(family) or serving.traffic
        state.families[family] = FamilyTraffic(weights={k: w for k, w in traffic.weights.items() if k != variant}, shadow=traffic.shadow)

    await ingress.commit(remove)
    added = removed["added"]
    if added is not None:
        await ingress.change_deployed(lambda schema: _drop_app(schema, added.app))
    else:
        await ingress.change_deployed(lambda schema: scale_to_zero(schema, ingress.app_name, deployment_name(family, variant)))
    return {"family": family, "variant": variant, "removed": True, "traffic": ingress.traffic()["families"][family]}


SCALED_TO_ZERO = {"min_replicas": 0, "initial_replicas": 0, "max_replicas": 1, "downscale_delay_s": 0.0, "downscale_to_zero_delay_s": 0.0}


def scale_to_zero(deployed: ServeDeploySchema, app_name: str, name: str) -> None:
    """Let deployment ``name`` of ``app_name`` scale to zero replicas (it gets no traffic)."""
    app = next((a for a in deployed.applications if a.name == app_name), None)
    if app is None:
        return
    options = next((d for d in app.deployments if d.name == name), None)
    data = options.model_dump(exclude_unset=True) if options is not None else {"name": name}
    data.pop("num_replicas", None)
    data["autoscaling_config"] = SCALED_TO_ZERO
    app.deployments = [d for d in app.deployments if d.name != name] + [DeploymentSchema.model_validate(data)]
