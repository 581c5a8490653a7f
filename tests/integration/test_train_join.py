"""The loop on one cluster: ``pixelfleet train srgan`` joins the Ray cluster that serves (the test
session's, announced as ``pixelfleet up`` announces its own), its workers take the CPUs that the
replicas leave free, and a run that does not fit is refused instead of left waiting."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import ray

from pixelfleet.models.srnet import load_model, upscale_whole
from pixelfleet.train.srgan.config import load_config
from pixelfleet.train.srgan.run import DATA_CPUS, ClusterFullError, fit_resources
from tests.conftest import REPO, synthetic_photo
from tests.integration.conftest import SESSION_CPUS, joining_env

pytestmark = pytest.mark.integration
PIXELFLEET = [sys.executable, "-m", "pixelfleet.serve.cli"]


def test_training_joins_the_serving_cluster_and_writes_a_servable_model(trained_x4_model: Path):
    session = ray.get_runtime_context().gcs_address  # this pytest process is the session cluster's first driver
    log = (trained_x4_model.parent / "train.log").read_text()
    assert f"joined the Ray cluster at {session} (announced in " in log
    assert f"Connecting to existing Ray cluster at address: {session}" in log  # Ray's own line
    assert "Started a local Ray instance" not in log  # Ray's line when ray.init starts a cluster
    assert f"of {SESSION_CPUS:g} CPUs free at {session}: workers 1 x 1 CPU" in log

    # the session cluster's GCS recorded the training command as one of its drivers (jobs), now ended;
    # the State API (ray.util.state.list_jobs) would need the dashboard, which the session does not run
    jobs = [job for job in ray._private.state.jobs() if f"--output {trained_x4_model}" in job.get("Entrypoint", "")]
    assert len(jobs) == 1 and "train srgan" in jobs[0]["Entrypoint"] and jobs[0]["IsDead"]
    assert len(ray.nodes()) == 1  # it joined the session's node; it added none
    # none of Ray Train's actors outlives the run (its detached placement group cleaner included); Ray
    # Data's two per-cluster singletons (detached, 0 CPUs, reused by later jobs) stay by design
    ran = [actor for actor in ray._private.state.actors().values() if actor["JobID"] == jobs[0]["JobID"]]
    assert {actor["ActorClassName"] for actor in ran} >= {"TrainController", "RayTrainWorker", "PlacementGroupCleaner"}
    assert {a["ActorClassName"] for a in ran if a["State"] != "DEAD"} <= {"_StatsActor", "_AutoscalingCoordinatorActor"}
    free_before = float(re.search(rf"(\S+) of {SESSION_CPUS:g} CPUs free", log).group(1))
    # it gave back every CPU it took; more may be free than before, as a variant scaled to zero
    # (local.yaml) that an earlier test woke goes back to zero after 5 idle minutes, at any moment
    assert ray.available_resources().get("CPU", 0.0) >= free_before - 1e-6

    card = json.loads((trained_x4_model / "model.json").read_text())
    assert card["training"]["command"].startswith(f"pixelfleet train srgan --output {trained_x4_model} ")
    assert card["training"]["steps"] == 30 and card["training"]["workers"] == 1
    model, loaded = load_model(trained_x4_model)
    assert loaded.name == "joined-x4" and loaded.scale == 4
    assert loaded.architecture.channels == 16 and loaded.architecture.blocks == 2
    assert upscale_whole(model, synthetic_photo(10, 12)).shape == (40, 48, 3)


def test_a_run_that_does_not_fit_beside_the_replicas_is_refused(app_url: str, tmp_path: Path, tmp_path_factory):
    free = ray.available_resources().get("CPU", 0.0)
    command = [
        *PIXELFLEET, "train", "srgan", "--output", str(tmp_path / "model"), "--train-data", str(tmp_path),
        "--val-data", str(tmp_path), "--num-workers", "1", "--batch-size", "4", "--storage-path", str(tmp_path / "runs"),
        "--set", f"scaling.cpus_per_worker={SESSION_CPUS + 1}",
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=joining_env(tmp_path_factory), cwd=REPO)
    assert done.returncode == 2, done.stdout[-3000:] + done.stderr[-3000:]
    assert "joined the Ray cluster at" in done.stderr
    said = re.search(rf"has (\S+) CPUs free of {SESSION_CPUS:g}", done.stderr)
    assert said and float(said.group(1)) >= free - 1e-6  # more if a variant went back to zero meanwhile
    assert "start pixelfleet up with --num-cpus" in done.stderr and "scaling.cpus_per_worker" in done.stderr


def _config(**scaling) -> object:
    overrides = {"output": "o", "data.train": ["a"], "data.val": "b"}
    overrides.update({f"scaling.{key}": value for key, value in scaling.items()})
    return load_config(None, overrides)


def test_workers_take_the_free_cpus_not_the_total():
    # serving reserves 2 of 4: two workers share the 2 free CPUs, less Ray Data's
    per_worker = fit_resources(_config(), {"CPU": 2.0}, {"CPU": 4.0}, "here")
    assert per_worker == pytest.approx((2.0 - DATA_CPUS) / 2)
    assert fit_resources(_config(num_workers=1), {"CPU": 2.0}, {"CPU": 4.0}, "here") == 1.0
    with pytest.raises(ClusterFullError, match=r"has 0 CPUs free of 2; serving \(and any other job\) reserves 2"):
        fit_resources(_config(), {}, {"CPU": 2.0}, "here")
    with pytest.raises(ClusterFullError, match="needs 2.5"):
        fit_resources(_config(cpus_per_worker=1.0), {"CPU": 2.0}, {"CPU": 2.0}, "here")
    with pytest.raises(ClusterFullError, match="GPUs free"):
        fit_resources(_config(use_gpu=True), {"CPU": 8.0, "GPU": 1.0}, {"CPU": 8.0, "GPU": 2.0}, "here")


def test_the_cluster_to_join_is_the_flag_then_ray_address_then_a_live_announcement(tmp_path: Path, monkeypatch):
    from pixelfleet.serve.runner import CLUSTER_FILE_ENV, cluster_to_join

    announcement = tmp_path / "cluster.json"
    monkeypatch.setenv(CLUSTER_FILE_ENV, str(announcement))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert cluster_to_join(None) == (None, "a Ray of its own")  # nothing announced
    record = {"address": "127.0.0.1:6379", "pid": os.getpid(), "auth_mode": "disabled", "dashboard_url": None}
    announcement.write_text(json.dumps(record))
    assert cluster_to_join(None) == ("127.0.0.1:6379", f"announced in {announcement} by pid {os.getpid()}")
    assert cluster_to_join("10.0.0.1:6379") == ("10.0.0.1:6379", "--address")
    assert cluster_to_join("local")[0] is None
    monkeypatch.setenv("RAY_ADDRESS", "")  # set but empty: a Ray of its own, whatever is announced
    assert cluster_to_join(None)[0] is None
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.2:6379")
    assert cluster_to_join(None) == ("10.0.0.2:6379", "RAY_ADDRESS")
    monkeypatch.delenv("RAY_ADDRESS")
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)
    announcement.write_text(json.dumps({**record, "pid": int(ended.stdout)}))
    assert cluster_to_join(None)[0] is None  # its process has ended: not joined
