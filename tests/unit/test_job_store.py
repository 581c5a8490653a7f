"""The job store (jobs/store.py) on a SQLite file and on a real PostgreSQL server that this module
starts itself (the ``pgserver`` wheel: PostgreSQL binaries in a pip package, run as a subprocess
in a temporary folder): migrations, idempotent submits under concurrency, claims with leases
(SKIP LOCKED on PostgreSQL, a conditional UPDATE on SQLite), retries with backoff, cancel."""

from __future__ import annotations

import datetime as dt
import itertools
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import inspect, text

from pixelfleet.jobs import store as store_module
from pixelfleet.jobs.config import JobsConfig
from pixelfleet.jobs.store import CANCELLED, FAILED, QUEUED, RUNNING, SUCCEEDED, IdempotencyMismatch, JobStore, NewJob, request_hash
from pixelfleet.serve.config import AppConfig

@pytest.fixture(scope="module")
def postgres_url():
    """A PostgreSQL server for this module (started in ~4-8 s, initdb included; stopped at the end) with the job
    tables migrated: a ``postgresql+psycopg://`` URL."""
    pgserver = pytest.importorskip("pgserver", reason="the pgserver wheel is a test extra (pyproject: test)")
    # a folder of its own: pytest's numbered temporary folders are pruned by other pytest runs of the same user
    folder = tempfile.mkdtemp(prefix="pixelfleet-pg-")
    server = pgserver.get_server(folder, cleanup_mode="stop")  # "delete" waits seconds longer than stop + rmtree
    url = server.get_uri().replace("postgresql://", "postgresql+psycopg://", 1)
    store = JobStore(url)
    store.migrate()
    store.close()
    yield url
    server.cleanup()
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path):
    if request.param == "sqlite":
        store = JobStore(f"sqlite:///{tmp_path / 'jobs.sqlite'}")
        store.migrate()
    else:
        store = JobStore(request.getfixturevalue("postgres_url"))
        with store.engine.begin() as connection:  # a clean slate per test
            connection.execute(text("TRUNCATE jobs, webhook_deliveries RESTART IDENTITY CASCADE"))
    yield store
    store.close()


def new_job(owner: str = "alice", key: str | None = None, priority: int = 0, params: dict | None = None) -> NewJob:
    params = params or {"format": "png"}
    body = {"family": "invert", "operation": "invert", "params": params, "priority": priority}
    return NewJob(owner=owner, family="invert", operation="invert", params=params, request_hash=request_hash(body),
                  input={"url": "file:///tmp/in.png"}, priority=priority, idempotency_key=key)  # fmt: skip


def test_migrations_create_the_tables_and_run_again_harmlessly(store):
    store.migrate()  # a second replica starting: nothing to do
    tables = set(inspect(store.engine).get_table_names())
    assert {"jobs", "webhook_deliveries", "jobs_alembic_version"} <= tables


def test_idempotency_key_returns_the_same_job_per_owner(store):
    first, created = store.submit(new_job(key="k1"), max_attempts=3)
    again, created_again = store.submit(new_job(key="k1"), max_attempts=3)
    other_owner, created_other = store.submit(new_job(owner="bob", key="k1"), max_attempts=3)
    assert created and not created_again and created_other
    assert again.id == first.id and other_owner.id != first.id
    with pytest.raises(IdempotencyMismatch) as err:
        store.submit(new_job(key="k1", params={"format": "webp"}), max_attempts=3)
    assert err.value.job.id == first.id


def test_100_concurrent_submits_with_one_key_make_one_job(store):
    with ThreadPoolExecutor(max_workers=16) as pool:
        results = list(pool.map(lambda _: store.submit(new_job(key="same"), max_attempts=3), range(100)))
    assert len({job.id for job, _ in results}) == 1
    assert sum(created for _, created in results) == 1
    assert len(store.list("alice", limit=1000)) == 1


def test_claims_follow_priority_then_age_and_each_job_goes_to_one_worker(store):
    low, _ = store.submit(new_job(priority=0), 3)
    high, _ = store.submit(new_job(priority=5), 3)
    assert store.claim("w1", lease_s=30).id == high.id
    assert store.claim("w2", lease_s=30).id == low.id
    assert store.claim("w3", lease_s=30) is None
    for _ in range(30):
        store.submit(new_job(), 3)
    with ThreadPoolExecutor(max_workers=6) as pool:

        def drain(worker: int) -> list[str]:
            taken = []
            while (job := store.claim(f"worker-{worker}", lease_s=30)) is not None:
                taken.append(job.id)
            return taken

        claimed = list(itertools.chain.from_iterable(pool.map(drain, range(6))))
    assert len(claimed) == 30 and len(set(claimed)) == 30  # every job once, none twice


