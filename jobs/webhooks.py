"""Signed webhooks: when a job completes or fails, POST an event to its callback URL.

The scheme is Standard Webhooks (https://www.standardwebhooks.com, spec v1; signed and
verified by the ``standardwebhooks`` library): headers ``webhook-id`` (the same for every attempt
of one event, so receivers can deduplicate), ``webhook-timestamp`` (Unix seconds) and
``webhook-signature`` (``v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">``, one per
configured secret, space-separated, so secrets rotate without a gap). The body is
``{"type": "job.completed" | "job.failed", "timestamp": ISO 8601, "data": <the job>}``.

Delivery is at least once and store-driven: each attempt is a row of ``webhook_deliveries``
(``job_id, attempt, at, status_code, error, next_attempt_at``); a failed attempt (no connection,
timeout, a status other than 2xx) sets ``next_attempt_at`` from :meth:`WebhookConfig.delay`
(exponential backoff), and the job worker sends what is due on each poll
(:func:`deliver_due`), so the schedule survives restarts and no process sleeps through it.
Callback URLs are checked against the allow-list when the job is submitted and again before
each attempt (:func:`check_callback_url`).
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import os
import socket
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from urllib.parse import urlsplit

import httpx
from pydantic import ConfigDict, Field, field_validator
from standardwebhooks import Webhook

from pixelfleet.deployments.spec import Strict
from pixelfleet.models.errors import InvalidInput

logger = logging.getLogger(__name__)

SECRET_ENV = "PIXELFLEET_WEBHOOK_SECRET"
COMPLETED, FAILED = "job.completed", "job.failed"
USER_AGENT = "pixelfleet-webhooks/1"


class WebhookConfig(Strict):
    """``jobs.webhooks`` in the app's args: where callbacks may go, how they are signed and retried.

    A secret is a Standard Webhooks secret: ``whsec_`` + base64 of 24 to 64 random bytes (make one
    with ``python -c "import base64, secrets; print('whsec_' + base64.b64encode(secrets.token_bytes(32)).decode())"``).
    """

    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)  # a refused secret is not echoed

    allowed_hosts: list[str] = Field(
        default_factory=list,
        description="callback hosts allowed: 'hooks.example.com', 'hooks.example.com:8443', '*.example.com' "
        "(any subdomain); empty: no callbacks accepted",
    )
    secret_envs: list[str] = Field(
        default_factory=lambda: [SECRET_ENV],
        description="environment variables holding signing secrets (each one signs; the first set is the current one)",
    )
    secrets: list[str] = Field(
        default_factory=list, repr=False, description="signing secrets given inline (tests, development; use secret_envs otherwise)"
    )
    require_https: bool = Field(False, description="refuse http:// callback URLs")
    allow_private_networks: bool = Field(
        False,
        description="let a host name on the allow-list resolve to a private, loopback or link-local address (an IP literal "
        "on the list is always allowed: it names its address)",
    )
    max_attempts: int = Field(8, ge=1, le=50, description="attempts per event before it is given up")
    backoff_s: float = Field(5.0, gt=0, le=3600, description="seconds before the second attempt; doubles each attempt")
    backoff_max_s: float = Field(3600.0, gt=0, le=86400, description="longest wait between attempts, seconds")
    timeout_s: float = Field(10.0, gt=0, le=120, description="seconds an attempt may take")

    @field_validator("secrets")
    @classmethod
    def _valid_secrets(cls, secrets: list[str]) -> list[str]:
        for secret in secrets:
            try:
                Webhook(secret)
            except Exception:  # the library's EmptyWebhookSecretError, binascii.Error
                raise ValueError("a webhook secret must be whsec_ + base64 of random bytes") from None
        return secrets

    def signing_secrets(self) -> list[str]:
        """The secrets that sign, inline ones first, then the set environment variables."""
        found = list(self.secrets)
        found += [os.environ[name] for name in self.secret_envs if os.environ.get(name)]
        return found

    def delay(self, attempt: int) -> float | None:
        """Seconds from attempt ``attempt`` (1-based) to the next, or None after the last:
        ``min(backoff_s * 2 ** (attempt - 1), backoff_max_s)``."""
        if attempt >= self.max_attempts:
            return None
        return min(self.backoff_s * 2 ** (attempt - 1), self.backoff_max_s)


def _host_allowed(host: str, port: int | None, scheme: str, allowed: list[str]) -> bool:
    default_port = 443 if scheme == "https" else 80
    for entry in allowed:
        name, _, entry_port = entry.lower().rpartition(":") if entry.count(":") == 1 else (entry.lower(), "", "")
        if entry_port and int(entry_port) != (port or default_port):
            continue
        if name.startswith("*.") and host.endswith(name[1:]) and host != name[2:]:
            return True
        if host == name:
            return True
    return False


def check_callback_url(url: object, config: WebhookConfig) -> str:
    """The callback URL, if the allow-list admits it: ``http(s)://host[:port]/path`` with no
    user info and a host (and port, when the entry names one) on ``allowed_hosts``; a host name
    must not resolve to a private, loopback or link-local address (SSRF into the cluster's
    network) unless ``allow_private_networks``. Blocking (DNS): call it from a thread.

    Raises:
        InvalidInput: not such a URL, or a host not on the allow-list (the list is not revealed).
    """
    if not isinstance(url, str) or len(url) > 2048:
        raise InvalidInput("callback_url must be a URL of at most 2048 characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise InvalidInput("callback_url is not a valid URL") from None
    schemes = ("https",) if config.require_https else ("http", "https")
    if parts.scheme not in schemes or not parts.hostname:
        raise InvalidInput(f"callback_url must be an {' or '.join(schemes)} URL with a host")
    if parts.username is not None or parts.password is not None:
        raise InvalidInput("callback_url may not carry user info")
    host = parts.hostname.lower()
    if not _host_allowed(host, port, parts.scheme, config.allowed_hosts):
        raise InvalidInput("callback_url's host is not on the webhook allow-list")
    if not config.allow_private_networks and not _is_ip(host):
        for address in _addresses(host, port or (443 if parts.scheme == "https" else 80)):
            if not address.is_global:
                raise InvalidInput("callback_url's host resolves to a private, loopback or link-local address")
    return url


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _addresses(host: str, port: int) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """What ``host`` resolves to now (none if it does not resolve: the attempt then fails and is retried)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        return []
    return [ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos]


