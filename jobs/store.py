"""The job store: SQLAlchemy 2 models of the ``jobs`` and ``webhook_deliveries`` tables and every
query the REST routes and the worker make.

One row per job holds everything about it: the request (family, operation, params, input URL,
callback URL, priority), its state (``queued`` -> ``running`` -> ``succeeded`` | ``failed`` |
``cancelled``), the lease of the worker running it (``lease_owner``, ``lease_expires_at``), the
retry schedule (``attempts``, ``run_after``), progress (percent, stage), the last checkpoint,
and the result (a storage URL, or a JSON object) or the error.

Claiming is one atomic step per database: on PostgreSQL ``SELECT ... FOR UPDATE SKIP LOCKED``
then ``UPDATE`` in one transaction (concurrent workers skip each other's rows); on SQLite one
conditional ``UPDATE ... WHERE seq = (SELECT ...) RETURNING`` inside a ``BEGIN IMMEDIATE``
transaction (SQLite has one writer at a time; every write here begins IMMEDIATE, so no write ever
works from a stale snapshot). A job whose lease expired (its worker died) is claimable again;
every claim counts an attempt. Every write a worker makes is conditional on still holding the
lease, so a worker that lost its job (expired lease, cancel) can never overwrite what another run
wrote: a job completes once, visibly.

Times are naive UTC ``datetime`` values taken from the caller's clock (:func:`utcnow`).
The schema is created and upgraded by Alembic (``jobs/migrations``) in :meth:`JobStore.migrate`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import JSON, BigInteger, DateTime, Float, ForeignKey, Index, Integer, String, Text, UniqueConstraint, and_, create_engine, event, or_, select, update
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = "queued", "running", "succeeded", "failed", "cancelled"
STATES = (QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED)
TERMINAL = frozenset({SUCCEEDED, FAILED, CANCELLED})
MIGRATIONS = Path(__file__).parent / "migrations"
VERSION_TABLE = "jobs_alembic_version"
#: PostgreSQL advisory lock key held while migrating (two replicas starting at once wait in turn)
MIGRATION_LOCK_KEY = 0x70786A6F6273  # "pxjobs"

Id = BigInteger().with_variant(Integer(), "sqlite")  # SQLite autoincrements only INTEGER PRIMARY KEY


def utcnow() -> dt.datetime:
    """Now, naive UTC (what every time column holds)."""
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


class Base(DeclarativeBase):
    """The job store's declarative base: its ``metadata`` is what Alembic migrates."""


class Job(Base):
    """One job. ``seq`` orders jobs (and pages ``GET /v1/jobs``); ``id`` is the public id."""

    __tablename__ = "jobs"

    seq: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(32), unique=True)
    owner: Mapped[str] = mapped_column(String(256))
    idempotency_key: Mapped[str | None] = mapped_column(String(256))
    request_hash: Mapped[str] = mapped_column(String(64))
    family: Mapped[str] = mapped_column(String(64))
    operation: Mapped[str] = mapped_column(String(64))
    params: Mapped[dict] = mapped_column(JSON)
    model: Mapped[str | None] = mapped_column(String(64))
    input: Mapped[dict | None] = mapped_column(JSON)
    callback_url: Mapped[str | None] = mapped_column(Text)
    priority: Mapped[int] = mapped_column(Integer, default=0)
    state: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer)
    run_after: Mapped[dt.datetime] = mapped_column(DateTime)
    lease_owner: Mapped[str | None] = mapped_column(String(128))
    lease_expires_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    stage: Mapped[str | None] = mapped_column(String(64))
    checkpoint: Mapped[dict | None] = mapped_column(JSON)
    result_url: Mapped[str | None] = mapped_column(Text)
    result_media_type: Mapped[str | None] = mapped_column(String(128))
    result: Mapped[dict | None] = mapped_column(JSON)
    variant: Mapped[str | None] = mapped_column(String(128))
    error: Mapped[dict | None] = mapped_column(JSON)
    webhook_state: Mapped[str | None] = mapped_column(String(16))
    webhook_next_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime)
    started_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime)

    __table_args__ = (
        UniqueConstraint("owner", "idempotency_key", name="uq_jobs_owner_idempotency_key"),
        Index("ix_jobs_claim", "state", "priority", "run_after"),
        Index("ix_jobs_owner_seq", "owner", "seq"),
        Index("ix_jobs_webhook_due", "webhook_state", "webhook_next_at"),
    )

    def public(self) -> dict[str, Any]:
        """The job as ``GET /v1/jobs/{id}`` shows it (no owner, no lease, no storage URLs)."""

        def iso(value: dt.datetime | None) -> str | None:
            return value.replace(tzinfo=dt.timezone.utc).isoformat() if value is not None else None

        return {
            "id": self.id,
            "state": self.state,
            "family": self.family,
            "operation": self.operation,
            "params": self.params,
            "priority": self.priority,
            "progress": {"percent": round(self.progress, 2), "stage": self.stage},
            "attempts": self.attempts,
            "max_attempts": self.max_attempts,
            "variant": self.variant,
            "error": self.error,
            "result": {"media_type": self.result_media_type} if self.state == SUCCEEDED else None,
            "callback_url": self.callback_url,
            "webhook": {"state": self.webhook_state} if self.webhook_state else None,
            "created_at": iso(self.created_at),
            "started_at": iso(self.started_at),
            "finished_at": iso(self.finished_at),
            "next_attempt_at": iso(self.run_after) if self.state == QUEUED and self.attempts else None,
        }


