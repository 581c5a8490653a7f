"""Which super-resolution variants serve a request: one with the scale factor asked for, else a
chain of variants whose factors multiply to it (progressive upscaling). Pure functions, tested
without Ray."""

from __future__ import annotations

from pixelfleet.models.errors import UnknownModel, Unprocessable


MAX_CHAIN = 3


def _representative(scales: dict[str, int], default: str) -> dict[int, str]:
    """One variant per scale factor: the default where it has that scale, else the first by name."""
    chosen: dict[int, str] = {}
    for name in sorted(scales):
        chosen.setdefault(scales[name], name)
    chosen[scales[default]] = default
    return chosen


def _chains(factors: list[int], target: int, length: int) -> list[list[int]]:
    """Non-decreasing sequences of ``length`` factors whose product is ``target``."""
    if length == 1:
        return [[target]] if target in factors else []
    return [[f, *rest] for f in factors if target % f == 0 for rest in _chains([g for g in factors if g >= f], target // f, length - 1)]


def reachable_scales(scales: dict[str, int]) -> list[int]:
    """Scale factors served by one variant or a chain of up to :data:`MAX_CHAIN` variants (<= 8)."""
    factors = sorted(set(scales.values()))
    return [s for s in range(2, 9) if any(_chains(factors, s, n) for n in range(1, MAX_CHAIN + 1))]


def superres_chain(scales: dict[str, int], default: str, scale: int | None, model: str | None) -> list[str]:
    """The super-resolution variants that serve a request, in the order to apply them.

    One variant when one has the scale factor asked for; otherwise progressive upscaling: the
    shortest chain of variants whose scale factors multiply to it, smallest factor first (the
    later, larger stages then work on fewer pixels than the other way round).

    Args:
        scales: variant name -> its scale factor.
        default: the family's default variant.
        scale: the requested scale factor, or None for the default variant's.
        model: the requested variant, or None; it must have the requested scale itself.

    Raises:
        UnknownModel: ``model`` is not a variant.
        Unprocessable: ``scale`` cannot be served (the message lists the scales that can), or
            ``model`` has another scale.
    """
    if model is not None:
        if model not in scales:
            raise UnknownModel(f"unknown super-resolution model {model!r}; served: {', '.join(sorted(scales))}")
        if scale is not None and scales[model] != scale:
            raise Unprocessable(f"model {model!r} upscales x{scales[model]}, not x{scale}")
        return [model]
    if scale is None:
        return [default]
    by_scale = _representative(scales, default)
    for length in range(1, MAX_CHAIN + 1):
        chains = _chains(sorted(by_scale), scale, length)
        if chains:
            return [by_scale[factor] for factor in chains[0]]
    served = ", ".join(map(str, reachable_scales(scales)))
    raise Unprocessable(f"scale {scale} is not served; scales served: {served}")
