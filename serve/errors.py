"""The one mapping from errors to HTTP responses, for every route of the ingress.

Every error is JSON: ``{"error": {"code", "message", "request_id"}}`` on the REST API, and the Open
Inference Protocol's ``{"error": "<message>"}`` below ``/v2``; the status comes from the
:mod:`pixelfleet.models.errors` class. Errors raised in a replica arrive wrapped by Ray and are
unwrapped here; anything unexpected is a 500 whose message names no file, line or library.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from ray.exceptions import RayActorError, RayTaskError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError, RequestCancelledError
from starlette.exceptions import HTTPException as StarletteHTTPException

from pixelfleet.models.errors import (
    Forbidden,
    InternalError,
    InvalidInput,
    MethodNotAllowed,
    ModelUnavailable,
    NotFound,
    Overloaded,
    PayloadTooLarge,
    PixelfleetError,
    RateLimited,
    Unauthorized,
    Unprocessable,
    UnsupportedMediaType,
)

logger = logging.getLogger("ray.serve")
REQUEST_ID_HEADER = "X-Request-Id"
OIP_PREFIX = "/v2"

_BY_STATUS = {400: InvalidInput, 401: Unauthorized, 403: Forbidden, 404: NotFound, 405: MethodNotAllowed, 413: PayloadTooLarge, 415: UnsupportedMediaType, 422: Unprocessable, 429: RateLimited}


def describe_validation(errors: list[dict]) -> str:
    """Pydantic/FastAPI validation errors as one line: ``field: message; ...``."""
    return "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors)


def as_pixelfleet_error(err: BaseException, where: str = "") -> PixelfleetError:
    """The :class:`PixelfleetError` that ``err`` stands for (Ray's wrappers unwrapped).

    A full queue is :class:`Overloaded`; a replica that died or a deployment with no running
    replica is :class:`ModelUnavailable`; any other exception is :class:`InternalError`, logged
    here with its traceback and answered without it.
    """
    if isinstance(err, PixelfleetError):
        return getattr(err, "cause", None) if isinstance(getattr(err, "cause", None), PixelfleetError) else err
    if isinstance(err, RayTaskError) and isinstance(err.cause, PixelfleetError):
        return err.cause
    if isinstance(err, BackPressureError):
        return Overloaded(f"{where or 'the model'} is at capacity; retry shortly")
    if isinstance(err, (RayActorError, DeploymentUnavailableError)):
        return ModelUnavailable(f"{where or 'the model'} has no running replica; retry shortly")
    if isinstance(err, RequestCancelledError):
        return InternalError("the request was cancelled")
    logger.error("unexpected error in %s", where or "the ingress", exc_info=err)
    return InternalError(f"internal error in {where}" if where else "internal error")


def route_path(request: Request) -> str:
    """The request's path below the application's route prefix (Serve's proxy sets ``root_path``
    to the prefix and keeps it in ``path``): ``/v2/...`` for an app served at ``/app`` too."""
    path, root = request.url.path, request.scope.get("root_path", "")
    if root and path.startswith(root) and path[len(root) : len(root) + 1] in ("", "/"):
        return path[len(root) :] or "/"
    return path


def error_response(err: PixelfleetError, request: Request | None) -> JSONResponse:
    """The HTTP response of ``err``: REST's JSON form, or OIP's below ``/v2``."""
    request_id = getattr(request.state, "request_id", None) if request is not None else None
    headers = dict(err.headers)  # X-Request-Id: Ray Serve's proxy adds it to every response
    if request is not None and route_path(request).startswith(OIP_PREFIX):
        return JSONResponse({"error": err.message}, status_code=err.status, headers=headers)
    body = {"error": {"code": err.code, "message": err.message, "request_id": request_id}}
    return JSONResponse(body, status_code=err.status, headers=headers)


def install_error_handlers(api: FastAPI) -> None:
    """Map every error FastAPI or a route can raise to :func:`error_response`."""

    @api.exception_handler(PixelfleetError)
    async def _pixelfleet(request: Request, err: PixelfleetError) -> JSONResponse:
        return error_response(as_pixelfleet_error(err), request)

    @api.exception_handler(RequestValidationError)
    async def _validation(request: Request, err: RequestValidationError) -> JSONResponse:
        return error_response(Unprocessable(describe_validation(err.errors())), request)

    @api.exception_handler(StarletteHTTPException)
    async def _http(request: Request, err: StarletteHTTPException) -> JSONResponse:
        kind = _BY_STATUS.get(err.status_code)
        if kind is None:
            error = PixelfleetError(str(err.detail))
            error.status, error.code = err.status_code, "http_error"
        elif kind is NotFound:
            error = NotFound(f"no route {request.method} {request.url.path}; see /docs")
        elif kind is MethodNotAllowed:
            error = MethodNotAllowed(f"{request.url.path} does not take {request.method}")
        else:
            error = kind(str(err.detail))
        return error_response(error, request)

    @api.exception_handler(Exception)
    async def _unexpected(request: Request, err: Exception) -> JSONResponse:
        return error_response(as_pixelfleet_error(err, "the ingress"), request)