class WebhookDelivery(Base):
    """One attempt to deliver a job's webhook: when, the receiver's status code or the error, and
    when the next attempt is due (None: delivered, or given up)."""

    __tablename__ = "webhook_deliveries"

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(String(32), ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    attempt: Mapped[int] = mapped_column(Integer)
    at: Mapped[dt.datetime] = mapped_column(DateTime)
    status_code: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    next_attempt_at: Mapped[dt.datetime | None] = mapped_column(DateTime)

    def public(self) -> dict[str, Any]:
        """The attempt as ``GET /v1/jobs/{id}`` shows it under ``webhook.deliveries``."""
        return {
            "attempt": self.attempt,
            "at": self.at.replace(tzinfo=dt.timezone.utc).isoformat(),
            "status_code": self.status_code,
            "error": self.error,
            "next_attempt_at": self.next_attempt_at.replace(tzinfo=dt.timezone.utc).isoformat() if self.next_attempt_at else None,
        }


@dataclass(frozen=True)
class NewJob:
    """A submitted job, before it has a row. ``input``: where its input lies in storage
    (``{"url": ...}``, or what a batch names: ``{"urls": [...]}``); ``request_hash``: see
    :func:`request_hash`; ``id``: the job's id (a UUID4 hex), made here when empty."""

    owner: str
    family: str
    operation: str
    params: dict
    request_hash: str
    input: dict | None = None
    model: str | None = None
    callback_url: str | None = None
    priority: int = 0
    idempotency_key: str | None = None
    id: str = ""


def request_hash(body: dict) -> str:
    """Hex SHA-256 of a submit's JSON body, keys sorted: a retried submit under the same
    ``Idempotency-Key`` must carry the same body."""
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


class IdempotencyMismatch(Exception):
    """An ``Idempotency-Key`` reused for a different request; ``job`` is the one it named first."""

    def __init__(self, job: Job) -> None:
        super().__init__(f"idempotency key already used for job {job.id} with a different request")
        self.job = job


def _engine(url: str) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=10)
    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"timeout": 30})

    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection, _record) -> None:
        dbapi_connection.isolation_level = None  # the driver emits no BEGIN; _begin below does
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")  # readers never block the writer, nor it them
        cursor.execute("PRAGMA synchronous=FULL")  # a commit (a 202'd job) survives a power loss, not only a crash
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")  # wait up to 30 s for the write lock
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(connection) -> None:  # SQLAlchemy's documented recipe for SQLite transactions
        immediate = connection.get_execution_options().get("immediate", False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


class JobStore:
    """Every query on the job tables. Methods are blocking (run them in a thread from async code).

    Args:
        url: SQLAlchemy URL: ``sqlite:///PATH`` (the folder is created) or
            ``postgresql+psycopg://...``.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = _engine(url)
        self.dialect = self.engine.dialect.name
        self._writer = self.engine.execution_options(immediate=True)

    def close(self) -> None:
        """Close the connection pool."""
        self.engine.dispose()

    # ---- schema ----

    def migrate(self) -> None:
        """Upgrade the schema to the newest Alembic revision (``jobs/migrations``); safe to call
        from several processes at once (SQLite: inside a ``BEGIN IMMEDIATE`` transaction;
        PostgreSQL: under an advisory lock)."""
        from alembic import command
        from alembic.config import Config

        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        with self._writer.begin() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, "head")

    # ---- sessions ----

    @contextmanager
    def _read(self) -> Iterator[Session]:
        with Session(self.engine, expire_on_commit=False) as session:
            yield session

    @contextmanager
    def _write(self) -> Iterator[Session]:
        with Session(self._writer, expire_on_commit=False) as session, session.begin():
            yield session

    # ---- the caller's side ----

    def submit(self, new: NewJob, max_attempts: int) -> tuple[Job, bool]:
        """Insert a queued job, committed when this returns; ``(job, True)``. With an
        idempotency key already used by the same owner: ``(that job, False)``.

        Raises:
            IdempotencyMismatch: the key was used for a request with another body.
        """
        if new.idempotency_key is not None:
            existing = self.by_key(new.owner, new.idempotency_key)
            if existing is not None:
                return self._replay(existing, new)
        now = utcnow()
        job = Job(
            id=new.id or uuid.uuid4().hex, owner=new.owner, idempotency_key=new.idempotency_key, request_hash=new.request_hash,
            family=new.family, operation=new.operation, params=new.params, model=new.model, input=new.input,
            callback_url=new.callback_url, priority=new.priority, state=QUEUED, attempts=0, max_attempts=max_attempts,
            run_after=now, progress=0.0, created_at=now, updated_at=now,
        )  # fmt: skip
        try:
            with self._write() as session:
                session.add(job)
        except IntegrityError:
            existing = self.by_key(new.owner, new.idempotency_key) if new.idempotency_key is not None else None
            if existing is None:
                raise
            return self._replay(existing, new)
        return job, True

    def _replay(self, existing: Job, new: NewJob) -> tuple[Job, bool]:
        if existing.request_hash != new.request_hash:
            raise IdempotencyMismatch(existing)
        return existing, False

    def by_key(self, owner: str, key: str) -> Job | None:
        """``owner``'s job submitted with idempotency key ``key``, if any."""
        with self._read() as session:
            return session.scalars(select(Job).where(Job.owner == owner, Job.idempotency_key == key)).one_or_none()

    def get(self, job_id: str, owner: str | None = None) -> Job | None:
        """The job ``job_id``, if it exists and (with ``owner``) belongs to ``owner``."""
        query = select(Job).where(Job.id == job_id)
        if owner is not None:
            query = query.where(Job.owner == owner)
        with self._read() as session:
            return session.scalars(query).one_or_none()

    def list(self, owner: str, state: str | None = None, limit: int = 50, before: int | None = None) -> list[Job]:
        """``owner``'s jobs, newest first, at most ``limit``; ``before``: only jobs older than the
        one with that ``seq`` (the cursor of the next page)."""
        query = select(Job).where(Job.owner == owner)
        if state is not None:
            query = query.where(Job.state == state)
        if before is not None:
            query = query.where(Job.seq < before)
        with self._read() as session:
            return list(session.scalars(query.order_by(Job.seq.desc()).limit(limit)))

    def cancel(self, job_id: str, owner: str) -> Job | None:
        """Cancel a queued or running job (a running one stops at its worker's next heartbeat;
        what it finishes after that is discarded). A finished job is left as it is. Returns the
        job as it now is, or None if ``owner`` has no such job."""
        now = utcnow()
        with self._write() as session:
            session.execute(
                update(Job)
                .where(Job.id == job_id, Job.owner == owner, Job.state.in_((QUEUED, RUNNING)))
                .values(state=CANCELLED, finished_at=now, updated_at=now, lease_owner=None, lease_expires_at=None)
            )
        return self.get(job_id, owner)

    def deliveries(self, job_id: str) -> list[WebhookDelivery]:
        """The webhook delivery attempts of a job, oldest first."""
        with self._read() as session:
            return list(session.scalars(select(WebhookDelivery).where(WebhookDelivery.job_id == job_id).order_by(WebhookDelivery.id)))

    # ---- the worker's side ----

    def claim(self, worker: str, lease_s: float) -> Job | None:
        """Take the most urgent runnable job for ``worker`` (highest priority, then oldest): a
        queued job whose ``run_after`` has come, or a running job whose lease expired. It becomes
        ``running`` with a lease of ``lease_s`` seconds and one more attempt. None if there is none.
        """
        now = utcnow()
        claimable = or_(
            and_(Job.state == QUEUED, Job.run_after <= now),
            and_(Job.state == RUNNING, Job.lease_expires_at < now, Job.attempts < Job.max_attempts),
        )
        order = (Job.priority.desc(), Job.seq)
        values = dict(
            state=RUNNING, lease_owner=worker, lease_expires_at=now + dt.timedelta(seconds=lease_s), attempts=Job.attempts + 1,
            updated_at=now, started_at=now,
        )  # fmt: skip
        with self._write() as session:
            if self.dialect == "postgresql":
                seq = session.scalars(select(Job.seq).where(claimable).order_by(*order).limit(1).with_for_update(skip_locked=True)).first()
                if seq is None:
                    return None
                session.execute(update(Job).where(Job.seq == seq).values(**values))
            else:
                candidate = select(Job.seq).where(claimable).order_by(*order).limit(1).scalar_subquery()
                seq = session.scalars(update(Job).where(Job.seq == candidate, claimable).values(**values).returning(Job.seq)).first()
                if seq is None:
                    return None
            return session.scalars(select(Job).where(Job.seq == seq)).one()

    def _owned(self, job_id: str, worker: str):
        return update(Job).where(Job.id == job_id, Job.lease_owner == worker, Job.state == RUNNING)

    def heartbeat(self, job_id: str, worker: str, lease_s: float) -> bool:
        """Extend ``worker``'s lease on a running job; False if it no longer holds it (the job was
        cancelled, or its lease expired and another worker took it)."""
        now = utcnow()
        with self._write() as session:
            done = session.execute(self._owned(job_id, worker).values(lease_expires_at=now + dt.timedelta(seconds=lease_s), updated_at=now))
            return done.rowcount == 1

    def progress(self, job_id: str, worker: str, percent: float, stage: str | None, lease_s: float) -> bool:
        """Record progress (``percent`` in [0, 100]) and renew the lease; False if not held."""
        now = utcnow()
        values = dict(progress=min(max(percent, 0.0), 100.0), stage=stage, lease_expires_at=now + dt.timedelta(seconds=lease_s), updated_at=now)
        with self._write() as session:
            return session.execute(self._owned(job_id, worker).values(**values)).rowcount == 1

    def save_checkpoint(self, job_id: str, worker: str, state: dict, lease_s: float) -> bool:
        """Persist a checkpoint (a JSON object) and renew the lease; False if not held."""
        now = utcnow()
        values = dict(checkpoint=state, lease_expires_at=now + dt.timedelta(seconds=lease_s), updated_at=now)
        with self._write() as session:
            return session.execute(self._owned(job_id, worker).values(**values)).rowcount == 1

    def succeed(
        self, job_id: str, worker: str, *, result_url: str | None, media_type: str | None, variant: str | None,
        result: dict | None = None, webhook: bool = False,
    ) -> bool:  # fmt: skip
        """Mark the job ``succeeded`` with its result, if ``worker`` still holds it; False
        otherwise (the result is then not the job's: another run's or none). ``webhook``: a
        delivery to the callback URL is due now."""
        now = utcnow()
        values = dict(
            state=SUCCEEDED, result_url=result_url, result_media_type=media_type, variant=variant, result=result, progress=100.0,
            finished_at=now, updated_at=now, lease_owner=None, lease_expires_at=None, error=None,
        )  # fmt: skip
        if webhook:
            values.update(webhook_state="pending", webhook_next_at=now)
        with self._write() as session:
            return session.execute(self._owned(job_id, worker).values(**values)).rowcount == 1

    def fail(self, job_id: str, worker: str, error: dict, retry_in_s: float | None, webhook: bool = False) -> str | None:
        """Record a failed run: with ``retry_in_s`` (and attempts left) the job is queued again
        to run after that many seconds, else it is ``failed`` with ``error`` kept
        (``{"code", "message"}``). Returns the new state, or None if ``worker`` no longer holds it."""
        now = utcnow()
        with self._write() as session:
            job = session.scalars(select(Job).where(Job.id == job_id, Job.lease_owner == worker, Job.state == RUNNING)).one_or_none()
            if job is None:
                return None
            base = self._owned(job_id, worker)
            if retry_in_s is not None and job.attempts < job.max_attempts:
                session.execute(base.values(
                    state=QUEUED, error=error, run_after=now + dt.timedelta(seconds=retry_in_s), lease_owner=None, lease_expires_at=None,
                    updated_at=now,
                ))  # fmt: skip
                return QUEUED
            values = dict(state=FAILED, error=error, finished_at=now, updated_at=now, lease_owner=None, lease_expires_at=None)
            if webhook:
                values.update(webhook_state="pending", webhook_next_at=now)
            session.execute(base.values(**values))
            return FAILED

    def release(self, job_id: str, worker: str) -> bool:
        """Hand a running job back to the queue without counting the run (its worker is shutting
        down cleanly); False if ``worker`` does not hold it."""
        now = utcnow()
        values = dict(state=QUEUED, attempts=Job.attempts - 1, run_after=now, lease_owner=None, lease_expires_at=None, updated_at=now)
        with self._write() as session:
            return session.execute(self._owned(job_id, worker).values(**values)).rowcount == 1

    def give_up_exhausted(self) -> list[str]:
        """Fail the running jobs whose lease expired after their last allowed attempt (their
        worker died on every run); returns their ids. The worker calls it before claiming."""
        now = utcnow()
        error = {"code": "worker_lost", "message": "the job's worker stopped answering on every attempt"}
        lost = (Job.state == RUNNING, Job.lease_expires_at < now, Job.attempts >= Job.max_attempts)
        values = dict(state=FAILED, error=error, finished_at=now, updated_at=now, lease_owner=None, lease_expires_at=None)
        with self._write() as session:  # two UPDATEs with the full condition each: no other row is touched
            ids = list(session.scalars(
                update(Job).where(*lost, Job.callback_url.is_not(None)).values(**values, webhook_state="pending", webhook_next_at=now)
                .returning(Job.id)
            ))  # fmt: skip
            ids += session.scalars(update(Job).where(*lost, Job.callback_url.is_(None)).values(**values).returning(Job.id))
            return ids

    # ---- webhooks: a schedule kept in the rows ----

    def due_webhooks(self, limit: int = 10) -> list[Job]:
        """Finished jobs whose webhook delivery is due now, oldest due first."""
        now = utcnow()
        query = select(Job).where(Job.webhook_state == "pending", Job.webhook_next_at <= now).order_by(Job.webhook_next_at).limit(limit)
        with self._read() as session:
            return list(session.scalars(query))

    def take_webhook(self, job_id: str, hold_s: float) -> bool:
        """Reserve a due delivery for ``hold_s`` seconds (its ``webhook_next_at`` moves on), so
        that one worker delivers it at a time; False if another worker took it first."""
        now = utcnow()
        with self._write() as session:
            done = session.execute(
                update(Job).where(Job.id == job_id, Job.webhook_state == "pending", Job.webhook_next_at <= now)
                .values(webhook_next_at=now + dt.timedelta(seconds=hold_s))
            )  # fmt: skip
            return done.rowcount == 1

    def record_delivery(self, job_id: str, status_code: int | None, error: str | None, next_attempt_at: dt.datetime | None, delivered: bool) -> int:
        """Record one delivery attempt; ``next_attempt_at``: when to try again (None: stop).
        Sets the job's webhook state to ``delivered``, ``pending`` or ``failed``. Returns the
        attempt's number (1-based)."""
        now = utcnow()
        with self._write() as session:
            attempt = len(session.scalars(select(WebhookDelivery.id).where(WebhookDelivery.job_id == job_id)).all()) + 1
            session.add(WebhookDelivery(job_id=job_id, attempt=attempt, at=now, status_code=status_code, error=error,
                                        next_attempt_at=None if delivered else next_attempt_at))  # fmt: skip
            state = "delivered" if delivered else ("pending" if next_attempt_at is not None else "failed")
            session.execute(update(Job).where(Job.id == job_id).values(webhook_state=state, webhook_next_at=None if delivered else next_attempt_at))
            return attempt
