"""The ingress: one deployment in front of every model family, naming none of them.

It validates a request's parameters against the family's operation, picks the variant (an
explicit ``model``, else the A/B weights, sticky per caller), passes the request's bytes to that
variant's deployment, and copies sampled requests to shadow variants after the primary has
answered. Decoding, inference and encoding happen in the family's replicas. Its HTTP front ends
(REST ``/v1`` in ``rest.py``, OIP v2 in ``oip.py``) are built when a replica starts, from the
families the config names; every operation is also a handle method
(``serve.get_app_handle("pixelfleet").upscale.remote(...)``).

Traffic changes (weights, shadows, variants added or removed) are written to the state file and
to the ingress's ``user_config``; Serve hands the new ``user_config`` to every ingress replica
through :meth:`Ingress.reconfigure`, without restarting any replica.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from pydantic import BaseModel, ValidationError
from ray import serve
from ray.exceptions import RayActorError
from ray.serve.handle import DeploymentHandle
from ray.serve.schema import DeploymentSchema, ServeApplicationSchema, ServeDeploySchema

from pixelfleet.deployments import telemetry
from pixelfleet.deployments.spec import FamilyConfig, FamilySpec, Operation, Result, VariantAddress, check_traffic, deployment_name
from pixelfleet.models.errors import GatewayTimeout, InternalError, ModelUnavailable, NotFound, PixelfleetError, UnknownModel, Unprocessable
from pixelfleet.serve import control, metrics
from pixelfleet.serve.config import AppConfig, state_path
from pixelfleet.serve.errors import as_pixelfleet_error, describe_validation
from pixelfleet.serve.observability import trace_export, traced
from pixelfleet.serve.traffic import FamilyTraffic, TrafficState, load_state, newest, pick_variant, save_state, shadow_targets

logger = logging.getLogger("ray.serve")
READY_TIMEOUT_S = 2.0
#: Shadow copies in flight per shadow variant and ingress replica; more are skipped.
SHADOWS_IN_FLIGHT = 8


def validate_params(operation: Operation, values: dict[str, Any]) -> BaseModel:
    """The operation's options from ``values`` (None means not given); 422 if they do not fit."""
    try:
        return operation.params.model_validate({k: v for k, v in values.items() if v is not None})
    except ValidationError as err:
        raise Unprocessable(describe_validation(err.errors())) from None


@dataclass
class Family:
    """One family as the ingress serves it: its plug-in, config, variants and traffic."""

    name: str
    spec: FamilySpec
    config: FamilyConfig
    variants: dict[str, VariantAddress]
    traffic: FamilyTraffic
    handles: dict[str, DeploymentHandle] = field(default_factory=dict)
    cards: dict[str, dict] = field(default_factory=dict)
    card_errors: dict[str, PixelfleetError] = field(default_factory=dict)
    described: dict[str, dict] = field(default_factory=dict)  # spec.describe's cards, for variants scaled to zero

    def handle(self, variant: str) -> DeploymentHandle:
        if variant not in self.handles:
            self.handles[variant] = self.variants[variant].handle()
        return self.handles[variant]


@dataclass(frozen=True)
class Answer:
    """An operation's result and the variants that produced it (``superres/srresnet-x4``)."""

    result: Result
    variant: str
    family: str


