"""The ``pixelfleet`` command line: run the app, inspect it, train and evaluate models."""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path
from typing import Optional

import typer

os.environ.setdefault("HF_HUB_OFFLINE", "1")

app = typer.Typer(help="pixelfleet: image models on Ray Serve, fine-tuned on Ray Train.", no_args_is_help=True)
train_app = typer.Typer(help="Train models on Ray Train.", no_args_is_help=True)
app.add_typer(train_app, name="train")
export_app = typer.Typer(help="Export models for other runtimes.", no_args_is_help=True)
app.add_typer(export_app, name="export")
eval_app = typer.Typer(help="Evaluate models on a data set.", no_args_is_help=True)
app.add_typer(eval_app, name="eval")
models_app = typer.Typer(help="Model folders that configs can name.", no_args_is_help=True)
app.add_typer(models_app, name="models")


DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs" / "local.yaml"
APP_NAME = "pixelfleet"


def _command_line() -> str:
    return shlex.join(["pixelfleet", *sys.argv[1:]])


# Named flags of `pixelfleet train srgan` and the config field each one overrides.
TRAIN_FLAGS = {
    "name": "name", "output": "output", "phase": "phase", "init_from": "init_from",
    "train_data": "data.train", "val_data": "data.val", "hr_patch": "data.hr_patch",
    "scale": "architecture.scale", "channels": "architecture.channels", "blocks": "architecture.blocks",
    "upsampler": "architecture.upsampler", "steps": "optim.steps", "batch_size": "optim.batch_size",
    "learning_rate": "optim.learning_rate", "num_workers": "scaling.num_workers", "use_gpu": "scaling.use_gpu",
    "precision": "precision", "checkpoint_every": "checkpoint_every", "seed": "seed", "storage_path": "storage_path",
}  # fmt: skip


@train_app.command("srgan")
def train_srgan(
    config: Optional[Path] = typer.Argument(None, help="run config YAML (train/configs/*.yaml); flags override it"),
    set_: list[str] = typer.Option([], "--set", help="override any field: --set data.patches_per_image=32 (repeatable)"),
    resume: bool = typer.Option(False, help="continue the run <storage_path>/<name> from its latest checkpoint"),
    output: Optional[Path] = typer.Option(None, help="model folder to write"),
    train_data: Optional[list[Path]] = typer.Option(None, "--train-data", help="folder of HR training images (repeatable)"),
    val_data: Optional[Path] = typer.Option(None, help="folder of HR validation images"),
    name: Optional[str] = typer.Option(None, help="model and run name"),
    phase: Optional[str] = typer.Option(None, help="psnr (pixel loss) or gan (needs --init-from)"),
    init_from: Optional[Path] = typer.Option(None, help="model folder whose weights start the generator"),
    scale: Optional[int] = typer.Option(None, help="scale factor"),
    channels: Optional[int] = typer.Option(None),
    blocks: Optional[int] = typer.Option(None),
    upsampler: Optional[str] = typer.Option(None, help="progressive (SRGAN) or single (ESPCN tail, faster)"),
    steps: Optional[int] = typer.Option(None),
    batch_size: Optional[int] = typer.Option(None, help="patches per step across all workers"),
    hr_patch: Optional[int] = typer.Option(None, help="HR patch side in pixels"),
    learning_rate: Optional[float] = typer.Option(None),
    num_workers: Optional[int] = typer.Option(None, help="Ray Train workers (DDP)"),
    use_gpu: Optional[bool] = typer.Option(None, "--use-gpu/--no-use-gpu"),
    precision: Optional[str] = typer.Option(None, help="auto, fp32, bf16 or fp16 (autocast of training steps)"),
    checkpoint_every: Optional[int] = typer.Option(None, "--checkpoint-every", "--val-every", help="steps between validation + checkpoint"),
    seed: Optional[int] = typer.Option(None),
    storage_path: Optional[Path] = typer.Option(None, help="Ray Train storage; the run lives in STORAGE_PATH/NAME"),
) -> None:
    """Train an SRResNet (phase psnr) or SRGAN (phase gan) generator with Ray Train and write a servable model folder."""
    from pydantic import ValidationError

    from pixelfleet.train.srgan.config import load_config, parse_assignment
    from pixelfleet.train.srgan.run import RunStateError, run

    given = dict(locals())
    flags = {k: v for k, v in given.items() if k in TRAIN_FLAGS and v is not None}
    overrides = {TRAIN_FLAGS[k]: (str(v) if isinstance(v, Path) else [str(p) for p in v] if isinstance(v, list) else v) for k, v in flags.items()}
    try:
        overrides.update(parse_assignment(text) for text in set_)
        cfg = load_config(config, overrides)
    except (ValueError, OSError) as err:  # pydantic's ValidationError is a ValueError
        detail = str(err) if not isinstance(err, ValidationError) else "\n".join(
            f"  {'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors()
        )
        typer.echo(f"invalid run config:\n{detail}", err=True)
        raise typer.Exit(2) from None
    try:
        card = run(cfg, _command_line(), resume=resume)
    except (RunStateError, FileNotFoundError) as err:
        typer.echo(str(err), err=True)
        raise typer.Exit(2) from None
    typer.echo(card.model_dump_json(indent=2))


