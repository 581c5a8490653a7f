"""The driver of a super-resolution training run: Ray Data, a Ray Train ``TorchTrainer``, and the
model folder it leaves. ``pixelfleet train srgan`` calls :func:`run`.

A run can join the Ray cluster that serves (:func:`connect`; ``pixelfleet train srgan`` joins the
one that ``pixelfleet up`` announced): its workers then take the CPUs (or GPUs) that the serving
replicas leave free (:func:`fit_resources`).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import ray
import yaml
from ray.train import CheckpointConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from pixelfleet.models.modelcard import ModelCard, TrainingRecord
from pixelfleet.train import rundir
from pixelfleet.train.rundir import RUN_SNAPSHOT, RunStateError  # noqa: F401 (re-exported: train lora, tests)
from pixelfleet.train.sr_data import patch_dataset
from pixelfleet.train.srgan.config import SRTrainConfig
from pixelfleet.train.srgan.loop import train_loop_per_worker

# Fields that must not change when a run resumes: its state (model, optimizers, schedule) depends on them.
RESUME_FIXED = ("phase", "architecture", "optim", "gan", "data.hr_patch", "precision", "scaling.num_workers")


def check_run_dir(cfg: SRTrainConfig, resume: bool) -> None:
    """:func:`pixelfleet.train.rundir.check_run_dir` with this trainer's :data:`RESUME_FIXED`.

    Raises:
        RunStateError: a fresh run over an existing one, nothing to resume, or changed fields.
    """
    rundir.check_run_dir(cfg, resume, RESUME_FIXED)


def changed_training_fields(before: SRTrainConfig, after: SRTrainConfig) -> list[str]:
    """The :data:`RESUME_FIXED` fields whose values differ between two configs of one run."""
    return rundir.changed_fields(before, after, RESUME_FIXED)


DATA_CPUS = 0.5  # CPUs that Ray Data's patch tasks need beside the workers (flat_map tasks of 0.25 CPU)
READ_CPUS = 1.0  # what each of Ray Data's read tasks reserves (its default) while the images are decoded
OWN_CLUSTER = ("", "local")  # addresses that mean: start a Ray of its own


class ClusterFullError(RuntimeError):
    """The Ray cluster has fewer CPUs or GPUs free than the run's workers and Ray Data need;
    without this check Ray Train would wait for them without end."""


def cpus_per_worker(cfg: SRTrainConfig, cluster_cpus: float) -> float:
    """The configured CPUs per worker; else 1 where that leaves :data:`DATA_CPUS` of
    ``cluster_cpus`` (the CPUs free for this run: on a joined cluster, what serving leaves) for
    Ray Data, else an even share of the rest (never below 0.1)."""
    if cfg.scaling.cpus_per_worker is not None:
        return cfg.scaling.cpus_per_worker
    workers = cfg.scaling.num_workers
    return max(0.1, min(1.0, (cluster_cpus - DATA_CPUS) / workers))


def scaling_config(cfg: SRTrainConfig, cluster_cpus: float) -> ScalingConfig:
    """Ray Train's ``ScalingConfig`` from the run's ``scaling`` section; ``cluster_cpus`` as in
    :func:`cpus_per_worker`."""
    resources = {"CPU": cpus_per_worker(cfg, cluster_cpus)}
    if cfg.scaling.use_gpu:
        resources["GPU"] = 1
    return ScalingConfig(num_workers=cfg.scaling.num_workers, use_gpu=cfg.scaling.use_gpu, resources_per_worker=resources)


def fit_resources(cfg: SRTrainConfig, free: dict[str, float], total: dict[str, float], where: str) -> float:
    """CPUs per worker for this run on a cluster with ``free`` of ``total`` resources (as
    ``ray.available_resources()`` and ``ray.cluster_resources()`` give them; CPUs and GPUs in
    Ray's logical units), checked to fit: the workers' CPUs plus :data:`DATA_CPUS` for Ray Data
    (and at least :data:`READ_CPUS` to read the images), and one GPU per worker with ``use_gpu``.
    ``where`` names the cluster in the message.

    Raises:
        ClusterFullError: they do not fit; the message says what is free, what serving (and any
            other job) reserves, and what to change.
    """
    workers = cfg.scaling.num_workers
    free_cpus, total_cpus = free.get("CPU", 0.0), total.get("CPU", 0.0)
    per_worker = cpus_per_worker(cfg, free_cpus)
    need = max(workers * per_worker + DATA_CPUS, READ_CPUS)
    reserved = total_cpus - free_cpus
    if free_cpus + 1e-6 < need:
        raise ClusterFullError(
            f"the Ray cluster at {where} has {free_cpus:g} CPUs free of {total_cpus:g}; serving (and any other job) "
            f"reserves {reserved:g}, and this run needs {need:g}: {workers} workers x {per_worker:g} CPUs "
            f"+ {DATA_CPUS:g} for Ray Data (reading the images takes {READ_CPUS:g}); set scaling.cpus_per_worker "
            f"(or fewer scaling.num_workers), or start pixelfleet up with --num-cpus of at least {reserved + need:g}"
        )
    if cfg.scaling.use_gpu and free.get("GPU", 0.0) + 1e-6 < workers:
        raise ClusterFullError(
            f"the Ray cluster at {where} has {free.get('GPU', 0.0):g} GPUs free of {total.get('GPU', 0.0):g}; "
            f"serving (and any other job) reserves {total.get('GPU', 0.0) - free.get('GPU', 0.0):g}, and this run's "
            f"{workers} workers need one each: set fewer scaling.num_workers, or serve on fewer GPUs"
        )
    return per_worker


@dataclass(frozen=True)
class Cluster:
    """The Ray cluster a run trains on."""

    address: str  # GCS host:port
    joined: bool  # False: this process started it (or had it already)
    source: str  # how it was chosen, for the console
    dashboard_url: str | None


def connect(address: str | None = None, source: str = "") -> Cluster:
    """Join the Ray cluster at ``address`` (chosen as ``source`` says), or start a Ray of its own
    when ``address`` is None, ``local`` or empty: with the dashboard on localhost, which Ray
    Train's State API calls need. With Ray already initialized here, that cluster.
    ``pixelfleet train srgan`` chooses the address (``pixelfleet.serve.runner.cluster_to_join``).

    Raises:
        ConnectionError: no Ray cluster answers at the address, or it refused this process
            (Ray's error; its cause says why, e.g. token authentication).
    """
    if ray.is_initialized():  # a caller's own Ray: nothing to join
        return Cluster(ray.get_runtime_context().gcs_address, False, "this process's Ray", None)
    if address is None or address.strip() in OWN_CLUSTER:
        # Ray Train's controller watches its actors through the State API, which the dashboard
        # serves: without it every second brings a warning. Bound to localhost.
        context = ray.init(address="local", include_dashboard=True, dashboard_host="127.0.0.1")
        return Cluster(ray.get_runtime_context().gcs_address, False, "started by this run", context.dashboard_url)
    context = ray.init(address=address.strip())
    return Cluster(ray.get_runtime_context().gcs_address, True, source or address, context.dashboard_url or None)


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _git_commit() -> str | None:
    try:
        done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10, cwd=Path(__file__).parent)
    except OSError:
        return None
    return done.stdout.strip() or None


def run(
    cfg: SRTrainConfig, command: str, resume: bool = False, address: str | None = None, address_source: str = ""
) -> ModelCard:
    """Train, then write ``cfg.output`` (model.safetensors + model.json with record and metrics).

    A psnr run writes its checkpoint of best validation PSNR-Y; a gan run its latest. Joins the
    Ray cluster at ``address`` (chosen as ``address_source`` says) or starts its own
    (:func:`connect`), takes the CPUs free there (:func:`fit_resources`), and says both on
    stderr. Returns the written card.

    Raises:
        RunStateError: see :func:`check_run_dir`.
        ClusterFullError: see :func:`fit_resources`.
        ConnectionError: see :func:`connect`.
        FileNotFoundError: a data folder is missing or empty.
        ray.train.TrainingFailedError: a worker failed.
    """
    check_run_dir(cfg, resume)
    cluster = connect(address, address_source)
    if cluster.joined:
        _say(f"joined the Ray cluster at {cluster.address} ({cluster.source})")
        if cluster.dashboard_url is None:
            _say(
                "  it runs no dashboard: Ray Train's placement group cleaner cannot reach the State API and warns "
                "about it once a second (harmless; start pixelfleet up with --dashboard to avoid it)"
            )
    free, total = ray.available_resources(), ray.cluster_resources()
    per_worker = fit_resources(cfg, free, total, cluster.address)
    _say(
        f"{free.get('CPU', 0.0):g} of {total.get('CPU', 0.0):g} CPUs free at {cluster.address}: "
        f"workers {cfg.scaling.num_workers} x {per_worker:g} CPU{' + 1 GPU' if cfg.scaling.use_gpu else ''}, "
        f"Ray Data {DATA_CPUS:g} CPU"
    )
    started = time.monotonic()
    worker_cfg = cfg.resolved()
    worker_cfg.run_dir.mkdir(parents=True, exist_ok=True)
    (worker_cfg.run_dir / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    dataset = patch_dataset(
        worker_cfg.data.train, cfg.architecture.scale, cfg.data.hr_patch, cfg.data.patches_per_image, cfg.data.hr_rescale
    )
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=worker_cfg.model_dump(mode="json"),
        scaling_config=scaling_config(cfg, free.get("CPU", 0.0)),
        datasets={"train": dataset},
        run_config=RunConfig(
            name=cfg.name,
            storage_path=str(worker_cfg.storage_path),
            # the best by validation PSNR-Y, and the latest (Ray Train always keeps it, for resuming)
            checkpoint_config=CheckpointConfig(num_to_keep=1, checkpoint_score_attribute="psnr_y", checkpoint_score_order="max"),
        ),
    )
    result = trainer.fit()
    last = result.metrics
    if cfg.phase == "psnr":
        checkpoint, chosen = max(result.best_checkpoints, key=lambda pair: pair[1].get("psnr_y", float("-inf")))
    else:
        checkpoint, chosen = result.checkpoint, last
    cfg.output.mkdir(parents=True, exist_ok=True)
    with checkpoint.as_directory() as folder:
        card = ModelCard.model_validate_json((Path(folder) / "model.json").read_text())
        shutil.copy(Path(folder) / card.weights, cfg.output / card.weights)
    card.metrics.dataset = str(cfg.data.val)
    card.training = TrainingRecord(
        command=command,
        commit=_git_commit(),
        phase=cfg.phase,
        init_from=str(cfg.init_from) if cfg.init_from else None,
        data=[str(p) for p in cfg.data.train],
        steps=int(last["step"]),
        checkpoint_step=int(chosen["step"]),
        batch_size=cfg.optim.batch_size,
        hr_patch=cfg.data.hr_patch,
        workers=cfg.scaling.num_workers,
        precision=str(last.get("precision", cfg.precision)),
        wall_time_s=round(time.monotonic() - started, 1),
        train_seconds=round(float(last["train_seconds"]), 1),
        resumed=resume,
        stopped_early=bool(last.get("stopped_early", 0.0)),
    )
    (cfg.output / "model.json").write_text(card.model_dump_json(indent=2) + "\n")
    return card
