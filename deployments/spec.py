"""The contract between a model family and the graph: what a family package exports.

A family is one package in ``deployments/`` (or any importable module) with a module attribute
``SPEC``, a :class:`FamilySpec`. It names the family's config model, its deployment class, its
operations and how two answers of its variants are compared (shadow traffic). The graph
(``serve/``) reads nothing else of the family: the REST routes, the OpenAPI schema, the Open
Inference Protocol v2 model, the handle methods and the A/B split all come from the spec.

Families are found by name through the ``pixelfleet.families`` entry points (``pyproject.toml``)
or, for a plug-in that is not installed as a distribution, by ``kind: "package.module:SPEC"`` in
the config (the test-only family in ``tests/families/`` is served that way).
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, Callable, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator
from ray.serve import Deployment

from pixelfleet.deployments import telemetry
from pixelfleet.deployments.telemetry import CallContext

ENTRY_POINT_GROUP = "pixelfleet.families"


class Strict(BaseModel):
    """Base of every config model: unknown fields are errors, so a typo fails the deploy."""

    model_config = ConfigDict(extra="forbid")


class Limits(Strict):
    """What one request may carry; over a limit answers 413. The ingress checks the body's bytes,
    the family replicas the pixels (from the image header, before decoding)."""

    max_body_bytes: int = Field(32 * 1024 * 1024, gt=0, description="request body, bytes")
    max_pixels: int = Field(16_000_000, gt=0, description="decoded image width x height, pixels")
    max_output_pixels: int = Field(64_000_000, gt=0, description="output image width x height, pixels")


def _is_variant_name(name: str) -> bool:
    return bool(name) and name.replace("-", "").replace("_", "").isalnum() and len(name) <= 48


class FamilyConfig(Strict):
    """The config block of one family (``families.<name>`` in the app's ``args``).

    Each family subclasses it with its own ``variants`` type. ``traffic`` holds the A/B weights over
    the variants (default: everything to ``default``), ``shadow`` the fraction of requests copied
    to a shadow variant after the primary has answered.
    """

    kind: str = Field(description="the family plug-in: an entry-point name (superres, ocr) or 'module:SPEC'")
    default: str = Field(description="the variant that gets every request when no traffic weights are set")
    variants: dict[str, Any]
    traffic: dict[str, float] | None = Field(None, description="A/B weights per variant (>= 0, sum > 0)")
    shadow: dict[str, float] = Field(default_factory=dict, description="variant -> fraction in (0, 1] of requests copied to it")
    timeout_s: float = Field(
        300.0, gt=0, le=3600,
        description="seconds a request may take in the family's replicas; later it answers 504 and its work is cancelled",
    )  # fmt: skip

    @model_validator(mode="after")
    def _check_names(self) -> "FamilyConfig":
        if self.default not in self.variants:
            raise ValueError(f"default {self.default!r} is not among the variants {sorted(self.variants)}")
        for name in self.variants:
            if not _is_variant_name(name):
                raise ValueError(f"variant name {name!r} may hold only letters, digits, '-' and '_' (48 at most)")
        check_traffic(self.traffic, self.shadow, set(self.variants))
        return self

    def weights(self) -> dict[str, float]:
        """The A/B weights in force from the config alone."""
        return dict(self.traffic) if self.traffic else {self.default: 1.0}


def check_traffic(weights: dict[str, float] | None, shadow: dict[str, float], variants: set[str]) -> None:
    """Validate A/B weights and shadow fractions against the variants that exist.

    Raises:
        ValueError: an unknown variant, a weight that is negative, NaN or infinite, weights
            summing to 0, a shadow fraction outside (0, 1].
    """
    for name in [*(weights or {}), *shadow]:
        if name not in variants:
            raise ValueError(f"unknown variant {name!r}; variants: {', '.join(sorted(variants))}")
    if not all(math.isfinite(value) for value in [*(weights or {}).values(), *shadow.values()]):
        raise ValueError("traffic weights and shadow fractions must be finite numbers")
    if weights is not None:
        if any(w < 0 for w in weights.values()):
            raise ValueError("traffic weights must be >= 0")
        if sum(weights.values()) <= 0:
            raise ValueError("traffic weights must sum to more than 0")
    for name, fraction in shadow.items():
        if not 0 < fraction <= 1:
            raise ValueError(f"shadow fraction of {name!r} must be in (0, 1], not {fraction}")


@dataclass(frozen=True)
class Operation:
    """One operation of a family: a handle method, a REST route and an OIP v2 inference.

    Args:
        name: the method of the family deployment and of the ingress handle (``upscale``).
        route: REST path below the family's (``""``: ``POST /v1/<family>``; ``txt2img``:
            ``POST /v1/<family>/txt2img``).
        params: pydantic model of the options (query parameters, form fields, OIP parameters,
            handle keyword arguments); its fields' descriptions and ranges are the API's schema.
        output: ``image`` (bytes of the format in ``params.format``; UINT8 pixels over OIP when
            the input was pixels) or ``json`` (a dict).
        summary: one line for OpenAPI.
        idempotent: running it twice gives the same answer and does nothing else, so the ingress
            re-sends it once, at once, when the replica serving it dies mid-call (a killed
            replica or node; Serve routes the second call to another replica). An operation
            with side effects or randomness that must not repeat (e.g. a seeded-but-billed
            generation) sets False and its caller sees 503 model_unavailable instead.
        body: how the request carries its input. ``image`` (the default): the body is one image
            (raw, or multipart field ``image``) and the options are query parameters or form
            fields; the deployment gets the image's bytes (or pixels). ``json``: the body is the
            options as a JSON object (``params``' schema), or multipart/form-data with the
            options as fields; the images named in ``images`` travel as base64 strings in the
            JSON or as file fields in the form, and the deployment gets ``{name: bytes}``
            (empty for none; OIP v2: one BYTES input per name).
        images: the named image inputs of a ``json`` operation, and whether each is required
            (``{"image": True, "mask": True}``); ``{}`` for none (e.g. text-to-image).
        stream: also served as ``POST /v1/<family>/<route>/stream`` (server-sent events) and as the
            handle method ``<name>_stream``: the deployment implements the async generator
            ``<name>_stream(image, params, route)`` yielding ``{"event": str, "data": dict}``
            (progress events, then one ``result`` whose data is the operation's JSON answer).
            The caller going away cancels the generator in the replica.
    """

    name: str
    params: type[BaseModel]
    output: Literal["image", "json"]
    route: str = ""
    summary: str = ""
    idempotent: bool = True
    body: Literal["image", "json"] = "image"
    images: dict[str, bool] = field(default_factory=dict)
    stream: bool = False

    @property
    def stream_method(self) -> str:
        """The deployment's (and the ingress handle's) streaming method: ``<name>_stream``."""
        return f"{self.name}_stream"


@dataclass(frozen=True)
class Listing:
    """A read-only listing of a family: ``GET /v1/<family>/<route>`` answers the JSON of the
    variant's deployment method ``method()`` (no arguments); ``?model=`` picks the variant
    (default: the family's default). E.g. the LoRA adapters a diffusion variant can load.
    """

    route: str
    method: str
    summary: str = ""


@dataclass(frozen=True)
class Result:
    """What a family deployment answers: ``content`` is encoded bytes (``media_type`` says which),
    ``(H, W, C)`` uint8 pixels (when the input was pixels), or a JSON-able dict."""

    content: bytes | np.ndarray | dict
    media_type: str


@dataclass(frozen=True)
class VariantAddress:
    """Where a variant's deployment runs: the Serve application and deployment names."""

    family: str
    variant: str
    app: str
    deployment: str

    def handle(self):
        """A handle to the variant's deployment (usable from the ingress and from replicas)."""
        from ray import serve

        return serve.get_deployment_handle(self.deployment, app_name=self.app)


class VariantDeployment:
    """Mixin of every family deployment: the traced call and the shadow call, built on the
    family's operations."""

    async def invoke(self, method: str, *args: Any, context: CallContext | None = None, **kwargs: Any) -> Any:
        """``await self.<method>(*args, **kwargs)`` inside the caller's trace and request: how the
        ingress calls an operation (and ``shadow``), so the replica's span is a child of the
        ingress's and the request counts in ``pixelfleet_queue_length`` (``telemetry.py``).

        Raises:
            AttributeError: no such public method. What the method raises.
        """
        if method.startswith("_"):
            raise AttributeError(method)
        target = getattr(self, method)
        with telemetry.serving(method, context):
            return await target(*args, **kwargs)

    async def invoke_stream(self, method: str, *args: Any, context: CallContext | None = None, **kwargs: Any):
        """``async for item in self.<method>(*args, **kwargs)``, yielded on, inside the caller's
        trace and request (as :meth:`invoke`): how the ingress calls a streamed operation
        (``handle.options(stream=True)``). Serve cancels this generator when the caller goes
        away, which cancels ``<method>``'s generator at its current ``await``.

        Raises:
            AttributeError: no such public method. What the method raises.
        """
        if method.startswith("_"):
            raise AttributeError(method)
        target = getattr(self, method)
        with telemetry.serving(method, context):
            async for item in target(*args, **kwargs):
                yield item

    async def shadow(self, operation: str, image: bytes | np.ndarray, params: dict, route: list[VariantAddress], primary: Result) -> float | None:
        """Run ``operation`` as the primary did and return the family's agreement with the
        primary's answer (``compare``); the caller never sees this answer."""
        own = await getattr(self, operation)(image, params, route)
        return self.compare(operation, primary, own, params)

    def compare(self, operation: str, primary: Result, own: Result, params: dict) -> float | None:
        """Agreement between two answers (the spec's ``agreement``); None where it has no meaning."""
        return None

    def check_health(self) -> None:
        """Serve's periodic health check (every ``health_check_period_s``, 10 s by default): the
        replica is alive; its gauges (model load seconds) are set again so they stay exported."""
        telemetry.refresh_gauges()


Planner = Callable[[Operation, BaseModel, str, bool, dict[str, dict]], list[str]]
Describer = Callable[[str, BaseModel], dict]


def single_variant(operation: Operation, params: BaseModel, chosen: str, explicit: bool, cards: dict[str, dict]) -> list[str]:
    """The default plan: the chosen variant serves the request alone."""
    return [chosen]


@dataclass(frozen=True)
class FamilySpec:
    """Everything the graph knows about a family.

    Args:
        name: the family's name (``superres``); routes and deployments carry it.
        title: one line for people (OpenAPI tags, ``pixelfleet up``'s banner).
        config: the family's :class:`FamilyConfig` subclass.
        deployment: the Ray Serve deployment class, or its ``"module:attribute"`` path, imported
            only where a variant is bound (``build_app``), so that processes that only route to
            the family (the ingress, ``pixelfleet up``'s driver) never import its model runtime
            (torch, ONNX Runtime); ``bind(variant=NAME, **variant_config)`` makes one variant. It implements every operation as
            ``async def <name>(image: bytes | np.ndarray, params: dict, route: list[VariantAddress])
            -> Result`` (``route``: the variants that serve the request, itself first), plus
            ``info()`` and ``ready()``; it subclasses :class:`VariantDeployment` (traced calls, shadows).
            ``bind(variant=NAME, limits=Limits dict, **variant_config)`` makes one variant.
        operations: the family's operations; the first is its OIP v2 default.
        agreement: the name of what ``compare`` returns (``psnr_y_db``, ``cer``), or None.
        plan: picks the variants for a request from the one the A/B split (or ``model=``, then
            ``explicit`` is True) chose and every variant's ``info()``; raises the family's
            4xx errors (e.g. a scale no variant serves).
        listings: read-only ``GET /v1/<family>/<route>`` listings (:class:`Listing`).
        describe: ``describe(variant, variant_config) -> card``: what the family can say of a
            variant from its config alone, without loading its model (e.g. the scale from the
            model card file), in the shape of ``info()``; the ingress shows and plans with it
            for a variant scaled to zero, so neither ``GET /v1/models`` nor a request to another
            variant starts its replica. Raises OSError / ValueError when it cannot (the ingress
            then asks the replica). None: always ask the replica.
    """

    name: str
    title: str
    config: type[FamilyConfig]
    deployment: Deployment | str
    operations: tuple[Operation, ...]
    agreement: str | None = None
    plan: Planner = single_variant
    listings: tuple[Listing, ...] = ()
    describe: Describer | None = None

    def operation(self, name: str) -> Operation:
        """The operation called ``name``. Raises KeyError."""
        for operation in self.operations:
            if operation.name == name:
                return operation
        raise KeyError(name)

    def deployment_class(self) -> Deployment:
        """The deployment, imported here when the spec names it by path.

        Raises:
            ValueError: the path cannot be imported or is not a Serve deployment.
        """
        if not isinstance(self.deployment, str):
            return self.deployment
        module_name, _, attribute = self.deployment.partition(":")
        try:
            found = getattr(importlib.import_module(module_name), attribute)
        except (ImportError, AttributeError) as err:
            raise ValueError(f"deployment {self.deployment!r} of family {self.name} cannot be imported: {err}") from None
        if not isinstance(found, Deployment):
            raise ValueError(f"{self.deployment!r} is not a Serve deployment")
        return found

    def bind_variant(self, family: str, variant: str, config: BaseModel, limits: Limits):
        """The bound deployment of one variant of ``family`` (an ``Application`` node)."""
        return self.deployment_class().options(name=deployment_name(family, variant)).bind(
            variant=variant, limits=limits.model_dump(), **config.model_dump(mode="json")
        )


def load_spec(kind: str) -> FamilySpec:
    """The :class:`FamilySpec` of a family: an entry-point name or ``module:attribute``.

    Raises:
        ValueError: no such family, or the object is not a FamilySpec.
    """
    if ":" in kind:
        module_name, _, attribute = kind.partition(":")
        try:
            spec = getattr(importlib.import_module(module_name), attribute)
        except (ImportError, AttributeError) as err:
            raise ValueError(f"family plug-in {kind!r} cannot be imported: {err}") from None
    else:
        found = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == kind]
        if not found:
            known = sorted(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))
            raise ValueError(f"unknown family kind {kind!r}; installed: {', '.join(known)} (or give 'module:SPEC')")
        spec = found[0].load()
    if not isinstance(spec, FamilySpec):
        raise ValueError(f"{kind!r} is not a FamilySpec")
    return spec


def deployment_name(family: str, variant: str) -> str:
    """The Serve deployment of a variant: ``<family>-<variant>`` (the config's ``deployments`` names it)."""
    return f"{family}-{variant}"