def event_body(event_type: str, job: dict, at: datetime) -> bytes:
    """The JSON body of an event (compact, keys sorted, UTF-8)."""
    at = at.replace(tzinfo=timezone.utc) if at.tzinfo is None else at.astimezone(timezone.utc)
    payload = {"type": event_type, "timestamp": at.isoformat(), "data": job}
    return json.dumps(payload, separators=(",", ":"), sort_keys=True, default=str).encode()


def sign(message_id: str, at: datetime, body: bytes, secrets: list[str]) -> dict[str, str]:
    """The Standard Webhooks headers of one attempt: ``webhook-id``, ``webhook-timestamp`` (Unix
    seconds of ``at``), ``webhook-signature`` (one ``v1,...`` per secret, space-separated).

    Raises:
        ValueError: no secret given.
    """
    if not secrets:
        raise ValueError(f"no webhook signing secret is configured ({SECRET_ENV} or jobs.webhooks.secrets)")
    at = at.replace(tzinfo=timezone.utc) if at.tzinfo is None else at.astimezone(timezone.utc)
    text = body.decode()
    signatures = " ".join(Webhook(secret).sign(message_id, at, text) for secret in secrets)
    return {"webhook-id": message_id, "webhook-timestamp": str(int(at.timestamp())), "webhook-signature": signatures}


