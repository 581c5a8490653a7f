"""The HTTP front end of the ingress: REST ``/v1`` routes made from the families' operations,
metadata and health, the traffic and variant admin routes, request ids, and the JSON errors.

Built per ingress replica by :func:`build_api` (``Ingress.__serve_build_asgi_app__``), so the
routes and the OpenAPI schema follow the config: ``POST /v1/<family>[/<route>]`` for every
operation, its options as query parameters (or multipart form fields) from the operation's
pydantic model.

No ``from __future__ import annotations`` here: FastAPI reads the endpoints' annotations at
run time, and the query models are made per operation.
"""

import uuid
from typing import TYPE_CHECKING, Any

from fastapi import Body, FastAPI, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, create_model

import pixelfleet
from pixelfleet.deployments.telemetry import request_id as serve_request_id
from pixelfleet.deployments.spec import Operation
from pixelfleet.models.images import OUTPUT_MEDIA_TYPES
from pixelfleet.serve.access_log import AccessLogMiddleware
from pixelfleet.serve.admission import install_admission
from pixelfleet.serve.auth import Authenticator, install_auth
from pixelfleet.serve.errors import REQUEST_ID_HEADER, install_error_handlers
from pixelfleet.serve.ratelimit import LimiterClient, install_rate_limits
from pixelfleet.serve.uploads import IMAGE_FIELD, read_upload

if TYPE_CHECKING:
    from pixelfleet.serve.ingress import Ingress

VARIANT_HEADER = "X-Pixelfleet-Variant"
CLIENT_ID_HEADER = "X-Client-Id"
MAX_REQUEST_ID = 128


def _image_body(description: str) -> dict:
    """OpenAPI request body: a raw image or a multipart upload with field ``image``."""
    binary = {"schema": {"type": "string", "format": "binary"}}
    form = {"schema": {"type": "object", "required": [IMAGE_FIELD], "properties": {IMAGE_FIELD: {"type": "string", "format": "binary"}}}}
    return {
        "requestBody": {
            "required": True,
            "description": description,
            "content": {**{t: binary for t in OUTPUT_MEDIA_TYPES.values()}, "multipart/form-data": form},
        }
    }


def _query_model(operation: Operation) -> type[BaseModel]:
    """The operation's options plus ``model`` (the variant), as one query-parameter model."""
    return create_model(
        f"{operation.params.__name__}Query",
        __base__=operation.params,
        model=(str | None, Field(None, description="variant id from GET /v1/models; default: the A/B split")),
    )


def caller_of(request: Request) -> str | None:
    """The caller's id for sticky A/B assignment: the authenticated caller's name when auth is on
    (``serve/auth.py``; it overrides the header), else the ``X-Client-Id`` header, if given."""
    principal = getattr(request.state, "principal", None)
    if principal is not None:
        return principal.name
    return request.headers.get(CLIENT_ID_HEADER) or None


def _add_operation_route(api: FastAPI, ingress: "Ingress", family: str, operation: Operation) -> None:
    path = f"/v1/{family}" + (f"/{operation.route}" if operation.route else "")
    query_model = _query_model(operation)

    async def endpoint(request: Request, query: query_model = Query()) -> Response:  # type: ignore[valid-type]
        upload = await read_upload(request, ingress.config.limits.max_body_bytes)
        values: dict[str, Any] = {**query.model_dump(exclude_unset=True), **upload.fields}
        model = values.pop("model", None)
        answer = await ingress.infer(family, operation.name, upload.data, values, model=model, caller=caller_of(request))
        headers = {VARIANT_HEADER: f"{family}/{answer.variant}"}
        if operation.output == "json":
            return JSONResponse(answer.result.content, headers=headers)
        return Response(answer.result.content, media_type=answer.result.media_type, headers=headers)

    responses = {200: {"content": {t: {} for t in OUTPUT_MEDIA_TYPES.values()}, "description": "the image"}} if operation.output == "image" else None
    api.add_api_route(
        path, endpoint, methods=["POST"], summary=operation.summary, tags=[family], name=f"{family}.{operation.name}",
        openapi_extra=_image_body(f"the image ({family} {operation.name})"), response_class=Response, responses=responses,
    )  # fmt: skip


class TrafficChange(BaseModel):
    """``PUT /v1/traffic/{family}``: new weights and/or shadows (omitted: unchanged)."""

    model_config = ConfigDict(extra="forbid")

    weights: dict[str, float] | None = Field(None, description="variant -> weight >= 0, sum > 0")
    shadow: dict[str, float] | None = Field(None, description="variant -> fraction in (0, 1] of requests copied")


