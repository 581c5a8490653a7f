"""Character error rate and speed of the OCR engines on line images and page scans, without Ray.

Reads every ``<name>.png`` with its ``<name>.gt.txt`` in a folder, runs each engine on the image
(converted to RGB with Pillow) and prints, per engine and settings: mean and median CER
(``models.metrics.character_error_rate``), images, wall-clock and process CPU seconds per image
(recognition only, after one warm-up image; CPU time is the steadier figure on a busy machine),
and how many images gave no text. With ``--pages`` it also reads every ``<name>.tif`` with its
``<name>.txt`` there and prints each page's CER of the whole text in the engine's reading order.

The CER is the dataset README's: edit distance / reference length after collapsing white space.
The "folded" column also maps typographic quotes to ASCII on both sides (UW3's ground truth spells
them as TeX's `` and '', UNLV's as ASCII, the engines as Unicode curly quotes).

    python bench/ocr_cer.py --data ../shared/datasets/ocr/lines --pages ../shared/datasets/ocr/pages --ladder
    python bench/ocr_cer.py --data ../shared/datasets/ocr/lines
    python bench/ocr_cer.py --data ../shared/datasets/ocr/lines --engine rapidocr \\
        --option det_limit_type=max --option det_limit_side_len=960 --option intra_op_num_threads=1
    python bench/ocr_cer.py --data ../shared/datasets/ocr/lines --limit 60 --sweep-rapidocr

``--option k=v`` goes to every engine that takes ``k``; ``--option rapidocr:k=v`` to one engine. Values
are parsed as int, float, true/false or none where they look like one.
"""

from __future__ import annotations

import argparse
import inspect
import re
import statistics
import time
from pathlib import Path

import numpy as np
from PIL import Image

from pixelfleet.deployments.ocr.engines import ENGINES, build_engine
from pixelfleet.deployments.ocr.lines import to_result
from pixelfleet.models.metrics import character_error_rate

# RapidOCR settings compared by --sweep-rapidocr: the package default, then limit type "max"
# with RapidOCR's own side rule (None) and pinned side lengths, in pixels.
RAPIDOCR_SWEEP = [
    {"det_limit_type": "min", "det_limit_side_len": 736},
    {"det_limit_type": "max", "det_limit_side_len": None},
    {"det_limit_type": "max", "det_limit_side_len": 640},
    {"det_limit_type": "max", "det_limit_side_len": 960},
    {"det_limit_type": "max", "det_limit_side_len": 1280},
    {"det_limit_type": "max", "det_limit_side_len": 1600},
]


# Each change to the Tesseract variant and the layout step, in the order they were made (the
# last row of each engine is its default), for --ladder.
# "tried:" rows change one thing against the row above them and were not kept.
ONCE = {"reread_below": None}
LADDER = [
    ("tesseract", "before: psm 3, no border, Tesseract's order", {"psm": 3, "border": 0, "layout": False, **ONCE}),
    ("tesseract", "psm 7 (one line) for every image", {"psm": 7, "border": 0, "layout": False, **ONCE}),
    ("tesseract", "tried: psm 13 (raw line) + 10 px border", {"psm": 13, "border": 10, "layout": False, **ONCE}),
    ("tesseract", "psm 7 + 10 px border", {"psm": 7, "border": 10, "layout": False, **ONCE}),
    ("tesseract", "auto psm (7 if one line, else 3) + border + turned lines", {"psm": None, "border": 10, "layout": False, **ONCE}),
    ("tesseract", "+ layout step", ONCE),
    ("tesseract", "tried: the scans' 300 dpi set (SetSourceResolution)", {**ONCE, "dpi": 300}),
    ("tesseract", "tried: every reading smoothed, Gaussian 0.5 px", {**ONCE, "smooth": 0.5}),
    ("tesseract", "tried: every reading smoothed, Gaussian 1 px", {**ONCE, "smooth": 1.0}),
    ("tesseract", "+ lines under 90% confidence re-read smoothed (1 px), the more confident kept (default)", {}),
    ("rapidocr", "before: rows across the page", {"layout": False}),
    ("rapidocr", "+ layout step (default)", {}),
]


def fold_quotes(text: str) -> str:
    """Typographic and TeX quotes as ASCII: ‘ ’ ‚ ‛ ` -> ', “ ” „ ‟ and '' -> "."""
    text = re.sub("[\u2018\u2019\u201a\u201b`]", "'", text)
    text = re.sub("[\u201c\u201d\u201e\u201f]", '"', text)
    return text.replace("''", '"')


def parse_value(text: str):
    """``"3"`` -> 3, ``"0.5"`` -> 0.5, ``"true"`` -> True, ``"none"`` -> None, else the string."""
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("none", "null"):
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def parse_options(items: list[str], engine: str) -> dict:
    """Options for ``engine`` from ``engine:k=v`` items, and from ``k=v`` items whose ``k`` the
    engine's constructor takes (so ``intra_op_num_threads=1`` does not break Tesseract)."""
    accepted = inspect.signature(ENGINES[engine]).parameters
    options = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--option wants k=v or engine:k=v, got {item!r}")
        target, colon, key = key.rpartition(":")
        if target == engine or (not colon and key in accepted):
            options[key] = parse_value(value)
    return options