@pytest.fixture
def clock(monkeypatch):
    """Moves the store's clock (``jobs.store.utcnow``) on by ``clock(seconds)``: a lease or a
    backoff runs out without the test racing the wall clock."""
    offset = dt.timedelta()
    real = store_module.utcnow

    def advance(seconds: float) -> None:
        nonlocal offset
        offset += dt.timedelta(seconds=seconds)

    monkeypatch.setattr(store_module, "utcnow", lambda: real() + offset)
    return advance


def test_an_expired_lease_lets_another_worker_run_the_job_and_the_first_cannot_finish_it(store, clock):
    job, _ = store.submit(new_job(), 3)
    first = store.claim("dead-worker", lease_s=30)
    assert first.state == RUNNING and first.attempts == 1
    assert store.claim("w2", lease_s=30) is None  # leased
    clock(31)  # the lease runs out: its worker died
    second = store.claim("w2", lease_s=30)
    assert second.id == job.id and second.attempts == 2
    assert not store.heartbeat(job.id, "dead-worker", 30)
    assert not store.succeed(job.id, "dead-worker", result_url="file:///r/1.png", media_type="image/png", variant="invert/a")
    assert store.heartbeat(job.id, "w2", 30)
    assert store.progress(job.id, "w2", 50.0, "items", 30) and store.save_checkpoint(job.id, "w2", {"next": 4}, 30)
    assert store.succeed(job.id, "w2", result_url="file:///r/2.png", media_type="image/png", variant="invert/a")
    done = store.get(job.id, "alice")
    assert (done.state, done.result_url, done.progress, done.checkpoint) == (SUCCEEDED, "file:///r/2.png", 100.0, {"next": 4})
    assert store.get(job.id, "mallory") is None  # not the owner's: invisible


def test_failures_retry_with_backoff_then_fail_with_the_error_kept(store, clock):
    config = JobsConfig(max_attempts=2, backoff_s=30)
    job, _ = store.submit(new_job(), config.max_attempts)
    store.claim("w", 30)
    error = {"code": "model_unavailable", "message": "no replica"}
    assert store.fail(job.id, "w", error, retry_in_s=config.backoff(1)) == QUEUED
    queued = store.get(job.id)
    assert queued.error == error and queued.run_after > queued.updated_at
    assert store.claim("w", 30) is None  # not before run_after
    clock(config.backoff(1) + 1)
    assert store.claim("w", 30).attempts == 2
    assert store.fail(job.id, "w", error, retry_in_s=config.backoff(2)) == FAILED  # no attempts left
    failed = store.get(job.id)
    assert (failed.state, failed.error, failed.attempts) == (FAILED, error, 2)
    assert store.claim("w", 30) is None


def test_a_worker_lost_on_every_attempt_fails_the_job(store):
    job, _ = store.submit(new_job(), max_attempts=1)
    store.claim("dead", lease_s=0.1)
    time.sleep(0.2)
    assert store.claim("w", 30) is None  # no attempt left to claim
    delivered, _ = store.submit(new_job(), max_attempts=1)  # finished, its webhook delivered: untouched
    store.claim("w", 30)
    store.succeed(delivered.id, "w", result_url="u", media_type="image/png", variant="v", webhook=True)
    store.record_delivery(delivered.id, 200, None, None, delivered=True)
    assert store.give_up_exhausted() == [job.id]
    assert store.get(job.id).error["code"] == "worker_lost"
    assert (store.get(delivered.id).state, store.get(delivered.id).webhook_state) == (SUCCEEDED, "delivered")


def test_cancel_stops_queued_and_running_jobs_but_not_finished_ones(store):
    queued, _ = store.submit(new_job(), 3)
    assert store.cancel(queued.id, "alice").state == CANCELLED
    running, _ = store.submit(new_job(), 3)
    store.claim("w", 30)
    assert store.cancel(running.id, "bob") is None  # another owner's job: not found
    assert store.cancel(running.id, "alice").state == CANCELLED
    assert not store.heartbeat(running.id, "w", 30)  # the worker learns it at its next heartbeat
    assert not store.succeed(running.id, "w", result_url=None, media_type=None, variant=None)
    assert store.claim("w", 30) is None
    done, _ = store.submit(new_job(), 3)
    store.claim("w", 30)
    store.succeed(done.id, "w", result_url="u", media_type="image/png", variant="v")
    assert store.cancel(done.id, "alice").state == SUCCEEDED


