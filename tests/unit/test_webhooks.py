"""jobs/webhooks.py: Standard Webhooks signatures (verified by the library), the callback
allow-list, the backoff schedule, and store-driven delivery to a real HTTP receiver that fails
twice then succeeds (a SQLite job store, no Ray)."""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import time
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import httpx
import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from pixelfleet.jobs import webhooks
from pixelfleet.jobs.webhooks import WebhookConfig, check_callback_url, event_body, sign
from pixelfleet.models.errors import InvalidInput

SECRET = "whsec_" + base64.b64encode(b"k" * 32).decode()
OLD_SECRET = "whsec_" + base64.b64encode(b"o" * 32).decode()


def test_signature_verifies_with_the_library_and_rotates() -> None:
    now = datetime.now(timezone.utc)
    body = event_body("job.completed", {"id": "abc", "state": "succeeded"}, now)
    headers = sign("msg_abc", now, body, [SECRET, OLD_SECRET])
    assert headers["webhook-id"] == "msg_abc" and headers["webhook-timestamp"] == str(int(now.timestamp()))
    assert len(headers["webhook-signature"].split(" ")) == 2  # both secrets sign during a rotation
    for secret in (SECRET, OLD_SECRET):  # a receiver holding either secret accepts it
        assert Webhook(secret).verify(body, headers) == json.loads(body)
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(body.replace(b"succeeded", b"failed"), headers)
    stale = sign("msg_abc", now - timedelta(minutes=10), body, [SECRET])
    with pytest.raises(WebhookVerificationError):  # replay protection: the timestamp is signed and checked
        Webhook(SECRET).verify(body, stale)
    with pytest.raises(ValueError):
        sign("msg_abc", now, body, [])
    with pytest.raises(ValueError) as err:  # e.g. a masked "**********": refused when the config loads, not echoed
        WebhookConfig(secrets=["**********"])
    assert "****" not in str(err.value)


@pytest.mark.parametrize(
    "url, ok",
    [
        ("https://hooks.example.com/done", True),
        ("http://hooks.example.com:80/x", True),
        ("https://a.b.partner.io/x", True),
        ("https://partner.io/x", False),  # the wildcard means subdomains only
        ("http://127.0.0.1:9000/cb", True),
        ("http://127.0.0.1:9001/cb", False),  # the entry names its port
        ("https://hooks.example.com.evil.io/", False),
        ("https://user:pw@hooks.example.com/", False),
        ("ftp://hooks.example.com/", False),
        ("file:///etc/passwd", False),
        ("https:///nohost", False),
        ("http://[::1/", False),
        (42, False),
    ],
)
def test_allow_list(url, ok: bool) -> None:
    config = WebhookConfig(allowed_hosts=["hooks.example.com", "*.partner.io", "127.0.0.1:9000"])
    if ok:
        assert check_callback_url(url, config) == url
    else:
        with pytest.raises(InvalidInput) as err:
            check_callback_url(url, config)
        assert err.value.status == 400 and "partner" not in err.value.message  # the list stays private
    with pytest.raises(InvalidInput):
        check_callback_url("http://hooks.example.com/", WebhookConfig(allowed_hosts=["hooks.example.com"], require_https=True))


def test_names_resolving_to_private_addresses_are_refused() -> None:
    """SSRF: an allow-listed name that resolves into a private network is refused unless allowed;
    an IP literal on the list names its address and is taken as meant."""
    config = WebhookConfig(allowed_hosts=["localhost", "127.0.0.1"])
    with pytest.raises(InvalidInput) as err:
        check_callback_url("http://localhost:9000/cb", config)
    assert "private, loopback" in err.value.message
    assert check_callback_url("http://127.0.0.1:9000/cb", config)
    assert check_callback_url("http://localhost:9000/cb", WebhookConfig(allowed_hosts=["localhost"], allow_private_networks=True))


def test_backoff_schedule() -> None:
    config = WebhookConfig(max_attempts=5, backoff_s=2, backoff_max_s=10)
    assert [config.delay(n) for n in range(1, 6)] == [2, 4, 8, 10, None]


class _Receiver(BaseHTTPRequestHandler):
    """Answers 503 to the first ``fail`` requests, then 204; keeps what it got."""

    fail = 2
    got: ClassVar[list[tuple[dict, bytes]]] = []

    def do_POST(self) -> None:  # http.server's method name
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).got.append((dict(self.headers), body))
        self.send_response(503 if len(self.got) <= self.fail else 204)
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def receiver():
    _Receiver.got = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook", _Receiver
    server.shutdown()
    server.server_close()


