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
traffic_app = typer.Typer(help="A/B traffic of a running app: weights, shadows, and a report from its metrics.", no_args_is_help=True)
app.add_typer(traffic_app, name="traffic")
variants_app = typer.Typer(help="Variants of a running app's families: list, add, remove.", no_args_is_help=True)
app.add_typer(variants_app, name="variants")


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
    address: Optional[str] = typer.Option(
        None,
        help="Ray cluster to train on (beats RAY_ADDRESS); 'local' or '': a Ray of its own. Default: RAY_ADDRESS if set, "
        "else the cluster of a running `pixelfleet up`, else a Ray of its own",
    ),
) -> None:
    """Train an SRResNet (phase psnr) or SRGAN (phase gan) generator with Ray Train and write a servable model folder.

    It joins the cluster that serves when `pixelfleet up` runs, and its workers take the CPUs the replicas leave free."""
    from pixelfleet.train.srgan.config import load_config, parse_assignment
    from pixelfleet.train.srgan.run import ClusterFullError, RunStateError, run

    given = dict(locals())
    flags = {k: v for k, v in given.items() if k in TRAIN_FLAGS and v is not None}
    overrides = {TRAIN_FLAGS[k]: (str(v) if isinstance(v, Path) else [str(p) for p in v] if isinstance(v, list) else v) for k, v in flags.items()}

    def load():
        overrides.update(parse_assignment(text) for text in set_)
        return load_config(config, overrides)

    _train(load, run, resume, address, refused=(RunStateError, FileNotFoundError, ClusterFullError))


def _train(load, run, resume: bool, address: str | None, refused: tuple[type[Exception], ...]) -> None:
    """What every ``pixelfleet train`` command does once its options are read: ``load()`` the run
    config (exit 2 listing pydantic's field errors), join the cluster (``address``, as
    :func:`~pixelfleet.serve.runner.cluster_to_join` finds it) and ``run`` it, then print the card
    as JSON. Exit 2 with the message on an error in ``refused`` (the run cannot start as asked),
    1 when the cluster cannot be joined."""
    from pydantic import ValidationError

    from pixelfleet.serve.runner import cluster_to_join

    try:
        cfg = load()
    except (ValueError, OSError) as err:  # pydantic's ValidationError is a ValueError
        detail = str(err) if not isinstance(err, ValidationError) else "\n".join(
            f"  {'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors()
        )
        typer.echo(f"invalid run config:\n{detail}", err=True)
        raise typer.Exit(2) from None
    try:
        join, source = cluster_to_join(address)
        card = run(cfg, _command_line(), resume=resume, address=join, address_source=source)
    except refused as err:
        typer.echo(str(err), err=True)
        raise typer.Exit(2) from None
    except ConnectionError as err:
        cause = f" ({err.__cause__})" if err.__cause__ else ""  # e.g. Ray's AuthenticationError, saying what to set
        typer.echo(f"cannot join the Ray cluster: {err}{cause}", err=True)
        raise typer.Exit(1) from None
    typer.echo(card.model_dump_json(indent=2))