@serve.deployment(max_ongoing_requests=64, max_queued_requests=256)
@serve.ingress()
class Ingress:
    """Routes requests to the variants of every family in the config.

    Args:
        config: the app's ``args`` (:class:`~pixelfleet.serve.config.AppConfig` as a dict).
        variants: family -> variant -> the bound deployment (a handle here): what ``build_app``
            wired, so the whole graph is one Serve application.
        limiter: the ``RateLimiter`` deployment's handle when rate limits are on
            (``serve/ratelimit.py``), else None.
        job_worker: the ``JobWorker`` deployment's handle when jobs are on with ``jobs.worker:
            deployment`` (``jobs/worker.py``; woken after each submit to ``/v1/jobs``), else None.
            With ``jobs.worker: ingress`` each Ingress replica runs the job loop itself
            (``self.job_runner``, a :class:`~pixelfleet.jobs.worker.JobRunner`).
    """

    def __init__(
        self, config: dict, variants: dict[str, dict[str, DeploymentHandle]], limiter: DeploymentHandle | None = None,
        job_worker: DeploymentHandle | None = None,
    ) -> None:  # fmt: skip
        self.config = AppConfig.model_validate(config)
        self.limiter = limiter
        self.job_worker = job_worker
        context = serve.get_replica_context()
        self.app_name, self.deployment_name = context.app_name, context.deployment
        self.bound = variants
        self.state = newest(self._read_state_file())
        self.families: dict[str, Family] = {}
        self._apply(self.state)
        self._background: set[asyncio.Task] = set()
        self._shadow_slots: dict[tuple[str, str], asyncio.Semaphore] = {}
        self._change_lock = asyncio.Lock()
        self._replicas: dict[tuple[str, str], control.Replicas] | None = None
        self._replicas_refresh: asyncio.Future | None = None  # the one controller call in flight, shared
        self.job_runner = None
        if self.config.jobs.enabled and self.config.jobs.worker == "ingress":
            from pixelfleet.jobs.worker import JobRunner

            self.job_runner = JobRunner(self.config.jobs.model_dump(mode="json"), ingress=self.deployment_name)
            # Serve's health check, only here: a replica without one gets Serve's own watchdog of its event loop
            self.check_health = self.job_runner.check_health

    def wake_jobs(self) -> None:
        """A job was submitted: the job worker polls the store now (it polls anyway if this is lost)."""
        if self.job_runner is not None:
            self.job_runner.wake()
        elif self.job_worker is not None:
            self.job_worker.wake.remote()

    async def __del__(self) -> None:
        """Serve stops this replica cleanly: its job loop hands its running jobs back."""
        if self.job_runner is not None:
            await self.job_runner.stop()

    def __serve_build_asgi_app__(self):
        from pixelfleet.serve.rest import build_api

        return build_api(self)

    # ---- state: config + state file + user_config ----

    def _read_state_file(self) -> TrafficState | None:
        try:
            return load_state(state_path(self.config))
        except (OSError, ValueError) as err:
            logger.warning("state file %s is not readable (%s); using the config's traffic", self.config.state.path, err)
            return None

    def _apply(self, state: TrafficState) -> None:
        """Rebuild every family's variants and traffic from the config and ``state``."""
        families = {}
        for name, family_config in self.config.families.items():
            spec = self.config.spec(name)
            removed = set(state.removed.get(name, []))
            variants = {
                variant: VariantAddress(name, variant, self.app_name, deployment_name(name, variant))
                for variant in family_config.variants
                if variant not in removed
            }
            for variant, record in state.added.get(name, {}).items():
                variants[variant] = VariantAddress(name, variant, record.app, deployment_name(name, variant))
            traffic = state.families.get(name) or FamilyTraffic(weights=family_config.weights(), shadow=family_config.shadow)
            previous = self.families.get(name)
            handles = dict(self.bound.get(name, {}))
            handles = {v: h for v, h in handles.items() if v in variants}
            families[name] = Family(name, spec, family_config, variants, traffic, handles)
            if previous is not None:  # keep the cards already fetched
                families[name].cards = {v: c for v, c in previous.cards.items() if v in variants}
        self.families, self.state = families, state

    def reconfigure(self, user_config: dict) -> None:
        """Serve's live update: ``user_config`` is a :class:`TrafficState`; the newest revision
        (it, the state file, or what this replica holds) wins."""
        given = TrafficState.model_validate(user_config) if user_config else None
        state = newest(given, self._read_state_file(), getattr(self, "state", None))
        if state is not getattr(self, "state", None):
            self._apply(state)
            logger.info("traffic state revision %d applied", state.revision)

    # ---- handle methods: one per operation of every family ----

    def __getattr__(self, name: str):
        if name.startswith("_") or "families" not in self.__dict__:
            raise AttributeError(name)
        for family in self.families.values():
            for operation in family.spec.operations:
                if operation.name == name:
                    return self._handle_method(family.name, operation)
                if operation.stream and operation.stream_method == name:
                    return self._stream_method(family.name, operation)
        raise AttributeError(name)

    def _handle_method(self, family: str, operation: Operation):
        """``handle.<operation>.remote(image, model=None, caller=None, **params)`` -> the result's
        content (bytes, pixels or a dict); errors are the :mod:`pixelfleet.models.errors` classes."""

        async def method(image: Any = None, model: str | None = None, caller: str | None = None, **params: Any) -> Any:
            answer = await self.infer(family, operation.name, image, params, model=model, caller=caller)
            return answer.result.content

        method.__name__ = method.__qualname__ = operation.name
        method.__doc__ = f"{operation.summary} ({family}; options: {', '.join(operation.params.model_fields)})"
        return method

    def _stream_method(self, family: str, operation: Operation):
        """``handle.options(stream=True).<operation>_stream.remote(image=None, model=None,
        caller=None, **params)`` -> the events (``{"event", "data"}`` dicts), the last one the
        ``result``; errors are the :mod:`pixelfleet.models.errors` classes."""

        async def method(image: Any = None, model: str | None = None, caller: str | None = None, **params: Any):
            _, events = await self.open_stream(family, operation.name, image, params, model=model, caller=caller)
            async for event in events:
                yield event

        method.__name__ = method.__qualname__ = operation.stream_method
        method.__doc__ = f"{operation.summary}, streamed ({family})"
        return method

    async def run_operation(
        self, family: str, operation: str, data: bytes | dict[str, bytes], params: dict[str, Any], model: str | None = None,
        caller: str | None = None,
    ) -> dict[str, Any]:  # fmt: skip
        """An operation for the job worker (``jobs/worker.py``), as :meth:`infer` runs it (A/B
        split, shadows). ``data``: the encoded image, or ``{name: bytes}`` for an operation whose
        body is JSON with named images. Returns ``{"content": bytes | dict, "media_type": str,
        "variant": "<family>/<variant>"}``. Raises what :meth:`infer` raises."""
        answer = await self.infer(family, operation, data, params, model=model, caller=caller)
        return {"content": answer.result.content, "media_type": answer.result.media_type, "variant": f"{answer.family}/{answer.variant}"}

    # ---- the shared implementation ----

    def family(self, name: str) -> Family:
        """The family called ``name``; raises NotFound."""
        if name not in self.families:
            raise NotFound(f"unknown family {name!r}; served: {', '.join(sorted(self.families))}")
        return self.families[name]

    async def cards(self, family: Family, fresh: bool = False) -> dict[str, dict]:
        """The ``info()`` of every variant that answers within :data:`READY_TIMEOUT_S` (fetched once
        per variant, then cached); a variant that does not answer (dead, still starting) is left
        out this time, so it cannot hold up requests that other variants serve.

        A variant whose deployment may scale to zero (autoscaling ``min_replicas: 0``) is not
        asked while its ``info()`` is not cached: its card is the family's ``describe`` card
        (from its config, marked ``"scaled_to_zero": true``), so neither a request to another
        variant nor a listing starts its replica, and a request to it starts one (Serve's cold
        start) instead of failing here. ``fresh``: ask the controller now which replicas run
        (else its last answer; :meth:`replica_view`) and fetch the ``info()`` of those running.
        """
        missing = [v for v in family.variants if v not in family.cards]
        described: dict[str, dict] = {}
        if missing and family.spec.describe is not None:
            view = await self.replica_view(fresh)
            for variant in missing:
                replicas = view.get((family.variants[variant].app, family.variants[variant].deployment))
                if replicas is None or replicas.min_replicas != 0 or (fresh and replicas.running > 0):
                    continue
                card = self._describe(family, variant)
                if card is not None:
                    described[variant] = card
            missing = [v for v in missing if v not in described]
        if missing:

            async def fetch(variant: str) -> dict | None:
                try:
                    return await asyncio.wait_for(self._call(family, variant, family.handle(variant).info.remote()), READY_TIMEOUT_S)
                except asyncio.TimeoutError:
                    family.card_errors[variant] = ModelUnavailable(f"{family.name}/{variant} does not answer; retry shortly")
                except PixelfleetError as err:  # e.g. Overloaded: its queue is full right now
                    family.card_errors[variant] = err
                logger.warning("%s/%s: no model card yet (%s)", family.name, variant, family.card_errors[variant].code)
                return None

            infos = await asyncio.gather(*(fetch(v) for v in missing))
            family.cards.update({v: info for v, info in zip(missing, infos) if info is not None})
        return {v: family.cards.get(v) or described[v] for v in family.variants if v in family.cards or v in described}

    def _describe(self, family: Family, variant: str) -> dict | None:
        """``spec.describe``'s card of a variant of the config (cached), or None where the family
        cannot describe it (a variant added at run time, an unreadable model card)."""
        if variant not in family.described:
            config = family.config.variants.get(variant)
            if config is None:
                return None
            try:
                family.described[variant] = {**family.spec.describe(variant, config), "scaled_to_zero": True}
            except (OSError, ValueError) as err:
                logger.warning("%s/%s: no card from its config (%s); its replica is asked", family.name, variant, err)
                return None
        return family.described[variant]

    async def replica_view(self, fresh: bool = True) -> dict[tuple[str, str], control.Replicas]:
        """``(application, deployment) -> control.Replicas`` from the controller (one call, in a
        thread); ``fresh=False`` reuses the last answer when there is one. When the controller
        does not answer within :data:`READY_TIMEOUT_S` (it restarts), the last answer, else an
        empty view (every variant is then asked, as without scale to zero). Concurrent callers
        share one controller call, so a slow controller holds one thread, not one per probe."""
        if fresh or self._replicas is None:
            if self._replicas_refresh is None or self._replicas_refresh.done():
                self._replicas_refresh = asyncio.ensure_future(asyncio.to_thread(control.replicas))
                self._replicas_refresh.add_done_callback(lambda done: done.cancelled() or done.exception())  # retrieved
            try:
                self._replicas = await asyncio.wait_for(asyncio.shield(self._replicas_refresh), READY_TIMEOUT_S)
            except Exception as err:  # the controller is restarting or slow: keep what we knew
                logger.warning("replica view: the Serve controller does not answer (%r)", err)
                return self._replicas or {}
        return self._replicas

    async def _call(self, family: Family, variant: str, response) -> Any:
        try:
            return await response
        except Exception as err:  # unwrap Ray's wrappers into the error hierarchy
            raise as_pixelfleet_error(err, f"{family.name}/{variant}") from None

    def choose(self, family: Family, model: str | None, caller: str | None) -> tuple[str, bool]:
        """The variant for a request and whether the caller named it."""
        if model is not None:
            if model not in family.variants:
                raise UnknownModel(f"unknown {family.name} model {model!r}; served: {', '.join(sorted(family.variants))}")
            return model, True
        try:
            return pick_variant(family.traffic.weights, caller, family.name), False
        except ValueError as err:
            raise Unprocessable(str(err)) from None

    @traced
    async def infer(
        self, family_name: str, operation_name: str, image: Any, params: dict[str, Any], model: str | None = None, caller: str | None = None
    ) -> Answer:
        """Run an operation: validate, choose the variant(s), call the first, shadow a copy.

        Raises the :mod:`pixelfleet.models.errors` of the family (4xx) and of the call (503 when
        a deployment's queue is full or it has no running replica).
        """
        family = self.family(family_name)
        try:
            operation = family.spec.operation(operation_name)
        except KeyError:
            raise NotFound(f"family {family_name!r} has no operation {operation_name!r}") from None
        options = validate_params(operation, params)
        chosen, explicit = self.choose(family, model, caller)
        cards = await self.cards(family)
        if chosen not in cards:  # why its card is missing: a full queue (503 overloaded), or no replica
            raise family.card_errors.get(chosen) or ModelUnavailable(f"{family.name}/{chosen} does not answer; retry shortly")
        route = [family.variants[v] for v in family.spec.plan(operation, options, chosen, explicit, cards)]
        label = "+".join(address.variant for address in route)
        telemetry.annotate(variant=label)
        payload = options.model_dump(mode="json")
        started = time.monotonic()
        send = partial(family.handle(route[0].variant).invoke.remote, operation.name, image, payload, route, context=self._context(family, route[0].variant))
        try:
            result = await asyncio.wait_for(self._send(family, label, operation, send), family.config.timeout_s)
        except asyncio.TimeoutError:  # _send cancelled the call: Serve cancels it in the replica (and its chained calls)
            metrics.record_request(family.name, label, operation.name, GatewayTimeout.status, time.monotonic() - started)
            raise GatewayTimeout(f"{family.name}/{label} did not answer within {family.config.timeout_s:g} s") from None
        except Exception as err:
            metrics.record_request(family.name, label, operation.name, getattr(err, "status", 500), time.monotonic() - started)
            raise
        metrics.record_request(family.name, label, operation.name, 200, time.monotonic() - started)
        if not explicit:
            self._shadow(family, operation, options, chosen, image, payload, result, cards)
        return Answer(result, label, family.name)

    async def _send(self, family: Family, label: str, operation: Operation, send: Callable[[], Any]) -> Result:
        """Await ``send()``, a handle call to the route's first variant, and return its result.

        A replica that dies under the call (``ray.kill``, a lost node: Ray's ``RayActorError``,
        i.e. ``ActorDiedError`` or ``ActorUnavailableError``) gets the call sent once more, at
        once, when the operation is idempotent: Serve's router has dropped the dead replica, so
        the second call goes to another replica (or waits for the one the controller starts).
        A second failure answers 503 ``model_unavailable``.

        Cancellation (the HTTP client went away, or the family's timeout in ``wait_for``) cancels
        the call in flight, so the replica's work stops (``asyncio.CancelledError`` there)
        instead of running on for nobody; no shadow is sent for it.

        Raises: the :mod:`pixelfleet.models.errors` form of the call's error; CancelledError.
        """
        response = send()
        try:
            try:
                return await response
            except RayActorError:
                if not operation.idempotent:
                    raise
                logger.warning("%s/%s: the replica died during the call; sent once more", family.name, label)
                response = send()
                return await response
        except asyncio.CancelledError:
            response.cancel()
            raise
        except Exception as err:  # unwrap Ray's wrappers into the error hierarchy
            raise as_pixelfleet_error(err, f"{family.name}/{label}") from None

    async def open_stream(
        self, family_name: str, operation_name: str, image: Any, params: dict[str, Any], model: str | None = None, caller: str | None = None
    ) -> tuple[str, Any]:
        """Start a streamed operation (``Operation.stream``) on the chosen variant and return its
        label and its events (an async iterator of ``{"event", "data"}`` dicts).

        Validation, the variant choice and the first event happen before this returns, so what
        the request gets wrong (422, an unknown adapter's 404, ...) raises here, as for
        :meth:`infer`; later errors end the events with ``{"event": "error", "data": {"error":
        {"code", "message"}}}``. Closing or cancelling the iterator (the client went away)
        cancels the generator in the replica. No shadow, no retry, no ``timeout_s``: the caller
        sees every step and decides.

        Raises: as :meth:`infer`; NotFound for an operation that does not stream.
        """
        family = self.family(family_name)
        try:
            operation = family.spec.operation(operation_name)
        except KeyError:
            raise NotFound(f"family {family_name!r} has no operation {operation_name!r}") from None
        if not operation.stream:
            raise NotFound(f"{family_name} {operation_name} is not streamed")
        options = validate_params(operation, params)
        chosen, explicit = self.choose(family, model, caller)
        cards = await self.cards(family)
        if chosen not in cards:
            raise family.card_errors.get(chosen) or ModelUnavailable(f"{family.name}/{chosen} does not answer; retry shortly")
        route = [family.variants[v] for v in family.spec.plan(operation, options, chosen, explicit, cards)]
        label = "+".join(address.variant for address in route)
        telemetry.annotate(variant=label)
        handle = family.handle(route[0].variant).options(stream=True)
        generator = handle.invoke_stream.remote(
            operation.stream_method, image, options.model_dump(mode="json"), route, context=self._context(family, route[0].variant)
        )
        started = time.monotonic()
        try:
            first = await generator.__anext__()
        except StopAsyncIteration:
            raise InternalError(f"{family.name}/{label} sent no events") from None
        except asyncio.CancelledError:
            generator.cancel()
            raise
        except Exception as err:
            error = as_pixelfleet_error(err, f"{family.name}/{label}")
            metrics.record_request(family.name, label, operation.stream_method, error.status, time.monotonic() - started)
            raise error from None

        async def events():
            status = 200
            try:
                yield first
                async for event in generator:
                    yield event
            except (asyncio.CancelledError, GeneratorExit):
                status = 499  # the client closed the request (nginx's code): not an error of ours
                generator.cancel()
                raise
            except Exception as err:
                error = as_pixelfleet_error(err, f"{family.name}/{label}")
                status = error.status
                yield {"event": "error", "data": {"error": {"code": error.code, "message": error.message}}}
            finally:
                metrics.record_request(family.name, label, operation.stream_method, status, time.monotonic() - started)

        return label, events()

    async def listing(self, family_name: str, route: str, model: str | None = None) -> Any:
        """A family's read-only listing (``FamilySpec.listings``) from ``model`` (default: the
        family's default variant). Raises NotFound, UnknownModel."""
        family = self.family(family_name)
        found = next((item for item in family.spec.listings if item.route == route), None)
        if found is None:
            raise NotFound(f"family {family_name!r} has no listing {route!r}")
        variant = model or family.config.default
        if variant not in family.variants:
            raise UnknownModel(f"unknown {family.name} model {variant!r}; served: {', '.join(sorted(family.variants))}")
        return await self._call(family, variant, getattr(family.handle(variant), found.method).remote())

    def _context(self, family: Family, variant: str) -> telemetry.CallContext:
        """Trace context and request id for a call to ``variant`` (``VariantDeployment.invoke``)."""
        return telemetry.call_context(family.name, variant, trace_export(self.config))

    def _shadow(self, family: Family, operation: Operation, options: BaseModel, primary: str, image: Any, payload: dict, result: Result, cards: dict) -> None:
        """Copy the request to the sampled shadow variants, after the primary answered; their
        answers are compared with the primary's and dropped. At most :data:`SHADOWS_IN_FLIGHT`
        copies per shadow variant run at once (per ingress replica); a copy beyond that is
        skipped (counted), so shadows never pile up in the ingress or flood the variant."""
        for variant in shadow_targets(family.traffic.shadow, primary):
            slots = self._shadow_slots.setdefault((family.name, variant), asyncio.Semaphore(SHADOWS_IN_FLIGHT))
            if slots.locked():
                metrics.record_shadow(family.name, variant, "skipped", None, None)
                continue
            task = asyncio.create_task(self._run_shadow(family, operation, options, variant, image, payload, result, cards, slots))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def _run_shadow(self, family: Family, operation: Operation, options: BaseModel, variant: str, image: Any, payload: dict, primary: Result, cards: dict, slots: asyncio.Semaphore) -> None:
        async with slots:
            await self._shadow_call(family, operation, options, variant, image, payload, primary, cards)

    async def _shadow_call(self, family: Family, operation: Operation, options: BaseModel, variant: str, image: Any, payload: dict, primary: Result, cards: dict) -> None:
        started = time.monotonic()
        try:
            route = [family.variants[v] for v in family.spec.plan(operation, options, variant, True, cards)]
        except Exception:  # the shadow cannot serve this request (e.g. another scale): not compared
            metrics.record_shadow(family.name, variant, "skipped", None, None)
            return
        try:
            response = family.handle(variant).invoke.remote("shadow", operation.name, image, payload, route, primary, context=self._context(family, variant))
            try:
                agreement = await asyncio.wait_for(response, family.config.timeout_s)
            except asyncio.TimeoutError:
                response.cancel()
                raise
        except Exception as err:
            logger.warning("shadow %s/%s failed: %s", family.name, variant, as_pixelfleet_error(err, f"{family.name}/{variant}").message)
            metrics.record_shadow(family.name, variant, "error", time.monotonic() - started, None)
            return
        metrics.record_shadow(family.name, variant, "ok", time.monotonic() - started, agreement, family.spec.agreement)

    # ---- listing, readiness, traffic ----

    async def list_models(self) -> dict:
        """Every family with its default, its traffic and its variants' cards (``GET /v1/models``)."""
        listing = {}
        for name, family in self.families.items():
            cards = await self.cards(family, fresh=True)
            listing[name] = {
                "kind": family.config.kind,
                "title": family.spec.title,
                "default": family.config.default,
                "operations": [op.name for op in family.spec.operations],
                "traffic": family.traffic.model_dump(),
                "variants": cards,
            }
        return {"families": listing}

    async def ready(self) -> dict[str, bool]:
        """Whether each variant's replica answers (``family/variant`` -> bool) within 2 s; a
        variant scaled to zero counts as ready without being called (:meth:`readiness`)."""
        return (await self.readiness())[0]

    async def readiness(self) -> tuple[dict[str, bool], list[str]]:
        """``family/variant`` -> whether its replica answers ``ready()`` within
        :data:`READY_TIMEOUT_S`, and the variants scaled to zero (``control.Replicas.scaled_to_zero``):
        those count as ready and are not called, since a call would start a replica (a request
        to them waits for its cold start); one whose deployment is unhealthy is not ready."""
        view = await self.replica_view()

        async def answers(family: Family, variant: str) -> bool:
            try:
                return bool(await asyncio.wait_for(self._call(family, variant, family.handle(variant).ready.remote()), READY_TIMEOUT_S))
            except Exception as err:  # not up yet, or failing: not ready either way
                logger.info("readiness: %s/%s does not answer yet: %r", family.name, variant, err)
                return False

        async def at_zero(family: Family, variant: str, replicas: control.Replicas) -> bool:
            """Ready without a call: its deployment is healthy and, where the family can
            describe variants, its config gives a card (a wrong model path shows here, not at
            its first request)."""
            configured = family.spec.describe is not None and variant in family.config.variants  # not one added at run time
            described = not configured or self._describe(family, variant) is not None
            return described and replicas.status not in ("UNHEALTHY", "DEPLOY_FAILED")

        pairs = [(family, variant) for family in self.families.values() for variant in family.variants]
        zero = {
            (f.name, v): replicas for f, v in pairs
            if (replicas := view.get((f.variants[v].app, f.variants[v].deployment))) is not None and replicas.scaled_to_zero
        }  # fmt: skip
        states = await asyncio.gather(*(at_zero(f, v, zero[f.name, v]) if (f.name, v) in zero else answers(f, v) for f, v in pairs))
        return {f"{f.name}/{v}": state for (f, v), state in zip(pairs, states)}, sorted(f"{f}/{v}" for f, v in zero)

    def traffic(self) -> dict:
        """Every family's weights, shadows and variants, and this app's name (``GET /v1/traffic``)."""
        return {
            "app": self.app_name,
            "revision": self.state.revision,
            "families": {
                name: {**family.traffic.model_dump(), "default": family.config.default, "variants": sorted(family.variants)}
                for name, family in self.families.items()
            },
        }

    async def set_traffic(self, family_name: str, weights: dict[str, float] | None = None, shadow: dict[str, float] | None = None) -> dict:
        """Change a family's A/B weights and/or shadows, live on every ingress replica, persisted.

        Raises:
            NotFound: no such family. Unprocessable: unknown variants, negative or non-finite
                weights, a zero sum.
        """
        self.family(family_name)

        def change(state: TrafficState) -> None:  # runs under the change lock, on the newest state
            family = self.families[family_name]
            new = FamilyTraffic(
                weights=family.traffic.weights if weights is None else weights,
                shadow=family.traffic.shadow if shadow is None else shadow,
            )
            try:
                check_traffic(new.weights, new.shadow, set(family.variants))
            except ValueError as err:
                raise Unprocessable(str(err)) from None
            state.families[family_name] = new

        await self.commit(change)
        return self.traffic()["families"][family_name]

    async def commit(self, change: Callable[[TrafficState], None]) -> TrafficState:
        """Apply ``change`` to a copy of the newest state, one change at a time (what it checks
        sees every change committed before it), and make the result the app's: the state file,
        this replica, and every ingress replica through Serve's ``user_config``. An exception
        from ``change`` leaves everything as it was.

        One lock per ingress replica: two replicas changing traffic at the same instant can still
        race (the later revision wins); admin changes are rare and go to one replica in practice.
        """
        async with self._change_lock:
            state = self.state.model_copy(deep=True)
            change(state)
            state.revision = self.state.revision + 1
            await asyncio.to_thread(save_state, state_path(self.config), state)
            self._apply(state)
            await asyncio.to_thread(self._change_deployed, partial(self._set_user_config, state))
            return state

    async def change_deployed(self, change: Callable[[ServeDeploySchema], None]) -> bool:
        """Read what the controller runs, ``change`` it and submit it, under the change lock (so no
        two read-modify-submits of this replica interleave). False where the app was deployed
        from Python and has no config to resubmit."""
        async with self._change_lock:
            return await asyncio.to_thread(self._change_deployed, change)

    def _change_deployed(self, change: Callable[[ServeDeploySchema], None]) -> bool:
        schema = control.deployed_config()
        if schema is None:  # deployed from Python (serve.run): this replica and the state file only
            logger.warning("the app was not deployed from a config; the change holds on this ingress replica and in the state file")
            return False
        change(schema)
        control.submit(schema)
        return True

    def own_app(self, schema: ServeDeploySchema) -> ServeApplicationSchema:
        """This app's entry in a deployed config. Raises InternalError if it is missing."""
        app = next((a for a in schema.applications if a.name == self.app_name), None)
        if app is None:
            raise InternalError(f"application {self.app_name} is not in the deployed config")
        return app

    def _set_user_config(self, state: TrafficState, schema: ServeDeploySchema) -> None:
        app = self.own_app(schema)
        ingress = next((d for d in app.deployments if d.name == self.deployment_name), None)
        if ingress is None:
            ingress = DeploymentSchema(name=self.deployment_name)
            app.deployments.append(ingress)
        ingress.user_config = state.model_dump(mode="json")
