"""Adding and removing variants of a running app, without restarting any other replica.

A Serve application restarts every replica when its ``args`` change, so a variant added at run
time is a Serve application of its own (``<app>-<family>-<variant>``, one deployment, no HTTP
route) that the ingress calls by handle; the config's variants stay where they are. Removing an
added variant deletes its application; removing a variant of the config takes it out of the
ingress's routing (its deployment keeps its replicas until the config drops it).
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from pydantic import ValidationError
from ray.serve.schema import ApplicationStatus, DeploymentSchema, ServeApplicationSchema

from pixelfleet.deployments.spec import deployment_name
from pixelfleet.models.errors import Conflict, Unprocessable
from pixelfleet.serve import control
from pixelfleet.serve.errors import describe_validation
from pixelfleet.serve.traffic import AddedVariant, FamilyTraffic

if TYPE_CHECKING:
    from pixelfleet.serve.config import AppConfig
    from pixelfleet.serve.ingress import Ingress

DEPLOY_TIMEOUT_S = 600.0


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
            raise Unprocessable(f"variant application {app} failed to start: {status.message[-400:]}")
        await asyncio.sleep(0.5)
    raise Unprocessable(f"variant application {app} was not running after {timeout_s:.0f} s")


async def add_variant(ingress: "Ingress", family: str, variant: str, config: dict, deployment: dict) -> dict:
    """Deploy a new variant of ``family`` at weight 0 and add it to the routing of every ingress replica.

    Raises:
        NotFound: no such family. Conflict: the variant exists. Unprocessable: a bad name or config,
            or its replica failed to start (its application is then deleted again).
    """
    serving = ingress.family(family)
    if variant in serving.variants or variant in serving.config.variants:
        raise Conflict(f"{family} already has a variant {variant!r}")
    try:
        validated = variant_config_model(ingress, family).model_validate(config)
        serving.spec.config.model_validate({"default": variant, "variants": {variant: config}})
        options = DeploymentSchema.model_validate({"name": deployment_name(family, variant), **deployment})
    except ValidationError as err:
        raise Unprocessable(describe_validation(err.errors())) from None
    schema_app = variant_app_schema(
        ingress.app_name, ingress.config, family, variant, validated.model_dump(mode="json"), options.model_dump(exclude_unset=True, exclude={"name"})
    )
    deployed = await asyncio.to_thread(control.deployed_config)
    if deployed is None:
        raise Unprocessable("variants can be added only to an app deployed from a config (pixelfleet up, serve deploy, KubeRay)")
    deployed.applications = [a for a in deployed.applications if a.name != schema_app.name] + [schema_app]
    await asyncio.to_thread(control.submit, deployed)
    try:
        await _wait_running(schema_app.name, DEPLOY_TIMEOUT_S)
    except Unprocessable:
        deployed.applications = [a for a in deployed.applications if a.name != schema_app.name]
        await asyncio.to_thread(control.submit, deployed)
        raise
    state = ingress.state.model_copy(deep=True)
    state.added.setdefault(family, {})[variant] = AddedVariant(config=validated.model_dump(mode="json"), deployment=deployment, app=schema_app.name)
    traffic = state.families.get(family) or serving.traffic
    state.families[family] = FamilyTraffic(weights={**traffic.weights, variant: 0.0}, shadow=traffic.shadow)
    await ingress.commit(state)
    return {"family": family, "variant": variant, "app": schema_app.name, "traffic": ingress.traffic()["families"][family]}


async def remove_variant(ingress: "Ingress", family: str, variant: str) -> dict:
    """Take ``variant`` out of service: delete its application (an added variant) or take it out
    of routing (a variant of the config).

    Raises:
        NotFound: no such family. Unprocessable: an unknown variant, or one that still has
            traffic, a shadow share, or is the family's default.
    """
    serving = ingress.family(family)
    if variant not in serving.variants:
        raise Unprocessable(f"{family} has no variant {variant!r}")
    if serving.traffic.weights.get(variant, 0) > 0 or variant in serving.traffic.shadow:
        raise Unprocessable(f"move {family}/{variant}'s traffic and shadow share to other variants first")
    state = ingress.state.model_copy(deep=True)
    added = state.added.get(family, {}).pop(variant, None)
    if added is None:
        state.removed.setdefault(family, []).append(variant)
    traffic = state.families.get(family) or serving.traffic
    state.families[family] = FamilyTraffic(weights={k: w for k, w in traffic.weights.items() if k != variant}, shadow=traffic.shadow)
    await ingress.commit(state)
    deployed = await asyncio.to_thread(control.deployed_config)
    if deployed is not None:
        if added is not None:
            deployed.applications = [a for a in deployed.applications if a.name != added.app]
        else:
            _scale_to_zero(deployed, ingress.app_name, deployment_name(family, variant))
        await asyncio.to_thread(control.submit, deployed)
    return {"family": family, "variant": variant, "removed": True, "traffic": ingress.traffic()["families"][family]}


SCALED_TO_ZERO = {"min_replicas": 0, "initial_replicas": 0, "max_replicas": 1, "downscale_delay_s": 0.0, "downscale_to_zero_delay_s": 0.0}


def _scale_to_zero(deployed, app_name: str, name: str) -> None:
    """Let deployment ``name`` of ``app_name`` scale to zero replicas (it gets no traffic)."""
    app = next(a for a in deployed.applications if a.name == app_name)
    options = next((d for d in app.deployments if d.name == name), None)
    data = options.model_dump(exclude_unset=True) if options is not None else {"name": name}
    data.pop("num_replicas", None)
    data["autoscaling_config"] = SCALED_TO_ZERO
    app.deployments = [d for d in app.deployments if d.name != name] + [DeploymentSchema.model_validate(data)]