@train_app.command("lora")
def train_lora(
    config: Path = typer.Argument(..., help="run config YAML (train/configs/lora.yaml); --set overrides it"),
    set_: list[str] = typer.Option([], "--set", help="override any field: --set optim.steps=200 (YAML value; repeatable)"),
    resume: bool = typer.Option(False, help="continue the run <storage_path>/<name> from its latest checkpoint"),
    address: Optional[str] = typer.Option(None, help="Ray cluster to train on, as for `pixelfleet train srgan`"),
) -> None:
    """Train a LoRA adapter for a Stable Diffusion 1.x/2.x diffusers folder with Ray Train; write
    OUTPUT/NAME.safetensors (diffusers/peft keys) and its card OUTPUT/NAME.json.

    It joins the cluster that serves when `pixelfleet up` runs, as `train srgan` does; a run that does not fit is refused."""
    from pixelfleet.train.lora.config import load_config
    from pixelfleet.train.lora.model import BaseModelError
    from pixelfleet.train.lora.run import ClusterFullError, RunStateError, run
    from pixelfleet.train.lora.sampler import NotEnoughImagesError
    from pixelfleet.train.srgan.config import parse_assignment

    _train(
        lambda: load_config(config, dict(parse_assignment(text) for text in set_)), run, resume, address,
        refused=(RunStateError, BaseModelError, FileNotFoundError, ClusterFullError, NotEnoughImagesError),
    )  # fmt: skip


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
    dashboard: bool = typer.Option(
        False, help="start the Ray dashboard (about 1 GB more memory; Ray Train's State API calls use it when training joins)"
    ),
    timeout: float = typer.Option(900.0, help="seconds to wait for every model to load"),
    num_cpus: Optional[int] = typer.Option(
        None, "--num-cpus", min=1, help="logical CPUs Ray announces (default: the machine's); what the replicas leave is free for training"
    ),
    insecure: bool = typer.Option(
        False, "--insecure", help="serve on a non-loopback host without auth (refused otherwise: exit 2; README, Security)"
    ),
    verbose: bool = typer.Option(False, "--verbose", help="print Ray's own logs too (default: one line per request; Ray's logs in its log files)"),
) -> None:
    """Start a local Ray in this process, deploy the app, and serve until Ctrl-C or SIGTERM.

    The cluster is announced for `pixelfleet train srgan`, which then joins it."""
    from pixelfleet.serve.skip_imports import skip_unused_imports

    skip_unused_imports()  # before Serve is imported here: the driver holds no DataFrame either
    from pixelfleet.serve.runner import run_local

    raise typer.Exit(
        run_local(config, host=host, port=port, dashboard=dashboard, timeout_s=timeout, num_cpus=num_cpus, insecure=insecure, verbose=verbose)
    )


@app.command()
def status(address: str = typer.Option("auto", help="Ray cluster address")) -> None:
    """Show the Serve applications and deployments of a running cluster."""
    from pixelfleet.serve.runner import print_status

    raise typer.Exit(print_status(address))


@app.command("inspect")
def inspect_command(
    path: str = typer.Argument(..., help="a diffusers folder, a checkpoint or LoRA file, an ONNX file, a model folder or builtin:NAME"),
    json_: bool = typer.Option(False, "--json", help="print the ModelFileInfo as JSON"),
    allow_pickle: bool = typer.Option(False, "--allow-pickle", help="read pickle files (.ckpt/.pt/.bin) with torch.load(weights_only=True)"),
) -> None:
    """What a model path holds: format, SD 1.x/2.x/SDXL, LoRA rank and base, ONNX inputs/outputs,
    capabilities, parameters and memory. Reads headers only. Exit 0; 3 not found, 4 unrecognized,
    5 corrupt/truncated/mislabeled, 6 a pickle without --allow-pickle (README: pixelfleet inspect)."""
    from pixelfleet.models.errors import ModelFileError
    from pixelfleet.models.modelfiles import inspect
    from pixelfleet.serve.inspect_cli import exit_code, render

    try:
        info = inspect(path, allow_pickle=allow_pickle)
    except ModelFileError as err:
        typer.echo(f"error: {err.message}", err=True)
        raise typer.Exit(exit_code(err)) from None
    except Exception as err:  # never a traceback: one line and exit 1
        typer.echo(f"error: unexpected {type(err).__name__} while inspecting {path}: {err}", err=True)
        raise typer.Exit(exit_code(err)) from None
    if json_:
        typer.echo(info.model_dump_json(indent=2))
        return
    console = _console()
    for renderable in render(info):
        console.print(renderable)


@app.command()
def upscale(
    inputs: list[Path] = typer.Argument(..., help="image files and/or folders, or one video (.mp4, .mov, .mkv, .webm, .avi)"),
    out: Path = typer.Option(..., "--out", help="output folder (images, with manifest.jsonl) or file (a video: .mp4, .mov, .mkv)"),
    url: Optional[str] = typer.Option(None, "--url", envvar="PIXELFLEET_URL", help="a running app's URL (its /v1/jobs); default: run here, no app"),
    scale: Optional[int] = typer.Option(None, help="scale factor; here: 2 or 4 (the shipped models), default 4"),
    model: Optional[str] = typer.Option(None, help="a variant of the app to use (with --url)"),
    format_: str = typer.Option("png", "--format", help="output image format: png, jpeg, webp, tiff, avif"),
    weights: Optional[str] = typer.Option(None, help="a model folder or builtin:NAME to run here (without --url)"),
    codec: Optional[str] = typer.Option(None, help="video encoder (FFmpeg name); default: the input's codec"),
    chunk_frames: int = typer.Option(48, "--chunk-frames", min=1, help="video frames per checkpointed segment"),
) -> None:
    """Upscale images or a video with a progress bar: through a running app's job API (--url,
    PIXELFLEET_API_KEY as the credential), or in this process without one."""
    from pixelfleet.serve.upscale_cli import Options, main as upscale_main

    options = Options(out=out, scale=scale, model=model, format=format_, weights=weights, codec=codec, chunk_frames=chunk_frames)
    raise typer.Exit(upscale_main(list(inputs), options, url))


