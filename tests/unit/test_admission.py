"""serve/admission.py without Ray: the in-flight count and the body limit on a small FastAPI app
with the app's own error mapping, and the shipped Serve configs' Ingress limits. The same
middlewares are tested through the running app in tests/integration/test_hostile.py."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from fastapi import Body, FastAPI

from pixelfleet.serve.admission import HEADROOM_FACTOR, check_ingress_limits, install_admission
from pixelfleet.serve.config import AdmissionConfig
from pixelfleet.serve.errors import install_error_handlers
from tests.conftest import REPO

MAX_BODY = 1000


def _app(max_in_flight: int, release: asyncio.Event) -> FastAPI:
    api = FastAPI()
    install_error_handlers(api)
    install_admission(api, max_in_flight=max_in_flight, retry_after_s=7, max_body_bytes=MAX_BODY)

    @api.post("/v1/slow")
    async def slow() -> dict:
        await release.wait()
        return {"ok": True}

    @api.put("/v1/json")
    async def json_route(body: dict = Body()) -> dict:
        return {"keys": len(body)}

    @api.get("/healthz")
    async def healthz() -> dict:
        return {"status": "ok"}

    @api.post("/v2/models/m/infer")
    async def infer() -> dict:
        await release.wait()
        return {}

    return api


def _client(api: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=api), base_url="http://test")


def test_requests_over_max_in_flight_answer_json_503_until_one_finishes():
    async def scenario():
        release = asyncio.Event()
        async with _client(_app(2, release)) as http:
            held = [asyncio.create_task(http.post("/v1/slow")) for _ in range(2)]
            await asyncio.sleep(0.05)
            refused = await http.post("/v1/slow")
            refused_oip = await http.post("/v2/models/m/infer")
            health = await http.get("/healthz")  # exempt: not counted, never refused
            release.set()
            done = await asyncio.gather(*held)
            after = await http.post("/v1/slow")
        return refused, refused_oip, health, done, after

    refused, refused_oip, health, done, after = asyncio.run(scenario())
    assert refused.status_code == 503 and refused.headers["retry-after"] == "7"
    assert refused.json()["error"]["code"] == "overloaded"
    assert refused_oip.status_code == 503 and isinstance(refused_oip.json()["error"], str)
    assert health.status_code == 200
    assert [r.status_code for r in done] == [200, 200]
    assert after.status_code == 200  # the count went back down


def test_body_limit_on_json_routes_declared_and_streamed():
    async def scenario():
        async with _client(_app(4, asyncio.Event())) as http:
            small = await http.put("/v1/json", json={"a": 1})
            declared = await http.put("/v1/json", content=b"{" + b" " * MAX_BODY + b"}", headers={"content-type": "application/json"})

            async def chunks():
                yield b'{"a": "'
                for _ in range(5):
                    yield b"x" * 400
                yield b'"}'

            streamed = await http.put("/v1/json", content=chunks(), headers={"content-type": "application/json"})
            bad_length = await http.put("/v1/json", content=b"{}", headers={"content-type": "application/json", "content-length": "2x"})
        return small, declared, streamed, bad_length

    small, declared, streamed, bad_length = asyncio.run(scenario())
    assert small.status_code == 200 and small.json() == {"keys": 1}
    for response in (declared, streamed):
        assert response.status_code == 413, response.text
        assert response.json()["error"]["code"] == "payload_too_large"
    assert bad_length.status_code == 400 and bad_length.json()["error"]["code"] == "invalid_input"


def test_check_ingress_limits():
    assert check_ingress_limits(32, 64) is None
    assert "= 64" in check_ingress_limits(32, 63)
    assert check_ingress_limits(32, 64, 0) is not None
    assert check_ingress_limits(32, 64, -1) is None


@pytest.mark.parametrize("path", sorted((REPO / "serve" / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_leave_room_above_admission(path):
    """Each shipped Serve config gives its Ingress at least HEADROOM_FACTOR x max_in_flight
    ongoing requests (or the deployment's default), so Ray's proxy never refuses first."""
    from pixelfleet.serve.ingress import Ingress
    from pixelfleet.serve.runner import load_serve_config

    app = load_serve_config(path).applications[0]
    (ingress,) = [d for d in app.deployments if d.name == "Ingress"]
    max_in_flight = AdmissionConfig.model_validate(app.args.get("admission", {})).max_in_flight
    ongoing = ingress.max_ongoing_requests if isinstance(ingress.max_ongoing_requests, int) else Ingress.max_ongoing_requests
    assert check_ingress_limits(max_in_flight, ongoing, ingress.max_queued_requests) is None
    assert Ingress.max_ongoing_requests >= HEADROOM_FACTOR * AdmissionConfig().max_in_flight  # the defaults fit too


def test_event_streams_take_at_most_max_streams_slots_and_leave_the_rest_to_work():
    async def scenario():
        release = asyncio.Event()
        api = FastAPI()
        install_error_handlers(api)
        install_admission(api, max_in_flight=3, retry_after_s=1, max_body_bytes=MAX_BODY, max_streams=1)

        @api.get("/v1/jobs/{job_id}/events")
        async def events(job_id: str) -> dict:
            await release.wait()
            return {}

        @api.post("/v1/slow")
        async def slow() -> dict:
            await release.wait()
            return {"ok": True}

        async with _client(api) as http:
            watcher = asyncio.create_task(http.get("/v1/jobs/a/events"))
            await asyncio.sleep(0.05)
            second_watcher = await http.get("/v1/jobs/b/events")  # over max_streams
            work = [asyncio.create_task(http.post("/v1/slow")) for _ in range(2)]  # the two slots left
            await asyncio.sleep(0.05)
            over = await http.post("/v1/slow")  # 3 in flight: full
            release.set()
            return second_watcher, await watcher, await asyncio.gather(*work), over

    second_watcher, watcher, work, over = asyncio.run(scenario())
    assert second_watcher.status_code == 503 and "event streams" in second_watcher.json()["error"]["message"]
    assert watcher.status_code == 200 and [r.status_code for r in work] == [200, 200]
    assert over.status_code == 503 and "requests in flight" in over.json()["error"]["message"]
