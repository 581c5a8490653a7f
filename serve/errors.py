"""One exception hierarchy for everything a request can get wrong, each with its HTTP status.

The ingress maps :class:`PixelfleetError` to a JSON body ``{"error": {"code", "message"}}`` in
one place (``serve/ingress.py``). Deployments raise these too; Ray re-raises them at the caller
as instances of the same class, so the mapping holds across handles.
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
