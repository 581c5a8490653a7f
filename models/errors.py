"""One exception hierarchy for everything a request can get wrong, each with its HTTP status.

It sits below every layer (serve, deployments, train import it; it imports nothing of ours). The
ingress maps :class:`PixelfleetError` to a JSON body ``{"error": {"code", "message",
"request_id"}}`` in one place (``serve/errors.py``). Deployments raise these too; Ray re-raises
them at the caller as instances of the same class, so the mapping holds across handles.
"""

from __future__ import annotations


class PixelfleetError(Exception):
    """Base class: ``status`` is the HTTP status code, ``code`` a stable machine-readable name,
    ``headers`` extra HTTP response headers."""

    status: int = 500
    code: str = "internal_error"
    headers: dict[str, str] = {}

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __reduce__(self):  # keep the message when Ray pickles the exception across processes
        return (type(self), (self.message,))


class InvalidInput(PixelfleetError):
    """The request is malformed: not an image, a truncated file, a bad parameter value."""

    status, code = 400, "invalid_input"


AUTH_REALM = "pixelfleet"


class Unauthorized(PixelfleetError):
    """No credentials, or credentials that do not verify (RFC 6750 section 3.1: 401 with a
    ``WWW-Authenticate: Bearer`` challenge; ``error="invalid_token"`` when a credential was given
    and failed, no error code when none was given)."""

    status, code = 401, "unauthorized"

    def __init__(self, message: str, invalid_token: bool = False) -> None:
        super().__init__(message)
        self.invalid_token = invalid_token
        challenge = f'Bearer realm="{AUTH_REALM}"' + (', error="invalid_token"' if invalid_token else "")
        self.headers = {"WWW-Authenticate": challenge}

    def __reduce__(self):
        return (type(self), (self.message, self.invalid_token))


class Forbidden(PixelfleetError):
    """Valid credentials without the scope the route needs (RFC 6750 section 3.1: 403 with
    ``error="insufficient_scope"`` and the ``scope`` needed)."""

    status, code = 403, "forbidden"

    def __init__(self, message: str, scope: str = "") -> None:
        super().__init__(message)
        self.scope = scope
        challenge = f'Bearer realm="{AUTH_REALM}", error="insufficient_scope"' + (f', scope="{scope}"' if scope else "")
        self.headers = {"WWW-Authenticate": challenge}

    def __reduce__(self):
        return (type(self), (self.message, self.scope))


class UnknownModel(PixelfleetError):
    """The request names a model or variant that the config does not serve."""

    status, code = 404, "unknown_model"


class PayloadTooLarge(PixelfleetError):
    """The body is over the byte limit, or the image over the pixel limit (decompression bombs)."""

    status, code = 413, "payload_too_large"


class UnsupportedMediaType(PixelfleetError):
    """The content type or the image format is not one that pixelfleet reads."""

    status, code = 415, "unsupported_media_type"


class Unprocessable(PixelfleetError):
    """A field is missing or out of range for this model (e.g. a scale no variant serves)."""

    status, code = 422, "unprocessable"


class Overloaded(PixelfleetError):
    """A model's queue is full (``max_queued_requests``); the client should retry shortly."""

    status, code = 503, "overloaded"
    headers = {"Retry-After": "1"}


class RateLimited(PixelfleetError):
    """The caller is over its rate limit for this route group (429, ``serve/ratelimit.py``);
    ``headers``: ``Retry-After`` (seconds) and the ``RateLimit-*`` fields."""

    status, code = 429, "rate_limited"

    def __init__(self, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.headers = dict(headers or {})

    def __reduce__(self):
        return (type(self), (self.message, self.headers))


class NotFound(PixelfleetError):
    """No such route, family or resource."""

    status, code = 404, "not_found"


class MethodNotAllowed(PixelfleetError):
    """The route exists but not with this HTTP method."""

    status, code = 405, "method_not_allowed"


class Conflict(PixelfleetError):
    """The request contradicts the current state (e.g. a variant that already exists)."""

    status, code = 409, "conflict"


class InternalError(PixelfleetError):
    """An unexpected failure inside the ingress or a replica; the message never holds a stack trace."""

    status, code = 500, "internal_error"


class ModelUnavailable(PixelfleetError):
    """A variant's replicas are not running (starting, or failed to load)."""

    status, code = 503, "model_unavailable"
    headers = {"Retry-After": "5"}


class GatewayTimeout(PixelfleetError):
    """The family did not answer within its ``timeout_s``; the work in its replica is cancelled."""

    status, code = 504, "timeout"


class ModelFileError(PixelfleetError):
    """A model or adapter file that cannot be used (``models/modelfiles``): 422 when a request
    names it (an adapter id), a failed load (the variant's replicas: 503 model_unavailable) when a
    config names it. Subclasses say why; ``pixelfleet inspect`` gives each its own exit code."""

    status, code = 422, "bad_model_file"


class ModelFileNotFound(ModelFileError):
    """No file or folder at the path."""

    status, code = 404, "model_file_not_found"


class UnrecognizedModelFile(ModelFileError):
    """The path exists but holds no format pixelfleet reads (e.g. a folder without
    ``model_index.json``, a GGUF file, text)."""

    code = "unrecognized_model_file"


class CorruptModelFile(ModelFileError):
    """The file's bytes contradict its format: a truncated or malformed safetensors header or data,
    a damaged pickle or ONNX protobuf, or a name that lies (a pickle named ``.safetensors``)."""

    code = "corrupt_model_file"


class UnsafeModelFile(ModelFileError):
    """A pickle-based file (``.ckpt``/``.pt``/``.bin``), which can run code when loaded, without
    ``allow_pickle``; or one that ``torch.load(weights_only=True)`` refuses (objects besides tensors)."""

    code = "unsafe_model_file"
