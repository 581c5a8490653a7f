"""What a long job's work (``batch.py``, ``video.py``) hands back to the worker, and the rule for
which errors end an item and which end the run."""

from __future__ import annotations

from typing import TypedDict

from pydantic import ValidationError

from pixelfleet.models.errors import PixelfleetError, Unprocessable

#: File name suffix of an operation's answer, by media type.
SUFFIXES = {
    "image/png": ".png", "image/jpeg": ".jpg", "image/webp": ".webp", "image/tiff": ".tiff", "image/avif": ".avif",
    "application/json": ".json", "video/mp4": ".mp4",
}  # fmt: skip


class WorkResult(TypedDict):
    """The outcome of a finished job's work, for ``JobStore.succeed`` (a dict, as the worker takes it).

    Keys:
        result: a JSON summary (counts, output URLs).
        result_url: the storage URL of the main output (a manifest, a video), or None.
        media_type: ``result_url``'s media type.
        variant: the variant(s) that served the work, ``+``-joined when several did, or None.
    """

    result: dict
    result_url: str | None
    media_type: str | None
    variant: str | None


def is_item_error(err: BaseException) -> bool:
    """Whether ``err`` is the fault of one input (a 4xx: bad image, missing file, too large), so
    only that item fails; anything else (5xx: overloaded, unavailable, timeout) ends the run and
    the worker retries the job, which resumes from its last checkpoint."""
    return isinstance(err, PixelfleetError) and 400 <= err.status < 500


def parse_params(model, params: object):
    """``model.model_validate(params)``, a validation error as a 422 with pydantic's first
    messages (no input values echoed).

    Raises:
        Unprocessable: the params do not fit ``model``.
    """
    try:
        return model.model_validate(params)
    except ValidationError as err:
        detail = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'params'}: {e['msg']}" for e in err.errors()[:5])
        raise Unprocessable(f"invalid params: {detail}") from None


def variants_of(names: list[str | None]) -> str | None:
    """The distinct variants of ``names`` in first-seen order, ``+``-joined; None if there are none."""
    seen = list(dict.fromkeys(name for name in names if name))
    return "+".join(seen) if seen else None