class VariantAdd(BaseModel):
    """``POST /v1/variants/{family}``: a new variant, served at weight 0 until traffic moves to it."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="the new variant's id")
    config: dict = Field(description="the variant's config block, as in the family's config (e.g. weights: PATH)")
    deployment: dict = Field(default_factory=dict, description="Serve deployment options: num_replicas, ray_actor_options, ...")


def _add_admin_routes(api: FastAPI, ingress: "Ingress") -> None:
    @api.get("/v1/traffic", tags=["traffic"])
    async def get_traffic() -> dict:
        """Every family's A/B weights, shadows and variants."""
        return ingress.traffic()

    @api.put("/v1/traffic/{family}", tags=["traffic"])
    async def put_traffic(family: str, change: TrafficChange = Body()) -> dict:
        """Change a family's weights and/or shadows, live and persisted; 422 if they do not fit."""
        return await ingress.set_traffic(family, change.weights, change.shadow)

    @api.post("/v1/variants/{family}", tags=["traffic"], status_code=201)
    async def add_variant(family: str, variant: VariantAdd = Body()) -> dict:
        """Add a variant (its own deployment) at weight 0, without restarting any other replica."""
        from pixelfleet.serve.variants import add_variant

        return await add_variant(ingress, family, variant.name, variant.config, variant.deployment)

    @api.delete("/v1/variants/{family}/{variant}", tags=["traffic"])
    async def remove_variant(family: str, variant: str) -> dict:
        """Take a variant out of service (it must have weight 0 and no shadow share)."""
        from pixelfleet.serve.variants import remove_variant

        return await remove_variant(ingress, family, variant)


def _add_meta_routes(api: FastAPI, ingress: "Ingress") -> None:
    @api.get("/v1/models", tags=["meta"])
    async def models() -> dict:
        """Families, their default, traffic, and each variant's model card (scale, weights id, metrics)."""
        return await ingress.list_models()

    @api.get("/healthz", tags=["meta"])
    async def healthz() -> dict:
        """Liveness: the ingress answers."""
        return {"status": "ok"}

    @api.get("/readyz", tags=["meta"])
    async def readyz() -> JSONResponse:
        """Readiness: 200 once every variant has loaded its model or is scaled to zero (listed in
        ``scaled_to_zero``: not called, its first request starts a replica), else 503 with what is
        missing."""
        states, at_zero = await ingress.readiness()
        ready = all(states.values())
        return JSONResponse({"ready": ready, "variants": states, "scaled_to_zero": at_zero}, status_code=200 if ready else 503)

    @api.get("/metrics", tags=["meta"], response_class=Response, responses={200: {"content": {"text/plain": {}}}})
    async def prometheus_metrics() -> Response:
        """Prometheus text of the whole Ray cluster: every alive node's metrics agent, merged
        (``ray_pixelfleet_*`` series of every replica; ``serve/observability.py``)."""
        from pixelfleet.serve.observability import CONTENT_TYPE, cluster_exposition

        return Response(await cluster_exposition(), media_type=CONTENT_TYPE)


def _request_id(request: Request) -> str:
    given = request.headers.get(REQUEST_ID_HEADER, "")
    return given if 0 < len(given) <= MAX_REQUEST_ID and given.isprintable() else uuid.uuid4().hex


def build_api(ingress: "Ingress") -> FastAPI:
    """The FastAPI app of one ingress replica: every family's operations, OIP v2, admin, meta."""
    families = ", ".join(f"{name} ({family.spec.title})" for name, family in ingress.families.items())
    api = FastAPI(
        title="pixelfleet",
        version=pixelfleet.__version__,
        description=f"Image models on Ray Serve: {families}. Errors are JSON: "
        '`{"error": {"code": ..., "message": ..., "request_id": ...}}` (OIP v2: `{"error": ...}`).',
    )
    install_error_handlers(api)
    if ingress.limiter is not None and ingress.config.rate_limits is not None:  # added before auth: runs after it, sees the caller
        install_rate_limits(api, LimiterClient(ingress.limiter, ingress.config.rate_limits))
    authenticator = Authenticator.from_config(ingress.config.auth)  # None when auth is off
    if authenticator is not None:  # added first, so it runs inside the request-id middleware
        install_auth(api, authenticator)
    admission = ingress.config.admission  # outside auth and rate limits, inside the request id
    install_admission(api, admission.max_in_flight, admission.retry_after_s, ingress.config.limits.max_body_bytes, admission.max_streams)

    @api.middleware("http")
    async def request_id(request: Request, call_next):
        # Behind Serve's HTTP proxy the id is Serve's: the X-Request-Id given (or one it made),
        # which it writes on the replicas' log lines, carries into handle calls and echoes on
        # every response itself (X-Request-ID); setting the header here too would send it twice.
        served = serve_request_id()
        request.state.request_id = served or _request_id(request)
        response = await call_next(request)
        if not served:  # outside Serve's proxy (tests of the app alone)
            response.headers[REQUEST_ID_HEADER] = request.state.request_id
        return response

    api.add_middleware(AccessLogMiddleware, request_id=serve_request_id)  # outermost: one console line per request

    from pixelfleet.serve.rest_json import add_json_operation_route, add_listing_route  # here: it imports this module's helpers

    for name, family in ingress.families.items():
        for listing in family.spec.listings:  # before the operations: GET routes beside POST ones
            add_listing_route(api, ingress, name, listing)
        for operation in family.spec.operations:
            if operation.body == "json":  # options and named images in a JSON (or multipart) body
                add_json_operation_route(api, ingress, name, operation)
            else:
                _add_operation_route(api, ingress, name, operation)
    _add_meta_routes(api, ingress)
    _add_admin_routes(api, ingress)
    from pixelfleet.serve.oip import build_router  # here: oip imports this module's helpers

    api.include_router(build_router(ingress))
    if ingress.config.jobs.enabled:  # /v1/jobs (serve/jobs_routes.py)
        from pixelfleet.serve.jobs_routes import build_router as build_jobs_router

        api.include_router(build_jobs_router(ingress))
    return api