def test_a_lease_belongs_to_one_claim_not_to_the_worker(store):
    job, _ = store.submit(new_job(), 3)
    store.claim("replica-1/claim-a", lease_s=0.1)
    time.sleep(0.2)  # its heartbeats failed for longer than the lease: the same replica claims it again
    assert store.claim("replica-1/claim-b", lease_s=30).attempts == 2
    assert not store.heartbeat(job.id, "replica-1/claim-a", 30)  # the first run's writes are refused
    assert not store.succeed(job.id, "replica-1/claim-a", result_url="a", media_type="image/png", variant="v")
    assert store.succeed(job.id, "replica-1/claim-b", result_url="b", media_type="image/png", variant="v")


def test_release_hands_a_job_back_without_counting_the_run(store):
    job, _ = store.submit(new_job(), 3)
    store.claim("stopping", 30)
    assert store.release(job.id, "stopping")
    again = store.claim("w", 30)
    assert again.id == job.id and again.attempts == 1


def test_listing_is_per_owner_newest_first_and_paged(store):
    ids = [store.submit(new_job(), 3)[0].id for _ in range(5)]
    store.submit(new_job(owner="bob"), 3)
    page = store.list("alice", limit=2)
    assert [j.id for j in page] == ids[::-1][:2]
    rest = store.list("alice", limit=10, before=page[-1].seq)
    assert [j.id for j in rest] == ids[::-1][2:]
    store.claim("w", 30)
    assert [j.id for j in store.list("alice", state=RUNNING)] == [ids[0]]


def test_webhook_schedule_and_deliveries(store):
    job, _ = store.submit(new_job(), 3)
    store.claim("w", 30)
    store.succeed(job.id, "w", result_url="u", media_type="image/png", variant="v", webhook=True)
    assert [j.id for j in store.due_webhooks()] == [job.id]
    assert store.take_webhook(job.id, hold_s=30) and not store.take_webhook(job.id, hold_s=30)
    assert store.record_delivery(job.id, 500, "receiver answered 500", None, delivered=False) == 1
    assert store.get(job.id).webhook_state == "failed"
    assert [(d.attempt, d.status_code) for d in store.deliveries(job.id)] == [(1, 500)]


def test_jobs_state_dir_follows_a_local_state_path(tmp_path):
    families = {"invert": {"kind": "tests.families.invert:SPEC", "default": "a", "variants": {"a": {}}}}
    config = AppConfig.model_validate({"families": families, "state": {"path": str(tmp_path / "s" / "state.json")}, "jobs": {"enabled": True}})
    assert config.jobs.url() == f"sqlite:///{tmp_path / 's' / 'jobs.sqlite'}"
    assert config.jobs.storage.results == str(tmp_path / "s" / "jobs" / "results")
    assert AppConfig.model_validate(config.model_dump(mode="json")).jobs == config.jobs
    remote = AppConfig.model_validate({"families": families, "state": {"path": "s3://bucket/state.json"}})
    assert remote.jobs.state_dir is None and remote.jobs.url().endswith("/.pixelfleet/jobs.sqlite")
    assert [JobsConfig(backoff_s=2, backoff_max_s=10).backoff(n) for n in (1, 2, 3, 4)] == [2, 4, 8, 10]


def test_a_job_belongs_to_the_authenticated_caller_before_the_client_id_header():
    from starlette.requests import Request

    from pixelfleet.serve.auth import Principal
    from pixelfleet.serve.jobs_routes import ANONYMOUS, owner_of

    def request(principal: Principal | None, client_id: str | None) -> Request:
        headers = [(b"x-client-id", client_id.encode())] if client_id else []
        scope = {"type": "http", "method": "GET", "path": "/v1/jobs", "headers": headers, "state": {}}
        if principal is not None:
            scope["state"]["principal"] = principal
        return Request(scope)

    alice = Principal("alice", frozenset({"jobs"}), "api_key")
    assert owner_of(request(alice, "mallory")) == "api_key:alice"  # the header cannot claim another's jobs
    assert owner_of(request(Principal("alice", frozenset({"jobs"}), "jwt"), None)) == "jwt:alice"  # a token's sub is not a key's name
    assert owner_of(request(None, "alice")) == "client:alice"
    assert owner_of(request(None, None)) == ANONYMOUS


def test_which_errors_of_a_run_are_retried():
    from pixelfleet.jobs.worker import error_of
    from pixelfleet.models.errors import InvalidInput, ModelUnavailable

    assert error_of(InvalidInput("not an image")) == ({"code": "invalid_input", "message": "not an image"}, False)
    assert error_of(ModelUnavailable("no replica"))[1] is True
    error, retry = error_of(RuntimeError("boom at /srv/secret/model.py"))
    assert retry and error == {"code": "internal_error", "message": "internal error"}  # no path, no traceback
