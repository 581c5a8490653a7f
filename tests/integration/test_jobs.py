"""Durable jobs through the running app (issue 15): ``/v1/jobs`` on the session's app (jobs are on
in ``serve/configs/local.yaml``; the store is a SQLite file beside the session's state file), and
an app of its own beside the session's (``jobsapp``: the invert family with its 2-second
``slow`` variant, short leases, auth on with JWT bearer tokens) whose worker replica is killed
and which is deleted and deployed again while jobs are queued and running."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from pathlib import Path

import httpx
import jwt
import numpy as np
import pytest

from tests.conftest import REPO, synthetic_photo
from tests.integration.apps import beside_session
from tests.integration.conftest import INVERT_KIND, open_image, png_bytes
from tests.integration.polling import until

pytestmark = pytest.mark.integration

APP = "jobsapp"
PICTURE = synthetic_photo(24, 32, seed=7)
PNG = png_bytes(PICTURE)
DATA = base64.b64encode(PNG).decode()
TERMINAL = {"succeeded", "failed", "cancelled"}
SECRET_ENV = "PIXELFLEET_TEST_JOBS_JWT_SECRET"
SECRET = "jobs-test-hs256-secret-0123456789abcdef"  # HS256 wants at least 32 bytes


def bearer(subject: str, scope: str = "jobs") -> dict[str, str]:
    """An ``Authorization`` header with a JWT for ``jobsapp`` (auth on): ``sub`` is the caller."""
    claims = {"sub": subject, "scope": scope, "exp": int(time.time()) + 3600}
    return {"Authorization": f"Bearer {jwt.encode(claims, SECRET, algorithm='HS256')}"}


def invert_job(**fields) -> dict:
    """A job of the invert family on :data:`PNG`, by default on variant ``a`` (255 - x)."""
    return {"family": "invert", "operation": "invert", "input": {"data": DATA}, "model": "a", **fields}


def headers_of(client_id: str, key: str | None = None) -> dict[str, str]:
    return {"X-Client-Id": client_id, **({"Idempotency-Key": key} if key else {})}


def wait_for(http: httpx.Client, job_id: str, client_id: str, states: set[str], timeout_s: float = 60) -> dict:
    """The job, polled until its state is one of ``states``."""

    def job_in_state() -> dict | None:
        job = http.get(f"/v1/jobs/{job_id}", headers=headers_of(client_id)).json()
        return job if job["state"] in states else None

    return until(job_in_state, timeout_s, f"job {job_id} in {sorted(states)}")


def assert_inverted(http: httpx.Client, job_id: str, client_id: str) -> bytes:
    result = http.get(f"/v1/jobs/{job_id}/result", headers=headers_of(client_id))
    assert result.status_code == 200 and result.headers["content-type"] == "image/png"
    np.testing.assert_array_equal(np.asarray(open_image(result.content)), 255 - PICTURE)
    return result.content


# ---- the session's app ----


def test_a_job_is_stored_run_through_the_ingress_and_its_result_kept(client):
    answer = client.post("/v1/jobs", json=invert_job(params={"format": "png"}), headers=headers_of("job-owner"))
    assert answer.status_code == 202, answer.text
    job = answer.json()
    assert job["state"] in ("queued", "running", "succeeded") and answer.headers["location"] == f"/v1/jobs/{job['id']}"
    done = wait_for(client, job["id"], "job-owner", TERMINAL)
    assert done["state"] == "succeeded" and done["variant"] == "invert/a" and done["progress"]["percent"] == 100
    assert done["attempts"] == 1 and done["result"] == {"media_type": "image/png"}
    assert_inverted(client, job["id"], "job-owner")
    listed = client.get("/v1/jobs", params={"state": "succeeded"}, headers=headers_of("job-owner")).json()
    assert job["id"] in [j["id"] for j in listed["jobs"]]


def test_the_default_config_runs_jobs_in_the_ingress_replica(client):
    """local.yaml's ``jobs.worker: ingress``: no JobWorker deployment, and the job above ran
    (its lease held by an Ingress replica; jobsapp below runs JobWorker replicas instead)."""
    from ray import serve

    from tests.integration.conftest import APP_NAME

    deployments = set(serve.status().applications[APP_NAME].deployments)
    assert "Ingress" in deployments and "JobWorker" not in deployments
    job = client.post("/v1/jobs", json=invert_job(params={"format": "png"}), headers=headers_of("in-ingress")).json()
    assert wait_for(client, job["id"], "in-ingress", TERMINAL)["state"] == "succeeded"


def test_bad_submits_are_refused_at_once_and_store_nothing(client):
    owner = headers_of("refused-caller")
    cases = [
        ({"family": "nope", "operation": "invert", "input": {"data": DATA}}, 422),
        ({"family": "invert", "operation": "nope", "input": {"data": DATA}}, 422),
        (invert_job(params={"format": "gif"}), 422),  # not an option of invert
        (invert_job(model="no-such-variant"), 422),
        ({"family": "invert", "operation": "invert"}, 422),  # no input
        ({"family": "invert", "operation": "invert", "input": {"data": DATA, "url": "/x"}}, 422),
        ({"family": "invert", "operation": "invert", "input": {"data": "not base64!"}}, 400),
        ({"family": "invert", "operation": "invert", "input": {"url": "/etc/passwd"}}, 400),  # outside the storage roots
        (invert_job(callback_url="http://example.com/hook"), 400),  # not on the allow-list
        (invert_job(priority="high"), 422),
    ]
    for body, status in cases:
        answer = client.post("/v1/jobs", json=body, headers=owner)
        assert answer.status_code == status, (body, answer.text)
        error = answer.json()["error"]
        assert error["code"] and error["message"] and "Traceback" not in error["message"]
    assert client.post("/v1/jobs", content=b"{", headers={**owner, "content-type": "application/json"}).status_code == 422
    assert client.get("/v1/jobs", headers=owner).json() == {"jobs": [], "next": None}


def test_jobs_belong_to_their_caller(client):
    job = client.post("/v1/jobs", json=invert_job(), headers=headers_of("alice")).json()
    for method, path in [("GET", ""), ("GET", "/result"), ("GET", "/events"), ("POST", "/cancel")]:
        answer = client.request(method, f"/v1/jobs/{job['id']}{path}", headers=headers_of("bob"))
        assert answer.status_code == 404 and answer.json()["error"]["code"] == "not_found"
    assert job["id"] not in [j["id"] for j in client.get("/v1/jobs", headers=headers_of("bob")).json()["jobs"]]
    assert client.get(f"/v1/jobs/{job['id']}", headers=headers_of("alice")).status_code == 200


def test_a_job_that_cannot_succeed_fails_with_its_error_and_no_retry(client):
    body = {"family": "invert", "operation": "invert", "input": {"data": base64.b64encode(b"not an image").decode()}}
    job = client.post("/v1/jobs", json=body, headers=headers_of("failing")).json()
    done = wait_for(client, job["id"], "failing", TERMINAL)
    assert done["state"] == "failed" and done["attempts"] == 1  # a 4xx of the family: the job's own fault
    assert done["error"]["code"] in ("invalid_input", "unsupported_media_type")
    assert client.get(f"/v1/jobs/{job['id']}/result", headers=headers_of("failing")).status_code == 409


def test_100_concurrent_submits_with_one_idempotency_key_create_one_job(app_url):
    body = invert_job(params={"format": "webp"})

    async def submit(http: httpx.AsyncClient) -> httpx.Response:
        while True:  # a client retries a 503 (the ingress's admission limit) after Retry-After
            answer = await http.post("/v1/jobs", json=body, headers=headers_of("idempotent", key="one-key"))
            if answer.status_code != 503:
                return answer
            await asyncio.sleep(float(answer.headers.get("retry-after", 1)))

    async def main() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=app_url, timeout=120, limits=httpx.Limits(max_connections=100)) as http:
            return await asyncio.gather(*(submit(http) for _ in range(100)))

    answers = asyncio.run(main())
    assert {a.status_code for a in answers} == {202}
    assert len({a.json()["id"] for a in answers}) == 1
    assert sum(a.headers.get("idempotent-replayed") != "true" for a in answers) == 1
    with httpx.Client(base_url=app_url, timeout=60) as http:
        assert len(http.get("/v1/jobs", headers=headers_of("idempotent")).json()["jobs"]) == 1
        other = http.post("/v1/jobs", json=invert_job(), headers=headers_of("idempotent", key="one-key"))
        assert other.status_code == 422  # the key with another body


def test_events_stream_state_and_progress_until_the_job_ends(client):
    job = client.post("/v1/jobs", json=invert_job(model="slow"), headers=headers_of("watcher")).json()
    events = []
    with client.stream("GET", f"/v1/jobs/{job['id']}/events", headers=headers_of("watcher")) as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        kind = None
        for line in stream.iter_lines():
            if line.startswith("event: "):
                kind = line.removeprefix("event: ")
            elif line.startswith("data: "):
                events.append((kind, json.loads(line.removeprefix("data: "))))
    states = [data["state"] for kind, data in events if kind == "state"]
    assert states[-1] == "succeeded" and "running" in states
    assert states.index("running") < states.index("succeeded")
    assert events[-1][1]["progress"]["percent"] == 100


def test_cancel_a_queued_job_and_list_in_pages(client):
    owner = headers_of("canceller")
    ids = [client.post("/v1/jobs", json=invert_job(model="slow", priority=-1000), headers=owner).json()["id"] for _ in range(3)]
    cancelled = client.post(f"/v1/jobs/{ids[-1]}/cancel", headers=owner)
    assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
    assert client.get(f"/v1/jobs/{ids[-1]}/result", headers=owner).status_code == 409
    first = client.get("/v1/jobs", params={"limit": 2}, headers=owner).json()
    assert [j["id"] for j in first["jobs"]] == ids[::-1][:2] and first["next"] is not None
    rest = client.get("/v1/jobs", params={"limit": 2, "before": first["next"]}, headers=owner).json()
    assert [j["id"] for j in rest["jobs"]] == ids[:1] and rest["next"] is None
    for job_id in ids[:2]:
        client.post(f"/v1/jobs/{job_id}/cancel", headers=owner)  # finished ones answer 409: fine


# ---- an app of its own: kill its worker, restart it ----


def jobs_app_schema(name: str, state: Path, worker: str, auth: bool):
    """An app of its own beside the session's: the slow ``invert`` variant (2 s a job), jobs with
    short leases and backoff, so lost workers and retries show within seconds; the job loop in
    two JobWorker replicas that run one job at a time each (``worker: deployment``) or in the
    Ingress replica (``ingress``); auth on (HS256 JWTs, :func:`bearer`) or off."""
    from ray.serve.schema import ServeApplicationSchema

    deployments = [{"name": "Ingress", "ray_actor_options": {"num_cpus": 0}}, {"name": "invert-slow", "ray_actor_options": {"num_cpus": 0}}]
    if worker == "deployment":
        deployments.append({"name": "JobWorker", "num_replicas": 2, "ray_actor_options": {"num_cpus": 0}})  # one job at a time each
    return ServeApplicationSchema(
        name=name, route_prefix=f"/{name}", import_path="pixelfleet.serve.app:build_app",
        runtime_env={"env_vars": {"PYTHONPATH": str(REPO), SECRET_ENV: SECRET}},
        args={
            "families": {"invert": {"kind": INVERT_KIND, "default": "slow", "variants": {"slow": {"delay_s": 2.0}}}},
            **({"auth": {"enabled": True, "jwt": {"secret_env": SECRET_ENV}}} if auth else {}),
            "state": {"path": str(state / "state.json")},
            "jobs": {"enabled": True, "worker": worker, "lease_s": 2, "heartbeat_s": 0.5, "poll_interval_s": 0.2, "concurrency": 1,
                     "max_attempts": 3, "backoff_s": 0.2},
        },
        deployments=deployments,
    )  # fmt: skip


@pytest.fixture(scope="module")
def jobs_app(app_url, tmp_path_factory):
    """``(schema, url, store file)`` of app ``jobsapp`` (:func:`jobs_app_schema`: two JobWorker
    replicas, auth on)."""
    state = tmp_path_factory.mktemp("jobsapp")
    schema = jobs_app_schema(APP, state, "deployment", auth=True)
    with beside_session(schema):
        yield schema, f"{app_url}/{APP}", state / "jobs.sqlite"


@pytest.fixture(scope="module")
def http(jobs_app):
    """A client of ``jobsapp`` whose requests are the caller ``tester``'s (X-Client-Id is ignored with auth on)."""
    with httpx.Client(base_url=jobs_app[1], timeout=60, headers=bearer("tester")) as client:
        yield client


