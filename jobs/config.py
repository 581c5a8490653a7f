"""The ``jobs`` block of the app config: where the job store lives and how the worker runs.

:class:`JobsConfig` is a field of :class:`pixelfleet.serve.config.AppConfig`. With no
``database_url``, the store is a SQLite file ``jobs.sqlite`` in ``state_dir`` (by default the
folder of the app's ``state.path``, filled in by ``AppConfig``); ``postgresql+psycopg://...``
selects PostgreSQL (the one choice for more than one machine: a SQLite file is local to a node).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from pixelfleet.deployments.spec import Strict
from pixelfleet.jobs.storage import StorageConfig
from pixelfleet.jobs.webhooks import WebhookConfig

DEFAULT_STATE_DIR = "~/.pixelfleet"
SQLITE_FILE = "jobs.sqlite"


class JobsConfig(Strict):
    """Durable jobs (``/v1/jobs``, ``jobs/``): the store, the lease and retry schedule, the worker."""

    enabled: bool = Field(False, description="serve /v1/jobs and run the job worker")
    worker: Literal["deployment", "ingress"] = Field(
        "deployment",
        description="where the job worker's loop runs: 'deployment', a JobWorker deployment of its own (it scales apart from "
        "the ingress, and job work such as video decoding keeps off the ingress's CPU); 'ingress', inside each Ingress "
        "replica (one process fewer: ~120 MiB and 0.02 of a core less on a laptop; serve/configs/local.yaml)",
    )
    database_url: str | None = Field(
        None,
        description="SQLAlchemy URL of the job store: sqlite:///PATH or postgresql+psycopg://USER@HOST/DB; "
        "default: a SQLite file jobs.sqlite in state_dir",
    )
    state_dir: str | None = Field(
        None, description="local folder of the default SQLite file and storage root; default: the folder of state.path (else ~/.pixelfleet)"
    )
    poll_interval_s: float = Field(1.0, gt=0, le=60, description="seconds between the worker's polls of the store when idle")
    lease_s: float = Field(30.0, ge=1, le=3600, description="seconds a claim holds without a heartbeat; then another worker may run the job")
    heartbeat_s: float | None = Field(None, gt=0, description="seconds between lease renewals; default lease_s / 3")
    concurrency: int = Field(2, ge=1, le=256, description="jobs one worker replica runs at once (with worker: ingress, each Ingress replica)")
    max_attempts: int = Field(3, ge=1, le=100, description="runs of a job (retries and lost leases included) before it is failed")
    backoff_s: float = Field(2.0, gt=0, le=3600, description="delay before the first retry; doubles each attempt")
    backoff_max_s: float = Field(300.0, gt=0, le=86400, description="the longest delay between retries")
    page_size: int = Field(50, ge=1, le=1000, description="jobs per page of GET /v1/jobs by default")
    events_interval_s: float = Field(0.5, gt=0, le=60, description="seconds between the store reads of GET /v1/jobs/{id}/events")
    events_max_s: float = Field(300.0, gt=0, le=86400, description="seconds one GET /v1/jobs/{id}/events stream lasts at most (then the client reconnects)")
    storage: StorageConfig | None = Field(
        None,
        description="where inputs may come from and results go (jobs/storage.py); default (filled in): "
        "inputs below state_dir/jobs/files, results below state_dir/jobs/results",
    )
    webhooks: WebhookConfig = Field(default_factory=WebhookConfig, description="callback allow-list, signing secrets, retries (jobs/webhooks.py)")

    @model_validator(mode="after")
    def _heartbeat_within_lease(self) -> JobsConfig:
        if self.heartbeat_s is not None and self.heartbeat_s >= self.lease_s:
            raise ValueError(f"jobs.heartbeat_s ({self.heartbeat_s}) must be shorter than jobs.lease_s ({self.lease_s})")
        return self

    @model_validator(mode="after")
    def _default_storage(self) -> JobsConfig:
        if self.storage is None:
            folder = self.state_folder() / "jobs"
            self.storage = StorageConfig(roots=[str(folder / "files")], results=str(folder / "results"))
        return self

    @property
    def heartbeat_interval_s(self) -> float:
        """Seconds between lease renewals of a running job."""
        return self.heartbeat_s if self.heartbeat_s is not None else self.lease_s / 3

    def state_folder(self) -> Path:
        """The local state folder, ``~`` expanded."""
        return Path(self.state_dir or DEFAULT_STATE_DIR).expanduser()

    def url(self) -> str:
        """The store's SQLAlchemy URL (the default SQLite file's folder is not created here)."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.state_folder() / SQLITE_FILE}"

    def backoff(self, attempt: int) -> float:
        """Seconds to wait before the run after ``attempt`` (1-based) failed:
        ``min(backoff_s * 2 ** (attempt - 1), backoff_max_s)``."""
        return min(self.backoff_s * 2 ** max(attempt - 1, 0), self.backoff_max_s)