@eval_app.command("superres")
def eval_superres(
    model: Path = typer.Option(..., help="super-resolution model folder"),
    data: Path = typer.Option(..., help="folder of HR images; LR inputs are their bicubic downscales"),
    scale: Optional[int] = typer.Option(None, help="scale factor; must be the model's (default)"),
    compare: Optional[Path] = typer.Option(None, help="write LR | bicubic | model | HR images into this folder"),
    tile_size: int = typer.Option(192, help="LR tile side, pixels (the serving path; local.yaml's)"),
    overlap: int = typer.Option(32, help="tile overlap, LR pixels"),
    ensemble: bool = typer.Option(False, help="x8 self-ensemble: average over flips and rotations (8x slower)"),
) -> None:
    """PSNR/SSIM on Y (border = scale px cropped) of a model and of bicubic, per image and mean."""
    from rich.table import Table

    from pixelfleet.deployments.superres.upscaler import Upscaler
    from pixelfleet.serve.runner import console
    from pixelfleet.train.sr_data import list_images, load_pairs
    from pixelfleet.train.srgan.evaluate import evaluate_images, mean_row, write_comparisons

    upscaler = Upscaler(model, num_threads=os.cpu_count() or 1, ensemble=ensemble)
    if scale is not None and scale != upscaler.scale:
        raise typer.BadParameter(f"the model upscales x{upscaler.scale}, not x{scale}", param_hint="--scale")
    paths = list_images([data])
    pairs = load_pairs(paths, upscaler.scale)
    upscale = lambda lr: upscaler.upscale(lr, tile_size, overlap)  # noqa: E731
    rows = evaluate_images(upscale, pairs, upscaler.scale)
    title = f"{upscaler.card.name}{' (x8 self-ensemble)' if ensemble else ''} x{upscaler.scale} on {data}"
    table = Table(title=f"{title} (Y, border {upscaler.scale} px)")
    for column in ("image", "PSNR-Y dB", "bicubic", "gain", "SSIM-Y", "bicubic"):
        table.add_column(column, justify="left" if column == "image" else "right")
    for name, row in [*zip((p.name for p in paths), rows), ("mean", mean_row(rows))]:
        gain = row["psnr_y"] - row["bicubic_psnr_y"]
        table.add_row(name, f"{row['psnr_y']:.3f}", f"{row['bicubic_psnr_y']:.3f}", f"{gain:+.3f}", f"{row['ssim_y']:.4f}", f"{row['bicubic_ssim_y']:.4f}")
    console.print(table)
    if compare is not None:
        write_comparisons(upscale, pairs, [p.stem for p in paths], upscaler.scale, compare)
        console.print(f"comparisons written to {compare}")


@models_app.command("list")
def models_list(
    folder: list[Path] = typer.Option([], "--folder", help="more folders to scan for model folders (repeatable)"),
) -> None:
    """Model folders (model.json + weights): the built-in ones and those below --folder."""
    from pydantic import ValidationError

    from pixelfleet.models.modelcard import ModelCard
    from pixelfleet.models.modelcard import BUILTIN_PREFIX, BUILTIN_WEIGHTS
    from pixelfleet.serve.runner import console

    for root in [BUILTIN_WEIGHTS, *folder]:
        for card_path in sorted(root.rglob("model.json")):
            try:
                card = ModelCard.model_validate_json(card_path.read_text())
            except ValidationError as err:
                console.print(f"{card_path.parent}: [red]not a model card[/] ({err.error_count()} errors)")
                continue
            ref = f"{BUILTIN_PREFIX}{card_path.parent.name}" if root == BUILTIN_WEIGHTS else str(card_path.parent)
            metrics = card.metrics
            figures = f"PSNR-Y {metrics.psnr_y:.2f} dB (bicubic {metrics.bicubic_psnr_y:.2f}) on {metrics.dataset}" if metrics else "no metrics"
            console.print(f"{ref}: {card.family} x{card.scale} {card.architecture.type}, {figures}")


@export_app.command("onnx")
def export_onnx_command(
    model: Path = typer.Option(..., help="super-resolution model folder (model.json + model.safetensors)"),
    output: Optional[Path] = typer.Option(None, help="folder for the .onnx files; default: the model folder"),
    int8: bool = typer.Option(False, help="also write model.int8.onnx (dynamic int8 quantization)"),
) -> None:
    """Export a super-resolution model to ONNX for the onnx backend (``backend: onnx``)."""
    from pixelfleet.models.sr_onnx import export_onnx

    for quantize, path in export_onnx(model, output, int8=int8).items():
        typer.echo(f"{quantize}: {path} ({path.stat().st_size} bytes)")


@app.command()
def up(
    config: Path = typer.Option(DEFAULT_CONFIG, help="Serve config file (serve/configs/*.yaml)"),
    host: Optional[str] = typer.Option(None, help="HTTP host; default: the config's http_options"),
    port: Optional[int] = typer.Option(None, help="HTTP port; default: the config's http_options"),
    dashboard: bool = typer.Option(False, help="start the Ray dashboard (about 1 GB more memory)"),
    timeout: float = typer.Option(900.0, help="seconds to wait for every model to load"),
) -> None:
    """Start a local Ray in this process, deploy the app, and serve until Ctrl-C or SIGTERM."""
    from pixelfleet.serve.runner import run_local

    raise typer.Exit(run_local(config, host=host, port=port, dashboard=dashboard, timeout_s=timeout))


@app.command()
def status(address: str = typer.Option("auto", help="Ray cluster address")) -> None:
    """Show the Serve applications and deployments of a running cluster."""
    from pixelfleet.serve.runner import print_status

    raise typer.Exit(print_status(address))


def main() -> None:
    """Entry point of the ``pixelfleet`` console script."""
    app()


if __name__ == "__main__":
    main()