def test_with_auth_on_jobs_need_the_jobs_scope_and_belong_to_the_token_subject(http):
    refused = http.post("/v1/jobs", json=invert_job(model="slow"), headers=bearer("alice", scope="infer"))
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "forbidden"
    job = http.post("/v1/jobs", json=invert_job(model="slow"), headers=bearer("alice"))
    assert job.status_code == 202
    job_id = job.json()["id"]
    assert http.get(f"/v1/jobs/{job_id}", headers={**bearer("bob"), "X-Client-Id": "alice"}).status_code == 404
    assert job_id not in [j["id"] for j in http.get("/v1/jobs", headers=bearer("bob")).json()["jobs"]]
    assert http.get(f"/v1/jobs/{job_id}", headers={**bearer("alice"), "X-Client-Id": "bob"}).status_code == 200
    assert http.post(f"/v1/jobs/{job_id}/cancel", headers=bearer("alice")).json()["state"] == "cancelled"


def kill_worker_of(job_id: str, database: Path) -> None:
    """``ray.kill`` the worker replica that holds ``job_id``'s lease (read from the store: the
    worker id begins with the replica's id)."""
    import ray

    from pixelfleet.jobs.store import JobStore
    from pixelfleet.ray_private import replica_actor, running_replicas

    store = JobStore(f"sqlite:///{database}")
    try:
        holder = store.get(job_id).lease_owner
    finally:
        store.close()
    victim = [r for r in running_replicas(APP, "JobWorker") if holder and holder.startswith(f"{r.replica_id}-")]
    assert len(victim) == 1, (holder, running_replicas(APP, "JobWorker"))
    ray.kill(replica_actor(victim[0].actor_name), no_restart=True)


