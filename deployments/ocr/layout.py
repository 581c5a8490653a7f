"""Reading order of OCR lines from their boxes alone, shared by every engine: columns, then lines.

An engine returns text lines with ``[x0, y0, x1, y1]`` pixel boxes in any order (RapidOCR's
detector returns them top to bottom across the whole page, which interleaves the columns of a
two-column scan). :func:`reading_order` sorts them as a person reads a printed page:

1. **Columns** from the x-projection of the line boxes (how many lines cover each pixel column):
   a gutter is a valley whose coverage is at most half the lower of the two peaks beside it
   (:func:`find_columns`, valleys and their prominence by ``scipy.signal.find_peaks``). A line
   belongs to a column when at least 90% of its width lies inside it; a line across a gutter
   (a headline, a caption centred between two columns) is *spanning*.
2. **Bands**: a spanning line beside which no column line stands (a headline across the page)
   separates the page into bands read top to bottom, the separator between them. A spanning line
   with column text beside it (a caption set into the gutter) does not.
3. Inside a band, each column's lines are grouped into **rows** (a line joins a row when their
   vertical centres fall inside each other's spans, so a drop capital's tall box stays on its
   first row) read left to right, and the rows into **blocks** where the distance between row
   centres exceeds 1.3 times the band's median. A block of at least 3 rows is running text.
   Columns are read left to right; a column's blocks after its last running-text block (a
   subheading under the column, a footer) and the band's non-separating spanning lines (a
   caption) are read after every column of the band, top to bottom.

This is the recursive X-Y cut (Nagy and Seth, 1984) reduced to one level of columns per band,
with Breuel's rule that a spanning element orders the columns around it only when it separates
them (T. M. Breuel, "High Performance Document Layout Analysis", 2003). Pure functions of the
boxes; tests call them without an engine.
"""

from __future__ import annotations

import statistics
from typing import Sequence

import numpy as np

from pixelfleet.deployments.ocr.lines import OCRLine

GUTTER_RATIO = 0.5
"""A gutter's coverage is at most this fraction of the lower neighbouring peak."""
GUTTER_DEPTH = 2
"""... and at least this many lines fewer (one stray mark beside a footer makes no column)."""
COLUMN_SHARE = 0.9
"""A line belongs to a column when this share of its width lies inside it."""
BLOCK_PITCH = 1.3
"""A new block starts where the row-centre distance exceeds this many median distances."""
TEXT_ROWS = 3
"""A block with at least this many rows is running text."""


def x_coverage(lines: Sequence[OCRLine]) -> tuple[int, np.ndarray]:
    """How many line boxes cover each pixel column between the leftmost and rightmost edge.

    Returns:
        ``(x_start, coverage)``: ``coverage[i]`` (int64) counts the boxes with
        ``x0 <= x_start + i < x1``; empty for no lines.
    """
    if not lines:
        return 0, np.zeros(0, dtype=np.int64)
    x_start = min(line.box[0] for line in lines)
    x_end = max(line.box[2] for line in lines)
    steps = np.zeros(x_end - x_start + 1, dtype=np.int64)
    for line in lines:
        steps[line.box[0] - x_start] += 1
        steps[line.box[2] - x_start] -= 1
    return x_start, np.cumsum(steps)[:-1]


def find_columns(lines: Sequence[OCRLine]) -> list[tuple[int, int]]:
    """Column intervals ``[(x0, x1), ...]`` in pixels, left to right, split at the gutters.

    A gutter is a valley of :func:`x_coverage` (a flat one counts by its middle) whose coverage
    is at most ``GUTTER_RATIO`` of, and ``GUTTER_DEPTH`` lines below, the lower of the highest
    coverages on either side before a deeper valley (the valley's topographic prominence). One interval covers everything when there is no
    gutter. No lines: no columns.
    """
    x_start, coverage = x_coverage(lines)
    if coverage.size == 0:
        return []
    from scipy.signal import find_peaks  # here, not at import: SciPy is ~40 MiB and 1.6 s per idle OCR replica

    valleys, props = find_peaks(-coverage, prominence=0)
    splits = [
        x_start + int(index)
        for index, prominence in zip(valleys, props["prominences"])
        if prominence >= GUTTER_DEPTH and coverage[index] <= GUTTER_RATIO * (coverage[index] + prominence)
    ]
    edges = [x_start, *splits, x_start + coverage.size]
    return [(edges[i], edges[i + 1]) for i in range(len(edges) - 1)]


