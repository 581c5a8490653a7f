"""Rate limits of the HTTP routes: a token bucket per caller and route group, shared by every
ingress replica on every node through one :class:`RateLimiter` deployment. Off unless the app
config sets ``rate_limits.enabled``.

- **Caller** (:func:`caller_key`): the authenticated caller's name when auth is on
  (``serve/auth.py``), else the client's address (``request.client.host``; the first
  ``X-Forwarded-For`` hop only when ``rate_limits.trust_forwarded_for`` is set, i.e. behind a
  proxy that writes that header itself). ``X-Client-Id`` is never used: anyone can send any.
- **Route group** (:func:`route_group`): ``infer`` (``POST /v1/<family>...``, ``POST
  /v2/models/.../infer``), ``admin`` (``/v1/traffic*``, ``/v1/variants*``), ``jobs``
  (``/v1/jobs*``, reserved). Health and metrics routes (``/healthz``, ``/readyz``, ``/metrics``,
  ``/v2/health/*``) and every other route (metadata, docs) are never limited; a group without a
  configured limit is not limited either.
- **Bucket** (:class:`TokenBucket`): ``burst`` tokens at most, refilled at ``rate_per_s`` tokens
  per second; a request takes one token or is refused with 429.

Why one central deployment: the limit is exact across any number of ingress replicas and nodes
(N replicas each holding their own buckets would admit up to N times the limit, and how much
depends on how the proxies spread the requests). The price is one handle call per limited
request (``await limiter.take.remote(key, group)``; measured 2-3 ms median on a local cluster of
2 busy cores, README "Rate limits"). The limiter is a single replica (``num_cpus: 0``); its state is in memory
only, so a restart forgets the buckets (every caller starts full again).

If the limiter does not answer (its replica is restarting, or the call takes longer than
``rate_limits.timeout_s``), the request **fails open**: it is served without a limit and the
ingress logs a warning (at most one per :data:`WARN_EVERY_S` per replica). Rate limiting here
protects capacity and fairness, not access (auth does that), and the models keep their own
overload protection (``max_queued_requests``: 503 ``overloaded``), so an unavailable limiter
should not take the whole API down with it.

Headers: ``RateLimit-Limit``, ``RateLimit-Remaining``, ``RateLimit-Reset`` as in
draft-ietf-httpapi-ratelimit-headers-06 (section 3; later drafts fold them into ``RateLimit`` and
``RateLimit-Policy``), on admitted responses as on 429s, and ``Retry-After`` (RFC 9110 section
10.2.3) on 429s.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pixelfleet.models.errors import PixelfleetError, RateLimited
from pixelfleet.serve.config import RateGroup, RateLimitConfig
from pixelfleet.serve.errors import error_response, route_path
from ray import serve

logger = logging.getLogger("ray.serve")
GROUPS = ("infer", "admin", "jobs")
EXEMPT_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
EXEMPT_PREFIXES = ("/v2/health/",)
FORWARDED_FOR_HEADER = "X-Forwarded-For"
WARN_EVERY_S = 10.0

Clock = Callable[[], float]


# ---- the pure part: buckets, decisions, headers ----


@dataclass(frozen=True)
class Decision:
    """One request's outcome against its bucket.

    ``allowed``: admitted (a token was taken). ``limit``: the bucket's size (``burst``, requests).
    ``remaining``: whole tokens left after this request (requests). ``reset_s``: seconds until the
    bucket is full again. ``retry_after_s``: seconds until one token is available (0 if one is).
    """

    allowed: bool
    limit: int
    remaining: int
    reset_s: float
    retry_after_s: float

    def headers(self) -> dict[str, str]:
        """The ``RateLimit-*`` fields (draft-ietf-httpapi-ratelimit-headers-06), in whole seconds
        rounded up, and ``Retry-After`` (at least 1 s) when the request was refused."""
        headers = {
            "RateLimit-Limit": str(self.limit),
            "RateLimit-Remaining": str(self.remaining),
            "RateLimit-Reset": str(math.ceil(self.reset_s)),
        }
        if not self.allowed:
            headers["Retry-After"] = str(max(1, math.ceil(self.retry_after_s)))
        return headers


class TokenBucket:
    """A token bucket: at most ``burst`` tokens, refilled continuously at ``rate_per_s`` tokens per
    second; starts full. Time comes from ``clock`` (seconds, monotonic)."""

    def __init__(self, rate_per_s: float, burst: int, now: float) -> None:
        """Raises: ValueError: ``rate_per_s`` <= 0 or ``burst`` < 1."""
        if rate_per_s <= 0 or burst < 1:
            raise ValueError(f"a token bucket needs rate_per_s > 0 and burst >= 1, not {rate_per_s} and {burst}")
        self.rate_per_s, self.burst = float(rate_per_s), int(burst)
        self.tokens, self.updated = float(burst), now

    def _refill(self, now: float) -> None:
        elapsed = max(0.0, now - self.updated)  # a clock that steps back refills nothing
        self.tokens = min(float(self.burst), self.tokens + elapsed * self.rate_per_s)
        self.updated = max(self.updated, now)

    def take(self, now: float, cost: float = 1.0) -> Decision:
        """Take ``cost`` tokens at time ``now`` (seconds) if there are that many; else take none.

        Raises: ValueError: ``cost`` <= 0 or more than ``burst`` (it could never be admitted).
        """
        if not 0 < cost <= self.burst:
            raise ValueError(f"cost must be in (0, {self.burst}], not {cost}")
        self._refill(now)
        allowed = self.tokens >= cost
        if allowed:
            self.tokens -= cost
        missing = 0.0 if allowed else cost - self.tokens
        return Decision(
            allowed=allowed,
            limit=self.burst,
            remaining=math.floor(self.tokens + 1e-9),
            reset_s=(self.burst - self.tokens) / self.rate_per_s,
            retry_after_s=missing / self.rate_per_s,
        )

    def full(self, now: float) -> bool:
        """Whether the bucket has refilled to ``burst`` by ``now`` (an idle caller's state)."""
        return self.tokens + (now - self.updated) * self.rate_per_s >= self.burst


class Buckets:
    """Every caller's buckets, per route group, bounded: at most ``max_callers`` (caller, group)
    buckets are kept, the least recently used evicted first (an evicted caller starts again with
    a full bucket, which is what an idle caller would have had by then anyway when the bound is
    far above the callers active within ``burst / rate_per_s`` seconds).

    Args:
        groups: route group -> its limit; groups not named here are not limited.
        max_callers: the most buckets held (>= 1).
        clock: seconds, monotonic (default :func:`time.monotonic`; tests pass a fake one).
    """

    def __init__(self, groups: Mapping[str, RateGroup], max_callers: int = 10_000, clock: Clock = time.monotonic) -> None:
        """Raises: ValueError: ``max_callers`` < 1."""
        if max_callers < 1:
            raise ValueError(f"max_callers must be >= 1, not {max_callers}")
        self.groups, self.max_callers, self.clock = dict(groups), max_callers, clock
        self.buckets: OrderedDict[tuple[str, str], TokenBucket] = OrderedDict()

    def take(self, key: str, group: str) -> Decision | None:
        """Take one token of ``key``'s bucket for ``group``: the decision, or None if ``group``
        has no limit."""
        limit = self.groups.get(group)
        if limit is None:
            return None
        now = self.clock()
        bucket = self.buckets.get((key, group))
        if bucket is None:
            bucket = self.buckets[(key, group)] = TokenBucket(limit.rate_per_s, limit.burst, now)
            while len(self.buckets) > self.max_callers:
                self.buckets.popitem(last=False)
        else:
            self.buckets.move_to_end((key, group))
        return bucket.take(now)

    def __len__(self) -> int:
        return len(self.buckets)


def route_group(method: str, path: str) -> str | None:
    """The route group of a request (``path`` below the app's route prefix), or None for a route
    that is never limited: the health and metrics routes, and anything outside the groups
    (metadata, docs). ``admin``: ``/v1/traffic*``, ``/v1/variants*``; ``jobs``: ``/v1/jobs*``;
    ``infer``: any other ``POST /v1/*`` and ``POST /v2/models/*/infer``."""
    if path in EXEMPT_PATHS or path.startswith(EXEMPT_PREFIXES):
        return None
    if path.startswith(("/v1/traffic", "/v1/variants")):
        return "admin"
    if path == "/v1/jobs" or path.startswith("/v1/jobs/"):
        return "jobs"
    if method.upper() == "POST" and (path.startswith("/v1/") or (path.startswith("/v2/models/") and path.endswith("/infer"))):
        return "infer"
    return None


def caller_key(principal_name: str | None, client_host: str | None, forwarded_for: str | None, trust_forwarded_for: bool) -> str:
    """Whose bucket a request draws from: ``principal:<name>`` when auth named the caller, else
    ``addr:<first X-Forwarded-For hop>`` when trusted and present, else ``addr:<client address>``
    (``addr:unknown`` without one)."""
    if principal_name is not None:
        return f"principal:{principal_name}"
    if trust_forwarded_for and forwarded_for:
        first = forwarded_for.split(",")[0].strip()
        if first:
            return f"addr:{first}"
    return f"addr:{client_host or 'unknown'}"


# ---- the deployment ----


@serve.deployment(num_replicas=1, ray_actor_options={"num_cpus": 0}, max_ongoing_requests=1000)
class RateLimiter:
    """The one place the buckets live, asked by every ingress replica. Keep it at one replica:
    each replica would hold its own buckets, multiplying the limit.

    Args:
        config: ``rate_limits`` of the app config (:class:`RateLimitConfig` as a dict).
    """

    def __init__(self, config: dict) -> None:
        rate_limits = RateLimitConfig.model_validate(config)
        self.buckets = Buckets(rate_limits.groups, rate_limits.max_callers)

    def take(self, key: str, group: str) -> Decision | None:
        """One token of ``key``'s bucket for ``group`` (:meth:`Buckets.take`)."""
        return self.buckets.take(key, group)

    def size(self) -> int:
        """How many buckets are held."""
        return len(self.buckets)


# ---- the ingress side ----


class LimiterClient:
    """What an ingress replica holds: the limiter's handle, the config, the fail-open policy."""

    def __init__(self, handle: Any, config: RateLimitConfig, clock: Clock = time.monotonic) -> None:
        self.handle, self.config, self.clock = handle, config, clock
        self._warned_at: float | None = None

    async def decide(self, key: str, group: str) -> Decision | None:
        """The limiter's decision, or None (admit without a limit) when it fails or takes longer
        than ``timeout_s``: fail open, with a warning at most every :data:`WARN_EVERY_S`."""
        try:
            return await asyncio.wait_for(self.handle.take.remote(key, group), self.config.timeout_s)
        except Exception as err:  # noqa: BLE001 - any failure of the limiter fails open
            now = self.clock()
            if self._warned_at is None or now - self._warned_at >= WARN_EVERY_S:
                self._warned_at = now
                logger.warning("rate limiter unavailable (%s); admitting requests without a limit", type(err).__name__)
            return None


def install_rate_limits(api: Any, client: LimiterClient) -> None:
    """Limit every request to the FastAPI app ``api`` in a limited route group (a middleware; add
    it before auth's so that it runs after it and sees ``request.state.principal``). Over the
    limit: :class:`RateLimited` (429) through ``serve/errors.py``; admitted: the response carries
    the ``RateLimit-*`` headers."""

    @api.middleware("http")
    async def rate_limit(request, call_next):
        group = route_group(request.method, route_path(request))
        if group is None or group not in client.config.groups:
            return await call_next(request)
        principal = getattr(request.state, "principal", None)
        key = caller_key(
            principal.name if principal is not None else None,
            request.client.host if request.client else None,
            request.headers.get(FORWARDED_FOR_HEADER),
            client.config.trust_forwarded_for,
        )
        decision = await client.decide(key, group)
        if decision is None:
            return await call_next(request)
        if not decision.allowed:
            error: PixelfleetError = RateLimited(f"rate limit of {group} requests exceeded; retry in {decision.headers()['Retry-After']} s", decision.headers())
            return error_response(error, request)
        response = await call_next(request)
        response.headers.update(decision.headers())
        return response