def test_a_job_survives_the_death_of_its_worker_replica(jobs_app, http):
    job = http.post("/v1/jobs", json=invert_job(model="slow"), headers=headers_of("survivor")).json()
    wait_for(http, job["id"], "survivor", {"running"})
    kill_worker_of(job["id"], jobs_app[2])  # mid-job: the slow variant takes 2 s
    done = wait_for(http, job["id"], "survivor", TERMINAL, timeout_s=90)
    assert done["state"] == "succeeded" and done["attempts"] >= 2  # run again (by the other replica) once the lease expired
    assert_inverted(http, job["id"], "survivor")


def test_transient_failures_are_retried_then_the_job_fails_with_the_error_kept(http):
    job = http.post("/v1/jobs", json=invert_job(model="slow", params={"fail": True}), headers=headers_of("retried")).json()
    done = wait_for(http, job["id"], "retried", TERMINAL)
    assert (done["state"], done["attempts"], done["error"]["code"]) == ("failed", 3, "internal_error")
    assert "/srv/secret" not in json.dumps(done)


def restart_and_check(jobs_app: tuple, http: httpx.Client, owner: str) -> None:
    """Submit 6 slow jobs, delete the app while they run, deploy it again: every job ends
    succeeded, once."""
    from ray import serve

    from pixelfleet.jobs.store import JobStore
    from pixelfleet.serve import control
    from pixelfleet.serve.runner import wait_until_running

    app, _, database = jobs_app
    ids = [http.post("/v1/jobs", json=invert_job(model="slow"), headers=headers_of(owner)).json()["id"] for _ in range(6)]
    wait_for(http, ids[0], owner, {"running"})
    running = control.deployed_config()
    control.submit(running.model_copy(update={"applications": [a for a in running.applications if a.name != app.name]}))  # delete the app
    until(lambda: app.name not in serve.status().applications, 120, f"{app.name} deleted")
    store = JobStore(f"sqlite:///{database}")
    try:
        between = {job_id: store.get(job_id).state for job_id in ids}  # nothing lost while no app runs
    finally:
        store.close()
    assert set(between.values()) <= {"queued", "running", "succeeded"}, between  # some may finish while the app stops
    assert {"queued", "running"} & set(between.values()), between  # 6 jobs of 2 s, 2 at a time: some are left
    control.submit(running)  # the same app again, on the same SQLite file
    wait_until_running(app.name, 300)
    seen: dict[str, tuple] = {}
    for job_id in ids:
        done = wait_for(http, job_id, owner, TERMINAL, timeout_s=120)
        assert done["state"] == "succeeded", done
        seen[job_id] = (done["finished_at"], assert_inverted(http, job_id, owner))
    for job_id in ids:
        again = http.get(f"/v1/jobs/{job_id}", headers=headers_of(owner)).json()
        assert (again["state"], again["finished_at"]) == ("succeeded", seen[job_id][0])
        assert http.get(f"/v1/jobs/{job_id}/result", headers=headers_of(owner)).content == seen[job_id][1]
        results = Path(database).parent / "jobs" / "results" / job_id
        assert len([p for p in results.iterdir() if p.name != "input"]) == 1  # one result file: one visible completion


def test_jobs_queued_and_running_survive_a_restart_of_the_whole_app(jobs_app, http):
    restart_and_check(jobs_app, http, "restarted")


@pytest.fixture(scope="module")
def ingress_jobs_app(app_url, tmp_path_factory):
    """``(schema, url, store file)`` of app ``jobsingress``: ``jobsapp`` with the job loop in its
    Ingress replica (``jobs.worker: ingress``, as ``local.yaml``) and auth off."""
    state = tmp_path_factory.mktemp("jobsingress")
    schema = jobs_app_schema("jobsingress", state, "ingress", auth=False)
    with beside_session(schema):
        yield schema, f"{app_url}/jobsingress", state / "jobs.sqlite"


def test_jobs_survive_a_restart_of_an_app_whose_ingress_runs_them(ingress_jobs_app):
    from ray import serve

    assert "JobWorker" not in serve.status().applications["jobsingress"].deployments
    with httpx.Client(base_url=ingress_jobs_app[1], timeout=60) as http:
        restart_and_check(ingress_jobs_app, http, "restarted-in-ingress")
