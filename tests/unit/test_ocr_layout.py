"""The OCR layout step (deployments/ocr/layout.py) on real line boxes, without an engine.

The boxes in data/ocr_page_lines.json are what RapidOCR and Tesseract returned on the two
two-column magazine scans of ../shared/datasets/ocr/pages (UNLV 8071_093.3B: four columns, a drop
capital, a headline across three columns, a subheading under column 2; 8087_054.3B: two columns
wrapped around a photo, a caption set in the gutter, a running head and a footer).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from pixelfleet.deployments.ocr.layout import find_columns, reading_order, rows
from pixelfleet.deployments.ocr.lines import OCRLine

PAGES = json.loads((Path(__file__).parent / "data" / "ocr_page_lines.json").read_text(encoding="utf-8"))["pages"]


def page(key: str) -> list[OCRLine]:
    return [OCRLine(text=text, confidence=0.9, box=box) for text, box in PAGES[key]]


def index_of(ordered: list[OCRLine], part: str) -> int:
    """Index of the one line that contains ``part`` (curly quotes read as straight ones)."""
    matches = [i for i, line in enumerate(ordered) if part in line.text.replace("’", "'").replace("“", '"')]
    assert len(matches) == 1, f"{part!r}: {matches}"
    return matches[0]


def line(text: str, box: list[int]) -> OCRLine:
    return OCRLine(text=text, confidence=0.9, box=box)


@pytest.mark.parametrize("engine", ["rapidocr", "tesseract"])
def test_columns_of_the_four_column_spread(engine):
    columns = find_columns(page(f"{engine}/8071_093.3B"))
    assert len(columns) == 4
    # the gutters lie between the columns' text (x of the scan, pixels)
    assert [round(x1, -2) for _, x1 in columns[:3]] == [800, 1600, 2400]


@pytest.mark.parametrize("engine", ["rapidocr", "tesseract"])
def test_caption_in_the_gutter_does_not_hide_it(engine):
    # 8087: seven caption lines cross the gutter between the two columns
    assert len(find_columns(page(f"{engine}/8087_054.3B"))) == 2


@pytest.mark.parametrize("engine", ["rapidocr", "tesseract"])
def test_spread_reads_column_by_column_then_heading(engine):
    ordered = reading_order(page(f"{engine}/8071_093.3B"))
    # column 1 (its first line beside the drop capital first), 2, 3, 4
    first = index_of(ordered, "HE MoPED" if engine == "rapidocr" else "SHE mopeD")
    assert first == 0
    assert first < index_of(ordered, "questioned her until") < index_of(ordered, "cause of her sadness")
    assert index_of(ordered, "successful American families") < index_of(ordered, "Guarendi's book")
    assert index_of(ordered, "lar had this confirmed") < index_of(ordered, "one day")
    # the subheading under column 2 follows the columns, then the headline across them
    assert index_of(ordered, "child is through the affection") < index_of(ordered, "Listen to the voices")
    assert index_of(ordered, "Listen to the voices") < index_of(ordered, "of real experience") < index_of(ordered, "What Kids Need")
    assert index_of(ordered, "What Kids Need") < index_of(ordered, "By R")


@pytest.mark.parametrize("engine", ["rapidocr", "tesseract"])
def test_wrapped_page_reads_columns_then_caption_then_footer(engine):
    ordered = reading_order(page(f"{engine}/8087_054.3B"))
    texts = [item.text for item in ordered]
    column_1_end = index_of(ordered, "food parcels to survive")
    assert index_of(ordered, "This is Greater Serbia") < index_of(ordered, "that historians remain")
    assert index_of(ordered, "needs. Tourism accounted") < column_1_end < index_of(ordered, "need receives flour")
    caption = [i for i, text in enumerate(texts) if text.startswith(("ROOFS OF", "DAMAGED DURING", "ARE MOSTLY"))]
    assert len(caption) == 3 and min(caption) > index_of(ordered, "fanatic Serb gunmen")
    if engine == "rapidocr":
        assert texts[0].startswith("d")  # the running head ("dateline") above the columns
    else:
        assert texts[-1].startswith("TRAVEL&LEISURE")  # the footer last


@pytest.mark.parametrize("key", sorted(PAGES))
def test_order_does_not_depend_on_the_engine_order(key):
    lines = page(key)
    shuffled = list(lines)
    random.Random(0).shuffle(shuffled)
    assert [item.text for item in reading_order(shuffled)] == [item.text for item in reading_order(lines)]
    assert sorted(map(id, reading_order(lines))) == sorted(map(id, lines))  # every line once


def test_one_column_reads_rows_and_a_split_row_left_to_right():
    lines = [
        line("second row", [10, 62, 400, 88]),
        line("right half", [210, 12, 400, 36]),
        line("left half", [10, 10, 200, 34]),
        line("third row", [10, 110, 400, 136]),
    ]
    assert [item.text for item in reading_order(lines)] == ["left half", "right half", "second row", "third row"]


def test_two_columns_of_three_lines():
    left = [line(f"L{i}", [0, 40 * i, 100, 40 * i + 30]) for i in range(3)]
    right = [line(f"R{i}", [140, 40 * i, 240, 40 * i + 30]) for i in range(3)]
    assert [item.text for item in reading_order(right + left)] == ["L0", "L1", "L2", "R0", "R1", "R2"]


def test_headline_across_columns_separates_two_bands():
    top = [line(f"a{i}", [0, 40 * i, 100, 40 * i + 30]) for i in range(3)] + [line(f"b{i}", [140, 40 * i, 240, 40 * i + 30]) for i in range(3)]
    headline = line("HEADLINE", [0, 130, 240, 170])
    bottom = [line(f"c{i}", [0, 180 + 40 * i, 100, 210 + 40 * i]) for i in range(3)] + [line(f"d{i}", [140, 180 + 40 * i, 240, 210 + 40 * i]) for i in range(3)]
    texts = [item.text for item in reading_order(bottom + [headline] + top)]
    assert texts == ["a0", "a1", "a2", "b0", "b1", "b2", "HEADLINE", "c0", "c1", "c2", "d0", "d1", "d2"]


def test_tall_box_does_not_merge_two_rows():
    # A drop capital's line: its box covers two rows but must not pull them into one.
    lines = [line("row2", [100, 60, 400, 84]), line("tall", [0, 0, 80, 90]), line("row1", [100, 10, 400, 34])]
    assert [[item.text for item in row] for row in rows(lines)] == [["row1"], ["tall"], ["row2"]]


def test_empty():
    assert reading_order([]) == [] and find_columns([]) == []
