"""Variant choice for a request."""

from __future__ import annotations

import pytest

from pixelfleet.models.errors import UnknownModel, Unprocessable
from pixelfleet.deployments.superres.routing import reachable_scales, superres_chain

SCALES = {"x4-psnr": 4, "x4-gan": 4, "x2": 2}


def test_default_when_nothing_asked():
    assert superres_chain(SCALES, "x4-psnr", None, None) == ["x4-psnr"]


def test_scale_picks_a_variant_of_that_scale():
    assert superres_chain(SCALES, "x4-psnr", 2, None) == ["x2"]
    assert superres_chain(SCALES, "x4-psnr", 4, None) == ["x4-psnr"]
    assert superres_chain(SCALES, "x4-gan", 4, None) == ["x4-gan"]  # the default wins its scale


def test_progressive_upscaling_chains_variants_smallest_first():
    assert superres_chain(SCALES, "x4-psnr", 8, None) == ["x2", "x4-psnr"]
    assert superres_chain({"x2": 2}, "x2", 8, None) == ["x2", "x2", "x2"]
    assert superres_chain({"x2": 2}, "x2", 4, None) == ["x2", "x2"]
    assert reachable_scales(SCALES) == [2, 4, 8]
    assert reachable_scales({"x4": 4}) == [4]


def test_unserved_scale_lists_the_scales():
    with pytest.raises(Unprocessable, match="scales served: 4$"):
        superres_chain({"x4": 4}, "x4", 8, None)
    with pytest.raises(Unprocessable, match="scales served: 2, 4, 8"):
        superres_chain(SCALES, "x4-psnr", 3, None)


def test_model_and_scale_must_agree():
    assert superres_chain(SCALES, "x4-psnr", 4, "x4-gan") == ["x4-gan"]
    with pytest.raises(Unprocessable):
        superres_chain(SCALES, "x4-psnr", 2, "x4-gan")


def test_unknown_model_is_404():
    with pytest.raises(UnknownModel):
        superres_chain(SCALES, "x4-psnr", None, "../../etc/passwd")