def test_store_driven_delivery_fails_twice_then_succeeds(tmp_path, receiver) -> None:
    from pixelfleet.jobs.store import JobStore, NewJob, request_hash

    url, handler = receiver
    store = JobStore(f"sqlite:///{tmp_path / 'jobs.sqlite'}")
    store.migrate()
    config = WebhookConfig(allowed_hosts=["127.0.0.1"], secrets=[SECRET], backoff_s=0.2, max_attempts=4)
    job, _ = store.submit(NewJob(owner="o", family="superres", operation="upscale", params={}, request_hash=request_hash({}),
                                 callback_url=url), max_attempts=1)  # fmt: skip
    assert store.claim("w1", 30).id == job.id
    store.succeed(job.id, "w1", result_url=None, media_type="image/png", variant="srresnet-x4", webhook=True)

    async def drive() -> list[float]:
        made_at = []
        async with httpx.AsyncClient() as client:
            deadline = time.monotonic() + 10
            while store.get(job.id).webhook_state == "pending" and time.monotonic() < deadline:
                if await webhooks.deliver_due(store, config, client):
                    made_at.append(time.monotonic())
                await asyncio.sleep(0.02)  # the worker's poll interval
        return made_at

    made_at = asyncio.run(drive())
    assert store.get(job.id).webhook_state == "delivered"
    attempts = [d.public() for d in store.deliveries(job.id)]
    assert [(a["attempt"], a["status_code"]) for a in attempts] == [(1, 503), (2, 503), (3, 204)]
    assert attempts[0]["next_attempt_at"] and attempts[0]["error"] == "receiver answered 503" and attempts[2]["error"] is None
    # exponential backoff kept by the store: no attempt before it was due, and the 2nd wait doubles the 1st
    rows = store.deliveries(job.id)
    assert rows[1].at >= rows[0].next_attempt_at and rows[2].at >= rows[1].next_attempt_at
    waits = [(row.next_attempt_at - row.at).total_seconds() for row in rows[:2]]
    assert 0.1 < waits[0] <= 0.2 and 0.3 < waits[1] <= 0.4 and len(made_at) == 3
    ids = {headers["webhook-id"] for headers, _ in handler.got}
    assert ids == {f"msg_{job.id}"}  # one event, one id on every attempt
    headers, body = handler.got[-1]
    event = Webhook(SECRET).verify(body, headers)
    assert event["type"] == "job.completed" and event["data"]["id"] == job.id and event["data"]["state"] == "succeeded"
    store.close()


def test_delivery_gives_up_and_refuses_a_host_taken_off_the_list(tmp_path, receiver) -> None:
    from pixelfleet.jobs.store import JobStore, NewJob

    url, handler = receiver
    handler.fail = 10
    try:
        store = JobStore(f"sqlite:///{tmp_path / 'jobs.sqlite'}")
        store.migrate()
        jobs = []
        for n in range(2):
            job, _ = store.submit(NewJob(owner="o", family="f", operation="op", params={"n": n}, request_hash=str(n), callback_url=url), 1)
            store.claim("w", 30)
            store.fail(job.id, "w", {"code": "invalid_input", "message": "bad"}, None, webhook=True)
            jobs.append(job)
        once = WebhookConfig(allowed_hosts=["127.0.0.1"], secrets=[SECRET], max_attempts=1)
        off_list = WebhookConfig(allowed_hosts=["example.com"], secrets=[SECRET])

        async def drive() -> None:
            async with httpx.AsyncClient() as client:
                await webhooks.deliver_due(store, once, client, limit=1)
                await webhooks.deliver_due(store, off_list, client, limit=1)

        asyncio.run(drive())
        first, second = (store.deliveries(job.id) for job in jobs)
        assert [(d.status_code, d.next_attempt_at) for d in first] == [(503, None)] and store.get(jobs[0].id).webhook_state == "failed"
        assert second[0].status_code is None and "allow-list" in second[0].error and store.get(jobs[1].id).webhook_state == "failed"
        assert len(handler.got) == 1  # the refused host was never contacted
        assert Webhook(SECRET).verify(handler.got[0][1], handler.got[0][0])["type"] == "job.failed"
        store.close()
    finally:
        handler.fail = 2
