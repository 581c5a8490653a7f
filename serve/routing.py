"""Choosing the variant of a family that serves a request (pure functions, tested without Ray)."""

from __future__ import annotations

from serve.errors import UnknownModel, Unprocessable


def pick_superres_variant(scales: dict[str, int], default: str, scale: int | None, model: str | None) -> str:
    """The super-resolution variant for a request.

    Args:
        scales: variant name -> its scale factor.
        default: the family's default variant.
        scale: the requested scale factor, or None for the default variant's.
        model: the requested variant, or None.

    Raises:
        UnknownModel: ``model`` is not a variant.
        Unprocessable: no variant (or not ``model``) serves ``scale``; the message lists the scales served.
    """
    served = sorted(set(scales.values()))
    if model is not None:
        if model not in scales:
            raise UnknownModel(f"unknown super-resolution model {model!r}; served: {', '.join(sorted(scales))}")
        if scale is not None and scales[model] != scale:
            raise Unprocessable(f"model {model!r} upscales x{scales[model]}, not x{scale}")
        return model
    if scale is None or scales[default] == scale:
        return default
    matching = sorted(name for name, s in scales.items() if s == scale)
    if not matching:
        raise Unprocessable(f"scale {scale} is not served; scales served: {', '.join(map(str, served))}")
    return matching[0]


def pick_ocr_variant(variants: list[str], default: str, model: str | None) -> str:
    """The OCR variant for a request: ``model`` if given, else the default.

    Raises:
        UnknownModel: ``model`` is not a variant.
    """
    if model is None:
        return default
    if model not in variants:
        raise UnknownModel(f"unknown OCR model {model!r}; served: {', '.join(sorted(variants))}")
    return model