def load_samples(folder: Path, limit: int | None) -> list[tuple[str, np.ndarray, str]]:
    """``(name, (H, W, 3) uint8 RGB, ground truth)`` for each ``.png`` that has a ``.gt.txt``."""
    samples = []
    for png in sorted(folder.glob("*.png")):
        gt = png.with_name(png.stem + ".gt.txt")
        if not gt.exists():
            continue
        with Image.open(png) as image:
            rgb = np.asarray(image.convert("RGB"))
        samples.append((png.stem, rgb, gt.read_text(encoding="utf-8")))
        if limit and len(samples) >= limit:
            break
    return samples


def load_pages(folder: Path) -> list[tuple[str, np.ndarray, str]]:
    """``(name, (H, W, 3) uint8 RGB, ground truth)`` for each ``.tif`` that has a ``.txt``."""
    pages = []
    for tif in sorted(folder.glob("*.tif")):
        truth = tif.with_suffix(".txt")
        if truth.exists():
            with Image.open(tif) as image:
                pages.append((tif.stem, np.asarray(image.convert("RGB")), truth.read_text(encoding="utf-8")))
    return pages


def page_cers(engine, pages) -> dict[str, float]:
    """Each page's CER of the whole text in the engine's reading order."""
    return {name: character_error_rate(to_result(engine.recognize(image)).text, truth) for name, image, truth in pages}


def evaluate(engine_name: str, options: dict, samples, verbose: bool = False, pages=()) -> dict:
    """Mean CER (plain and quotes folded), images, seconds per image and empty outputs of one
    engine on ``samples``; each page's CER when ``pages`` are given."""
    engine = build_engine(engine_name, options)
    engine.recognize(samples[0][1])  # warm-up, not timed
    cers, folded, seconds, cpu_seconds, empty = [], [], 0.0, 0.0, 0
    for name, image, truth in samples:
        start, cpu_start = time.perf_counter(), time.process_time()
        text = to_result(engine.recognize(image)).text
        seconds += time.perf_counter() - start
        cpu_seconds += time.process_time() - cpu_start
        cer = character_error_rate(text, truth)
        cers.append(cer)
        folded.append(character_error_rate(fold_quotes(text), fold_quotes(truth)))
        empty += not text.strip()
        if verbose and cer > 0:
            print(f"  {name} cer={cer:.3f} hyp={text!r} ref={truth.strip()!r}")
    return {
        "cer": statistics.fmean(cers),
        "folded_cer": statistics.fmean(folded),
        "pages": page_cers(engine, pages) if pages else {},
        "median_cer": statistics.median(cers),
        "images": len(samples),
        "s_per_image": seconds / len(samples),
        "cpu_s_per_image": cpu_seconds / len(samples),
        "empty": empty,
    }


def main(argv: list[str] | None = None) -> None:
    """Parse the arguments, run the engines and print one row per engine and settings."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="folder of <name>.png + <name>.gt.txt")
    parser.add_argument("--limit", type=int, default=None, help="first N images (sorted by name)")
    parser.add_argument("--engine", choices=[*ENGINES, "all"], default="all")
    parser.add_argument("--option", action="append", default=[], metavar="[ENGINE:]K=V")
    parser.add_argument("--sweep-rapidocr", action="store_true", help="compare the RAPIDOCR_SWEEP settings")
    parser.add_argument("--verbose", action="store_true", help="print every line with errors")
    parser.add_argument("--pages", type=Path, default=None, help="folder of <name>.tif + <name>.txt page scans")
    parser.add_argument("--ladder", action="store_true", help="each change to the defaults, in order (LADDER), as a Markdown table")
    args = parser.parse_args(argv)

    samples = load_samples(args.data, args.limit)
    if not samples:
        raise SystemExit(f"no <name>.png with <name>.gt.txt in {args.data}")
    pages = load_pages(args.pages) if args.pages else []

    runs = []
    if args.ladder:
        runs = [(name, label, {**parse_options(args.option, name), **options}) for name, label, options in LADDER]
    elif args.sweep_rapidocr:
        base = parse_options(args.option, "rapidocr")
        runs = [("rapidocr", "", {**base, **setting}) for setting in RAPIDOCR_SWEEP]
    else:
        names = list(ENGINES) if args.engine == "all" else [args.engine]
        runs = [(name, "", parse_options(args.option, name)) for name in names]

    page_names = [name for name, _, _ in pages]
    print(
        "| engine | change | lines: mean CER | folded | median | CPU s / line | no text | "
        + " | ".join(f"page {name}" for name in page_names) + (" |" if page_names else "") + " options |"
    )
    print("| --- " * (7 + len(page_names) + 1) + "|")
    for name, label, options in runs:
        row = evaluate(name, options, samples, args.verbose, pages)
        cells = [f"{row['pages'][page]:.2%}" for page in page_names]
        print(
            f"| {name} | {label} | {row['cer']:.2%} | {row['folded_cer']:.2%} | {row['median_cer']:.2%} | "
            f"{row['cpu_s_per_image']:.3f} | {row['empty']} of {row['images']} | "
            + "".join(f"{cell} | " for cell in cells) + f"`{options}` |",
            flush=True,
        )


if __name__ == "__main__":
    main()