# ---- the admin commands: a running app over HTTP (logic in admin_client.py and report.py) ----

URL_OPTION = typer.Option("http://127.0.0.1:8000", "--url", envvar="PIXELFLEET_URL", help="the app's base URL")


def _admin_call(url: str, call):
    """``call(client)`` against the app at ``url``; an error answer or no connection: the
    message on stderr and exit 1."""
    import httpx

    from pixelfleet.serve.admin_client import AdminClient, AdminError

    try:
        with AdminClient(url) as client:
            return call(client)
    except AdminError as err:
        typer.echo(f"error {err.status}{f' ({err.code})' if err.code else ''}: {err.message}", err=True)
    except httpx.HTTPError as err:
        typer.echo(f"cannot reach {url}: {err}", err=True)
    raise typer.Exit(1)


def _console():
    """A rich console for the admin commands' tables (without importing Ray, as runner.console does)."""
    from rich.console import Console

    return Console(soft_wrap=True)


def _parsed(parse, items: list[str], hint: str):
    """``parse(items)``; a ValueError is a usage error (exit 2)."""
    try:
        return parse(items)
    except ValueError as err:
        raise typer.BadParameter(str(err), param_hint=hint) from None


@traffic_app.command("show")
def traffic_show(url: str = URL_OPTION) -> None:
    """Every family's variants: weight, share of requests, shadow fraction, default."""
    from pixelfleet.serve.admin_client import traffic_table

    console = _console()
    traffic = _admin_call(url, lambda c: c.traffic())
    for family, info in traffic["families"].items():
        console.print(traffic_table(family, info))


@traffic_app.command("set")
def traffic_set(
    family: str = typer.Argument(..., help="the family, e.g. superres"),
    weights: Optional[list[str]] = typer.Argument(None, help="VARIANT=WEIGHT ... (weights >= 0, shares are weight / sum); omitted: unchanged"),
    shadow: list[str] = typer.Option([], "--shadow", help="VARIANT=FRACTION of requests copied to it, in (0, 1] (repeatable; replaces the shadows)"),
    clear_shadow: bool = typer.Option(False, "--clear-shadow", help="no shadows"),
    url: str = URL_OPTION,
) -> None:
    """Change a family's A/B weights and/or shadows (PUT /v1/traffic/FAMILY), live and persisted."""
    from pixelfleet.serve.admin_client import parse_number_assignments, traffic_table

    console = _console()
    new_weights = _parsed(parse_number_assignments, weights or [], "VARIANT=WEIGHT") if weights else None
    new_shadow = _parsed(lambda items: parse_number_assignments(items, "fraction"), shadow, "--shadow") if shadow else None
    if clear_shadow and shadow:
        raise typer.BadParameter("give --shadow or --clear-shadow, not both", param_hint="--clear-shadow")
    if clear_shadow:
        new_shadow = {}
    if new_weights is None and new_shadow is None:
        raise typer.BadParameter("give VARIANT=WEIGHT arguments, --shadow or --clear-shadow", param_hint="VARIANT=WEIGHT")
    changed = _admin_call(url, lambda c: c.set_traffic(family, new_weights, new_shadow))
    console.print(traffic_table(family, changed))