def column_of(line: OCRLine, columns: Sequence[tuple[int, int]]) -> int | None:
    """Index of the column holding at least ``COLUMN_SHARE`` of the line's width, else None."""
    x0, x1 = line.box[0], line.box[2]
    width = max(x1 - x0, 1)
    for index, (c0, c1) in enumerate(columns):
        if min(x1, c1) - max(x0, c0) >= COLUMN_SHARE * width:
            return index
    return None


def rows(lines: Sequence[OCRLine]) -> list[list[OCRLine]]:
    """Lines grouped into rows, top to bottom, each row left to right.

    Lines are visited by vertical centre; a line joins the current row when its centre lies
    inside the row's vertical span and the row's mean centre lies inside the line's span (the
    mutual test keeps one tall box, such as a drop capital's line, from merging two rows).
    """
    by_centre = sorted(lines, key=lambda line: ((line.box[1] + line.box[3]) / 2, line.box[0]))
    grouped: list[list[OCRLine]] = []
    top = bottom = centre_sum = 0.0
    for line in by_centre:
        y0, y1 = line.box[1], line.box[3]
        centre = (y0 + y1) / 2
        if grouped and top <= centre <= bottom and y0 <= centre_sum / len(grouped[-1]) <= y1:
            grouped[-1].append(line)
            top, bottom, centre_sum = min(top, y0), max(bottom, y1), centre_sum + centre
        else:
            grouped.append([line])
            top, bottom, centre_sum = y0, y1, centre
    return [sorted(row, key=lambda line: line.box[0]) for row in grouped]


def _centre(row: list[OCRLine]) -> float:
    return statistics.fmean((line.box[1] + line.box[3]) / 2 for line in row)


def _blocks(column_rows: list[list[OCRLine]], pitch: float | None) -> list[list[list[OCRLine]]]:
    """Rows split into blocks where the distance between row centres exceeds BLOCK_PITCH * pitch."""
    blocks: list[list[list[OCRLine]]] = []
    for row in column_rows:
        if blocks and (pitch is None or _centre(row) - _centre(blocks[-1][-1]) <= BLOCK_PITCH * pitch):
            blocks[-1].append(row)
        else:
            blocks.append([row])
    return blocks


def _overlaps_vertically(a: OCRLine, b: OCRLine) -> bool:
    return min(a.box[3], b.box[3]) - max(a.box[1], b.box[1]) > 0


def _read_band(column_lines: list[list[OCRLine]], spanning: list[OCRLine]) -> list[OCRLine]:
    """One band: each column's running text, then the trailing blocks and spanning lines."""
    per_column = [rows(lines) for lines in column_lines]
    distances = [_centre(b) - _centre(a) for col in per_column for a, b in zip(col, col[1:])]
    pitch = statistics.median(distances) if distances else None
    ordered: list[OCRLine] = []
    after: list[OCRLine] = list(spanning)
    for column_rows in per_column:
        blocks = _blocks(column_rows, pitch)
        text = [i for i, block in enumerate(blocks) if len(block) >= TEXT_ROWS]
        last = text[-1] if text else len(blocks) - 1
        for i, block in enumerate(blocks):
            target = ordered if i <= last else after
            target.extend(line for row in block for line in row)
    return ordered + [line for row in rows(after) for line in row]


def reading_order(lines: Sequence[OCRLine]) -> list[OCRLine]:
    """The lines in reading order: bands top to bottom, columns left to right, then rows.

    See the module docstring for the rules. Pure; the input is not modified. One column (a
    single text line, a one-column page) reads as rows top to bottom, left to right.
    """
    lines = list(lines)
    if not lines:
        return []
    columns = find_columns(lines)
    assigned = [(line, column_of(line, columns)) for line in lines]
    in_columns = [line for line, column in assigned if column is not None]
    separators = sorted(
        (
            line
            for line, column in assigned
            if column is None and not any(_overlaps_vertically(line, other) for other in in_columns)
        ),
        key=lambda line: (line.box[1], line.box[0]),
    )
    separator_ids = {id(line) for line in separators}
    cuts = [(line.box[1] + line.box[3]) / 2 for line in separators]

    def band_of(line: OCRLine) -> int:
        centre = (line.box[1] + line.box[3]) / 2
        return sum(cut < centre for cut in cuts)

    ordered: list[OCRLine] = []
    for band in range(len(separators) + 1):
        column_lines: list[list[OCRLine]] = [[] for _ in columns]
        spanning: list[OCRLine] = []
        for line, column in assigned:
            if id(line) in separator_ids or band_of(line) != band:
                continue
            (spanning if column is None else column_lines[column]).append(line)
        ordered.extend(_read_band(column_lines, spanning))
        if band < len(separators):
            ordered.append(separators[band])
    return ordered
