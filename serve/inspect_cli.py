"""``pixelfleet inspect PATH``: the presentation of :func:`pixelfleet.models.modelfiles.inspect`
(a rich table, or ``--json``) and its exit codes."""

from __future__ import annotations

from pixelfleet.models.errors import CorruptModelFile, ModelFileNotFound, UnrecognizedModelFile, UnsafeModelFile
from pixelfleet.models.modelfiles import ModelFileInfo

#: exit code per error (README: "pixelfleet inspect"); 0: inspected, 1: an unexpected failure,
#: 2: a usage error (typer's)
EXIT_CODES = {ModelFileNotFound: 3, UnrecognizedModelFile: 4, CorruptModelFile: 5, UnsafeModelFile: 6}
EXIT_UNEXPECTED = 1


def exit_code(err: Exception) -> int:
    """The exit code of an error that inspection raised."""
    return next((code for cls, code in EXIT_CODES.items() if isinstance(err, cls)), EXIT_UNEXPECTED)


def human_bytes(n: int | None) -> str:
    """``1536`` -> ``1.5 KiB`` (binary units); None -> ``-``."""
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError


def human_count(n: int | None, short: bool = False) -> str:
    """``1676565`` -> ``1.68 M (1,676,565)`` (``short``: ``1.68 M``); None -> ``not read``."""
    if n is None:
        return "not read"
    for div, unit in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if n >= div:
            return f"{n / div:.2f} {unit}" + ("" if short else f" ({n:,})")
    return str(n)


def _shape(shape) -> str:
    return "?" if shape is None else "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def render(info: ModelFileInfo):
    """Rich renderables for ``info``: a summary table, then components, LoRA or ONNX details."""
    from rich.table import Table
    from rich.text import Text

    BASES = {"sd1": "SD 1.x", "sd2": "SD 2.x", "sdxl": "SDXL", "sdxl-refiner": "SDXL refiner", "custom": "custom (no SD release's widths)"}
    summary = Table(title=Text(info.path), show_header=False, title_justify="left")
    summary.add_column("field", style="bold")
    summary.add_column("value")
    rows = [
        ("kind", f"{info.kind} ({info.format})"),
        ("class", info.class_name),
        ("architecture", {"sd": "Stable Diffusion", "sdxl": "Stable Diffusion XL"}.get(info.architecture or "")),
        ("base", BASES.get(info.base or "")),
        ("cross-attention dim", info.cross_attention_dim),
        ("UNet input channels", info.unet_in_channels),
        ("text encoders", ", ".join(f"{k} {v}" for k, v in info.text_encoder_dims.items()) or None),
        ("capabilities", ", ".join(info.capabilities) or "none known"),
        ("scale", f"x{info.scale}" if info.scale else None),
        ("parameters", human_count(info.parameters)),
    ]
    if info.memory is not None:
        m = info.memory
        rows.append(("memory", f"{human_bytes(m.stored_bytes)} as stored, {human_bytes(m.fp16_bytes)} fp16, {human_bytes(m.fp32_bytes)} fp32"))
    if info.lora is not None:
        lora = info.lora
        rows += [
            ("LoRA style", lora.style),
            ("rank", f"{lora.rank}" + (f" (ranks {', '.join(map(str, lora.ranks))})" if len(lora.ranks) > 1 else "")),
            ("alpha", lora.alpha),
            ("layers", f"{lora.layers} in {', '.join(lora.components)}"),
            ("target modules", ", ".join(lora.target_modules)),
            ("text encoder", "adapted" if lora.touches_text_encoder else "not adapted"),
            ("metadata says", lora.base_hint),
        ]
    for note in info.notes:
        rows.append(("note", note))
    for field, value in rows:
        if value is not None:
            summary.add_row(field, Text(str(value)))  # Text: no rich markup in paths, shapes, names
    out = [summary]
    if info.components and info.kind != "onnx":
        table = Table(title="components", title_justify="left")
        for column in ("name", "class", "files", "parameters", "dtypes", "stored", "fp16"):
            table.add_column(column, justify="right" if column in ("parameters", "stored", "fp16") else "left")
        for c in info.components:
            files = ", ".join(c.files) + (f" (also: {', '.join(c.variants)})" if c.variants else "")
            cells = (
                c.name, c.class_name or "", files or "-", human_count(c.parameters, short=True) if c.format != "none" else "-",
                ", ".join(c.dtypes) or "-", human_bytes(c.memory.stored_bytes) if c.memory else "-",
                human_bytes(c.memory.fp16_bytes) if c.memory else "-",
            )  # fmt: skip
            table.add_row(*map(Text, cells))
        out.append(table)
    if info.onnx is not None:
        graph = info.onnx
        opsets = ", ".join(f"{domain} {version}" for domain, version in graph.opsets.items())
        table = Table(title=Text(f"ONNX graph (IR {graph.ir_version}, opsets {opsets}, {graph.producer or 'producer unknown'})"), title_justify="left")
        for column in ("", "name", "dtype", "shape"):
            table.add_column(column)
        for direction, specs in (("input", graph.inputs), ("output", graph.outputs)):
            for spec in specs:
                table.add_row(*map(Text, (direction, spec.name, spec.dtype, _shape(spec.shape))))
        out.append(table)
    return out