@traffic_app.command("report")
def traffic_report(
    family: str = typer.Argument(..., help="the family to report on"),
    url: str = URL_OPTION,
    metrics_url: Optional[str] = typer.Option(None, "--metrics-url", help="Prometheus text to read; default: URL/metrics"),
    operation: Optional[str] = typer.Option(None, help="only this operation (default: all of the family's)"),
    alpha: float = typer.Option(0.05, min=1e-6, max=0.5, help="significance level of each test"),
    power: float = typer.Option(0.8, min=0.5, max=0.999, help="power the sample size is computed for"),
    mde: float = typer.Option(0.01, min=1e-6, max=1.0, help="smallest error-rate difference worth deciding on (absolute, 0.01 = 1 point)"),
    json_: bool = typer.Option(False, "--json", help="print the report as JSON"),
) -> None:
    """Compare a family's variants from the app's metrics, each against the highest-weight variant.

    Requests, 5xx and 4xx, latency p50/p95/p99, shadows; Fisher's exact test on the error
    rates, a chi-square test on the latency buckets, and the requests per arm needed to decide.
    """
    import json

    from pixelfleet.serve.report import build_report, report_table, verdict_lines

    console = _console()
    traffic, text = _admin_call(url, lambda c: (c.traffic(), c.metrics_text(metrics_url)))
    if family not in traffic["families"]:
        typer.echo(f"unknown family {family!r}; served: {', '.join(sorted(traffic['families']))}", err=True)
        raise typer.Exit(1)
    info = traffic["families"][family]
    try:
        report = build_report(
            text, family, info["weights"], info.get("default"), operation, info.get("variants", ()), alpha, power, mde, application=traffic.get("app")
        )
    except ValueError as err:
        typer.echo(f"{metrics_url or url + '/metrics'} is not Prometheus text: {err}", err=True)
        raise typer.Exit(1) from None
    if json_:
        typer.echo(json.dumps(report, indent=2))
        return
    console.print(report_table(report))
    for line in verdict_lines(report):
        console.print(line)


@variants_app.command("list")
def variants_list(
    family: Optional[str] = typer.Argument(None, help="only this family"),
    url: str = URL_OPTION,
) -> None:
    """Every family's variants (GET /v1/models): weight, shadow, default, and their cards."""
    from pixelfleet.serve.admin_client import variants_table

    console = _console()
    families = _admin_call(url, lambda c: c.models())["families"]
    if family is not None and family not in families:
        typer.echo(f"unknown family {family!r}; served: {', '.join(sorted(families))}", err=True)
        raise typer.Exit(1)
    for name, listing in families.items():
        if family in (None, name):
            console.print(variants_table(name, listing))


@variants_app.command("add")
def variants_add(
    family: str = typer.Argument(..., help="the family, e.g. superres"),
    name: str = typer.Argument(..., help="the new variant's id"),
    weights: Optional[str] = typer.Option(None, "--weights", help="its weights: a model folder or builtin:NAME, as in the config (families that load weights need it)"),
    set_: list[str] = typer.Option([], "--set", help="another field of the variant's config: --set tile_size=128 (YAML value; repeatable)"),
    num_cpus: Optional[float] = typer.Option(None, "--num-cpus", min=0, help="CPUs per replica (ray_actor_options)"),
    num_gpus: Optional[float] = typer.Option(None, "--num-gpus", min=0, help="GPUs per replica (ray_actor_options)"),
    replicas: Optional[int] = typer.Option(None, "--replicas", min=1, help="number of replicas"),
    url: str = URL_OPTION,
) -> None:
    """Deploy a new variant at weight 0 (POST /v1/variants/FAMILY); waits until its replica runs."""
    from pixelfleet.serve.admin_client import ADD_TIMEOUT_S, parse_settings, traffic_table, variant_request

    console = _console()
    settings = _parsed(parse_settings, set_, "--set")
    body = variant_request(name, weights, settings, num_cpus, num_gpus, replicas)
    added = _admin_call(url, lambda c: c.add_variant(family, body, ADD_TIMEOUT_S))
    console.print(f"added {family}/{name} (Serve application {added['app']}) at weight 0")
    console.print(traffic_table(family, added["traffic"]))


@variants_app.command("remove")
def variants_remove(
    family: str = typer.Argument(..., help="the family"),
    name: str = typer.Argument(..., help="the variant (weight 0 and no shadow share first)"),
    url: str = URL_OPTION,
) -> None:
    """Take a variant out of service (DELETE /v1/variants/FAMILY/NAME)."""
    from pixelfleet.serve.admin_client import traffic_table

    console = _console()
    removed = _admin_call(url, lambda c: c.remove_variant(family, name))
    console.print(f"removed {family}/{name}")
    console.print(traffic_table(family, removed["traffic"]))


def main() -> None:
    """Entry point of the ``pixelfleet`` console script."""
    app()


if __name__ == "__main__":
    main()
