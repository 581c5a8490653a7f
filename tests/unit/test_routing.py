"""Variant choice for a request."""

from __future__ import annotations

import pytest

from serve.errors import UnknownModel, Unprocessable
from serve.routing import pick_ocr_variant, pick_superres_variant

SCALES = {"x4-psnr": 4, "x4-gan": 4, "x2": 2}


def test_default_when_nothing_asked():
    assert pick_superres_variant(SCALES, "x4-psnr", None, None) == "x4-psnr"


def test_scale_picks_a_variant_of_that_scale():
    assert pick_superres_variant(SCALES, "x4-psnr", 2, None) == "x2"
    assert pick_superres_variant(SCALES, "x4-psnr", 4, None) == "x4-psnr"


def test_unserved_scale_lists_the_scales():
    with pytest.raises(Unprocessable, match="scales served: 2, 4"):
        pick_superres_variant(SCALES, "x4-psnr", 8, None)


def test_model_and_scale_must_agree():
    assert pick_superres_variant(SCALES, "x4-psnr", 4, "x4-gan") == "x4-gan"
    with pytest.raises(Unprocessable):
        pick_superres_variant(SCALES, "x4-psnr", 2, "x4-gan")


def test_unknown_model_is_404():
    with pytest.raises(UnknownModel):
        pick_superres_variant(SCALES, "x4-psnr", None, "../../etc/passwd")
    with pytest.raises(UnknownModel):
        pick_ocr_variant(["rapidocr"], "rapidocr", "nope")
    assert pick_ocr_variant(["rapidocr", "tesseract"], "rapidocr", None) == "rapidocr"