@dataclass(frozen=True)
class Attempt:
    """What one attempt got: the HTTP status (None when there was no answer), an error (None on
    2xx), and when the next attempt is due (None: delivered, or given up)."""

    status_code: int | None
    error: str | None
    next_attempt_at: datetime | None

    @property
    def delivered(self) -> bool:
        return self.error is None


async def send(
    client: httpx.AsyncClient, url: str, message_id: str, body: bytes, config: WebhookConfig, attempt: int, now: datetime
) -> Attempt:
    """POST one signed event to ``url``: attempt number ``attempt`` (1-based) at ``now`` (UTC;
    naive datetimes are taken as UTC, and ``next_attempt_at`` comes back in the same form).

    The URL is checked against the allow-list again (a config change since the submit applies).
    Redirects are not followed. Never raises for the receiver's faults: they are the attempt's
    ``error`` (its status, or the connection error's type), and ``next_attempt_at`` is ``now`` +
    :meth:`WebhookConfig.delay`, or None after the last attempt or when the URL is refused.
    """
    try:
        await asyncio.to_thread(check_callback_url, url, config)
    except InvalidInput as err:
        return Attempt(None, err.message, None)
    headers = {**sign(message_id, now, body, config.signing_secrets()), "content-type": "application/json", "user-agent": USER_AGENT}
    try:
        response = await client.post(url, content=body, headers=headers, timeout=config.timeout_s, follow_redirects=False)
    except httpx.HTTPError as err:
        status, error = None, f"{type(err).__name__}: {err}"[:500]
    else:
        status = response.status_code
        error = None if 200 <= status < 300 else f"receiver answered {status}"
    if error is None:
        return Attempt(status, None, None)
    wait = config.delay(attempt)
    return Attempt(status, error, None if wait is None else now + timedelta(seconds=wait))


def message_id(job_id: str) -> str:
    """The ``webhook-id`` of a job's event: one event per job, the same on every attempt."""
    return f"msg_{job_id}"


async def deliver_due(store, config: WebhookConfig, client: httpx.AsyncClient, limit: int = 10) -> int:
    """Send every webhook that is due now, once each; returns how many attempts were made.

    The schedule lives in the store (``jobs.webhook_state``/``webhook_next_at`` and the
    ``webhook_deliveries`` rows of :class:`pixelfleet.jobs.store.JobStore`): each due job is first
    reserved (:meth:`~pixelfleet.jobs.store.JobStore.take_webhook`, so that two workers never send
    one attempt twice), then sent (:func:`send`) and recorded with the next attempt's time. The
    job worker calls this on every poll; a worker that dies mid-attempt leaves the reservation
    to lapse and the attempt is made again (at least once).
    """
    from pixelfleet.jobs.store import SUCCEEDED, utcnow

    jobs = await asyncio.to_thread(store.due_webhooks, limit)
    made = 0
    for job in jobs:
        if not job.callback_url or not await asyncio.to_thread(store.take_webhook, job.id, config.timeout_s + 30):
            continue
        attempt = len(await asyncio.to_thread(store.deliveries, job.id)) + 1
        body = event_body(COMPLETED if job.state == SUCCEEDED else FAILED, job.public(), job.finished_at or job.updated_at)
        now = utcnow()
        try:
            outcome = await send(client, job.callback_url, message_id(job.id), body, config, attempt, now)
        except Exception as err:  # no usable signing secret (ValueError, the library's errors): retried on schedule
            logger.error("webhook of job %s cannot be signed: %s", job.id, type(err).__name__)
            wait = config.delay(attempt)
            outcome = Attempt(None, "the webhook could not be signed (no valid signing secret configured)",
                              None if wait is None else now + timedelta(seconds=wait))  # fmt: skip
        await asyncio.to_thread(store.record_delivery, job.id, outcome.status_code, outcome.error, outcome.next_attempt_at, outcome.delivered)
        if outcome.error:
            logger.info("webhook of job %s, attempt %d: %s; next at %s", job.id, attempt, outcome.error, outcome.next_attempt_at)
        made += 1
    return made
