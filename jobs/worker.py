"""The job worker: claims jobs from the store and runs them through the app's ingress, as a Serve
deployment of its own (:class:`JobWorker`) or inside each Ingress replica (``jobs.worker:
ingress``, one process fewer); :class:`JobRunner` is the same loop in both.

Each replica runs one asyncio loop, started in ``__init__``: give up jobs whose worker died on
their last attempt, claim runnable jobs up to ``jobs.concurrency`` (a lease of ``lease_s``
seconds each), deliver due webhooks, then sleep ``poll_interval_s`` or until :meth:`JobRunner.wake`
(the ingress calls it after a submit); webhook deliveries run in a task of their own. Each
claim gets its own lease token (the row's ``lease_owner``), renewed every ``heartbeat_s``;
when a renewal finds the job no longer ours (cancelled, or the lease expired and another worker
took it), its work is cancelled and whatever it produced is dropped. A replica that dies stops
renewing: its jobs' leases expire and any replica claims them again (``attempts`` counts each
run). A replica stopped cleanly (Serve calls ``__del__``) hands its jobs back at once.

Outcomes: success writes the result to storage (``results/<job>/<attempt>.<ext>``, so two runs
never share a file) and marks the job ``succeeded`` only if the lease is still held; a 4xx
error (bad image, bad params) fails the job at once; anything else (5xx, a lost replica)
queues it again after ``min(backoff_s * 2 ** (attempt - 1), backoff_max_s)`` seconds until
``max_attempts`` runs, then fails it with the error kept.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import uuid
from typing import Any

import httpx
from ray import serve
from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError

from pixelfleet.jobs.config import JobsConfig
from pixelfleet.jobs.context import InferResult
from pixelfleet.jobs.storage import Storage
from pixelfleet.jobs.store import FAILED, Job, JobStore
from pixelfleet.models.errors import PixelfleetError

logger = logging.getLogger("ray.serve")
#: result file extension by media type
EXTENSIONS = {"image/png": ".png", "image/jpeg": ".jpg", "image/webp": ".webp", "application/json": ".json"}
#: operations that are not a family's but work on many inputs (jobs-io's modules)
COMPOSITE = ("batch", "video")


def error_of(err: BaseException) -> tuple[dict, bool]:
    """``({"code", "message"}, retry)`` for an exception raised by a job's work: a 4xx
    :class:`PixelfleetError` is the job's own fault (no retry); 5xx errors, a dead or overloaded
    ingress are transient (retry); anything else is an internal error (retry), its message not
    shown (it is logged with the traceback)."""
    if isinstance(err, PixelfleetError):
        return {"code": err.code, "message": err.message}, err.status >= 500
    if isinstance(err, (RayActorError, BackPressureError, DeploymentUnavailableError)):
        return {"code": "model_unavailable", "message": "the app's ingress was unavailable; retried"}, True
    logger.error("job failed with an unexpected error", exc_info=err)
    return {"code": "internal_error", "message": "internal error"}, True


class RunningJob:
    """The :class:`~pixelfleet.jobs.context.JobContext` of one claim of a job in this replica.

    ``lease`` is the claim's own token (``<worker id>/<random>``, the row's ``lease_owner``):
    every write of this run names it, so a later claim of the same job (by another replica, or
    by this one after its heartbeats failed for longer than the lease) makes this run's writes
    fail instead of mixing with the new run's."""

    def __init__(self, worker: JobRunner, job: Job) -> None:
        self._worker, self._job = worker, job
        self.lease: str = job.lease_owner or ""
        self.job_id, self.family, self.operation = job.id, job.family, job.operation
        self.params: dict = dict(job.params or {})
        self.model: str | None = job.model
        self.input: dict | None = job.input
        self.attempt: int = job.attempts
        self.resume_state: dict | None = job.checkpoint
        self.owner = job.owner
        self.caller = job.owner.partition(":")[2] or None  # the sticky A/B key: the name without its kind
        self._cancelled = False
        self.task: asyncio.Task | None = None

    async def infer(self, family: str, operation: str, data: bytes | dict[str, bytes], params: dict, model: str | None = None) -> InferResult:
        """One operation through the ingress's ``run_operation`` (see :class:`JobContext`)."""
        answer = await self._worker.ingress().run_operation.remote(family, operation, data, params, model, self.caller)
        return InferResult(answer["content"], answer["media_type"], answer["variant"])

    async def progress(self, done: int, total: int, stage: str) -> None:
        """Write ``100 * done / total`` percent and ``stage`` to the row, renewing the lease."""
        percent = 100.0 * done / total if total > 0 else 0.0
        config = self._worker.config
        if not await asyncio.to_thread(self._worker.store.progress, self.job_id, self.lease, percent, stage, config.lease_s):
            self.lost()

    async def checkpoint(self, state: dict) -> None:
        """Persist ``state`` in the row (a rerun's ``resume_state``), renewing the lease."""
        store, config = self._worker.store, self._worker.config
        if not await asyncio.to_thread(store.save_checkpoint, self.job_id, self.lease, state, config.lease_s):
            self.lost()

    def cancelled(self) -> bool:
        """Whether this run lost its job (cancelled, or claimed again): stop soon."""
        return self._cancelled

    def lost(self) -> None:
        """The job is no longer ours (cancelled, or taken over): stop its work."""
        self._cancelled = True
        if self.task is not None and not self.task.done():
            self.task.cancel()


