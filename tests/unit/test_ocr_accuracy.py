"""OCR accuracy on the real scans of ../shared/datasets/ocr against the figures recorded in
deployments/ocr/card.json (skipped when the data set is absent).

Each check reruns a part of ``bench/ocr_cer.py`` (same CER: edit distance / reference length after
collapsing white space) and allows half a percentage point over the recorded figure, for other
builds of Tesseract, ONNX Runtime or Pillow; a broken reading order costs far more (the two
columns interleaved: 73-76% on the pages).
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pixelfleet.deployments.ocr.engines import build_engine
from pixelfleet.deployments.ocr.lines import to_result
from pixelfleet.models.metrics import character_error_rate

import pixelfleet.deployments.ocr as ocr_package

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "datasets" / "ocr"
CARD = json.loads((Path(ocr_package.__file__).parent / "card.json").read_text(encoding="utf-8"))["variants"]
SLACK = 0.005

pytestmark = pytest.mark.skipif(not (DATA / "lines").is_dir() or not (DATA / "pages").is_dir(), reason=f"no OCR data set at {DATA}")


def page(name: str) -> tuple[np.ndarray, str]:
    with Image.open(DATA / "pages" / f"{name}.tif") as image:
        return np.asarray(image.convert("RGB")), (DATA / "pages" / f"{name}.txt").read_text(encoding="utf-8")


def test_tesseract_first_40_lines():
    engine = build_engine("tesseract")
    cers = []
    for png in sorted((DATA / "lines").glob("*.png"))[:40]:
        with Image.open(png) as image:
            text = to_result(engine.recognize(np.asarray(image.convert("RGB")))).text
        cers.append(character_error_rate(text, png.with_name(png.stem + ".gt.txt").read_text(encoding="utf-8")))
    assert statistics.fmean(cers) <= CARD["tesseract"]["lines_first_40_mean_cer"] + SLACK


def test_tesseract_four_column_spread_in_reading_order():
    # One page only (5-10 s); RapidOCR's order on both pages is tested from its recorded boxes
    # (test_ocr_layout.py), its page CER by the bench.
    image, truth = page("8071_093.3B")
    text = to_result(build_engine("tesseract").recognize(image)).text
    assert character_error_rate(text, truth) <= CARD["tesseract"]["pages"]["8071_093.3B"] + SLACK