class JobRunner:
    """Runs jobs from the store (see the module's docstring), in the Serve replica that makes it:
    a :class:`JobWorker` replica, or an Ingress replica (``jobs.worker: ingress``). Make it in
    the replica's constructor, on its event loop; call :meth:`stop` when the replica stops.

    Args:
        config: the app's ``jobs`` block (:class:`~pixelfleet.jobs.config.JobsConfig` as a dict).
        ingress: the name of the app's ingress deployment, which runs each operation
            (``run_operation``; in the same application as this runner).

    Raises:
        RayServeException: made outside a Serve replica.
        RuntimeError: made off the replica's event loop.
        sqlalchemy.exc.SQLAlchemyError: the store cannot be opened or migrated.
    """

    def __init__(self, config: dict, ingress: str = "Ingress") -> None:
        self.config = JobsConfig.model_validate(config)
        self.store = JobStore(self.config.url())
        self.store.migrate()
        self.storage = Storage(self.config.storage)
        context = serve.get_replica_context()
        self.app_name, self.ingress_name = context.app_name, ingress
        self.worker_id = f"{context.replica_id.unique_id}-{uuid.uuid4().hex[:8]}"
        self.running: dict[str, RunningJob] = {}
        self._ingress = None
        self._wake = asyncio.Event()
        self._http = httpx.AsyncClient()
        self._delivering: asyncio.Task | None = None
        self._loop = asyncio.get_running_loop().create_task(self._poll())
        logger.info("job worker %s polls %s every %.2f s", self.worker_id, self.store.engine.url.render_as_string(hide_password=True), self.config.poll_interval_s)

    def ingress(self):
        """The handle of this app's ingress (made on first use)."""
        if self._ingress is None:
            self._ingress = serve.get_deployment_handle(self.ingress_name, app_name=self.app_name)
        return self._ingress

    def wake(self) -> None:
        """Poll now (a job was submitted)."""
        self._wake.set()

    def status(self) -> dict[str, Any]:
        """This replica's worker id and the ids of the jobs it runs."""
        return {"worker": self.worker_id, "running": sorted(self.running)}

    def check_health(self) -> None:
        """Raises RuntimeError when the poll loop has stopped (for the replica's health check)."""
        if self._loop.done():
            raise RuntimeError("the job worker's poll loop stopped")

    async def stop(self) -> None:
        """The replica stops cleanly: stop polling, hand the running jobs back."""
        self._loop.cancel()
        for job in list(self.running.values()):
            if job.task is not None:
                job.task.cancel()
            try:
                await asyncio.to_thread(self.store.release, job.job_id, job.lease)
            except Exception:  # the store is gone too: the lease will expire instead
                logger.warning("could not hand job %s back; its lease will expire", job.job_id)
        await self._http.aclose()

    # ---- the loop ----

    async def _poll(self) -> None:
        while True:
            try:
                await self._tick()
            except asyncio.CancelledError:
                raise
            except Exception:  # the store is unreachable, say: log and poll again
                logger.exception("job worker poll failed")
            try:
                await asyncio.wait_for(self._wake.wait(), self.config.poll_interval_s)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()

    async def _tick(self) -> None:
        for job_id in await asyncio.to_thread(self.store.give_up_exhausted):
            logger.warning("job %s failed: its worker was lost on every attempt", job_id)
        while len(self.running) < self.config.concurrency:
            lease = f"{self.worker_id}/{uuid.uuid4().hex[:8]}"  # this claim's own token
            job = await asyncio.to_thread(self.store.claim, lease, self.config.lease_s)
            if job is None:
                break
            if job.id in self.running:  # our own earlier run lost its lease (heartbeats failed): it stops
                self.running[job.id].lost()
            running = RunningJob(self, job)
            self.running[job.id] = running
            asyncio.get_running_loop().create_task(self._run(running))
        if self._delivering is None or self._delivering.done():  # webhooks in a task of their own: a slow receiver holds up no claim
            from pixelfleet.jobs.webhooks import deliver_due

            self._delivering = asyncio.get_running_loop().create_task(deliver_due(self.store, self.config.webhooks, self._http))
            self._delivering.add_done_callback(_log_failure)

    async def _run(self, job: RunningJob) -> None:
        logger.info("job %s (%s/%s) attempt %d started", job.job_id, job.family, job.operation, job.attempt)
        job.task = asyncio.get_running_loop().create_task(self._execute(job))
        heartbeat = asyncio.get_running_loop().create_task(self._heartbeat(job))
        try:
            outcome = _as_dict(await job.task)
        except asyncio.CancelledError:
            if not job.cancelled():  # this replica is stopping
                raise
            logger.info("job %s stopped: cancelled or taken over", job.job_id)
            return
        except Exception as err:
            error, retry = error_of(err)
            webhook = job._job.callback_url is not None
            state = await asyncio.to_thread(
                self.store.fail, job.job_id, job.lease, error, self.config.backoff(job.attempt) if retry else None, webhook
            )
            logger.info("job %s attempt %d failed (%s): now %s", job.job_id, job.attempt, error["code"], state)
            if state == FAILED:
                self._wake.set()  # its webhook is due
            return
        finally:
            heartbeat.cancel()
            if self.running.get(job.job_id) is job:  # not a later claim of the same job
                del self.running[job.job_id]
            self._wake.set()  # a slot is free
        done = await asyncio.to_thread(
            self.store.succeed, job.job_id, job.lease, result_url=outcome.get("result_url"), media_type=outcome.get("media_type"),
            variant=outcome.get("variant"), result=outcome.get("result"), webhook=job._job.callback_url is not None,
        )  # fmt: skip
        if done:
            logger.info("job %s succeeded (attempt %d)", job.job_id, job.attempt)
            return
        logger.info("job %s finished after losing its lease; its result is dropped", job.job_id)
        if job.operation not in COMPOSITE and outcome.get("result_url"):  # this attempt's own file (batch/video outputs are shared)
            current = await asyncio.to_thread(self.store.get, job.job_id)
            if current is None or current.result_url != outcome["result_url"]:
                await asyncio.to_thread(self.storage.delete, outcome["result_url"])

    async def _heartbeat(self, job: RunningJob) -> None:
        while True:
            await asyncio.sleep(self.config.heartbeat_interval_s)
            try:
                held = await asyncio.to_thread(self.store.heartbeat, job.job_id, job.lease, self.config.lease_s)
            except Exception:  # the store did not answer: try again; the final write checks the lease
                logger.warning("heartbeat of job %s failed", job.job_id, exc_info=True)
                continue
            if not held:
                job.lost()
                return

    async def _execute(self, job: RunningJob) -> dict:
        """Run the job's work; returns ``{"result_url", "media_type", "variant", "result"}``."""
        if job.operation == "batch":
            from pixelfleet.jobs.batch import run_batch

            return await run_batch(job, self.storage)
        if job.operation == "video":
            from pixelfleet.jobs.video import run_video

            return await run_video(job, self.storage)
        data: bytes | dict[str, bytes] = {}  # a JSON-body operation takes named images (none: e.g. text-to-image)
        if job.input is not None:
            data = await asyncio.to_thread(self.storage.read_bytes, job.input["url"])
            if "as" in job.input:
                data = {job.input["as"]: data}
        answer = await job.infer(job.family, job.operation, data, job.params, job.model)
        content = answer.content if isinstance(answer.content, bytes) else _json_bytes(answer.content)
        media_type = answer.media_type if isinstance(answer.content, bytes) else "application/json"
        url = self.storage.result_url(job.job_id, f"{job.attempt}{EXTENSIONS.get(media_type, '.bin')}")
        url = await asyncio.to_thread(self.storage.write_bytes, url, content)
        return {"result_url": url, "media_type": media_type, "variant": answer.variant, "result": None}


@serve.deployment(num_replicas=1, ray_actor_options={"num_cpus": 0}, max_ongoing_requests=100)
class JobWorker(JobRunner):
    """A :class:`JobRunner` as a deployment of its own (``jobs.worker: deployment``): it scales
    apart from the ingress, and job work (video decoding, say) does not share the ingress's CPU.
    Handle methods: ``wake()``, ``status()``; Serve calls ``check_health``."""

    async def __del__(self) -> None:
        """Serve stops this replica cleanly: hand the running jobs back."""
        await self.stop()


def _log_failure(task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.error("webhook delivery failed", exc_info=task.exception())


def _json_bytes(content: dict) -> bytes:
    return json.dumps(content, separators=(",", ":")).encode()


def _as_dict(outcome: Any) -> dict:
    """A work's outcome (a dict, or ``jobs/work.py``'s WorkResult dataclass) as a dict."""
    return dataclasses.asdict(outcome) if dataclasses.is_dataclass(outcome) else dict(outcome)
