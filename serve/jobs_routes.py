"""REST routes of durable jobs (``/v1/jobs``; the store and worker are in ``jobs/``).

- ``POST /v1/jobs``: ``{"family", "operation", "input": {"url"} | {"data": base64}, "params",
  "model", "callback_url", "priority"}``. Everything is checked before anything is stored
  (family, operation, params against the family's spec, the input URL against the storage
  roots, the callback URL against the webhook allow-list): a bad request is a 4xx now, not a
  failed job later. The job's row is committed before ``202 Accepted`` (with ``Location``)
  is answered. ``Idempotency-Key`` (draft-ietf-httpapi-idempotency-key-header): a retried
  submit with the same key and body answers the same job (``Idempotent-Replayed: true``); the
  key with another body is a 422.
- ``GET /v1/jobs/{id}``, ``GET /v1/jobs?state=&limit=&before=`` (newest first; ``next`` is the
  cursor of the next page), ``POST /v1/jobs/{id}/cancel``, ``GET /v1/jobs/{id}/result`` (the
  result's bytes or JSON; 409 until the job succeeded), ``GET /v1/jobs/{id}/events``
  (server-sent events, ``text/event-stream``: a ``state`` event when the state changes, a
  ``progress`` event when only the progress does; the stream ends with the job).

Jobs belong to the caller: the authenticated principal when auth is on, else ``X-Client-Id``
(callers without either share the anonymous owner); anyone else gets 404. The ``jobs`` scope
guards these routes (``serve/auth.py``); the rate-limit group is ``jobs`` (``serve/ratelimit.py``).

No ``from __future__ import annotations`` here: FastAPI reads the endpoints' annotations.
"""

import asyncio
import base64
import binascii
import json
import time
import uuid
from typing import TYPE_CHECKING, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from pixelfleet.jobs.store import STATES, TERMINAL, CANCELLED, SUCCEEDED, IdempotencyMismatch, Job, JobStore, NewJob, request_hash
from pixelfleet.jobs.storage import Storage
from pixelfleet.jobs.webhooks import check_callback_url
from pixelfleet.jobs.worker import COMPOSITE
from pixelfleet.models.errors import Conflict, InvalidInput, NotFound, Unprocessable
from pixelfleet.serve.errors import describe_validation
from pixelfleet.serve.rest import VARIANT_HEADER, caller_of
from pixelfleet.serve.uploads import read_limited

if TYPE_CHECKING:
    from pixelfleet.serve.ingress import Ingress

IDEMPOTENCY_HEADER = "Idempotency-Key"
KEEP_ALIVE_S = 15.0  # an SSE comment line this often keeps proxies from closing an idle stream
MAX_IDEMPOTENCY_KEY = 255
ANONYMOUS = ""


class JobInput(BaseModel):
    """The image of a one-image job: exactly one of ``url`` (a storage URL below a configured
    root) and ``data`` (the file's bytes, base64, RFC 4648 section 4)."""

    model_config = ConfigDict(extra="forbid")

    url: str | None = Field(None, description="storage URL of the input (local path, file:// or s3://, below a root)")
    data: str | None = Field(None, description="the input file, base64")

    @model_validator(mode="after")
    def _one(self) -> "JobInput":
        if (self.url is None) == (self.data is None):
            raise ValueError("give exactly one of url and data")
        return self


class JobRequest(BaseModel):
    """``POST /v1/jobs``."""

    model_config = ConfigDict(extra="forbid")

    family: str = Field(description="the model family (GET /v1/models)")
    operation: str = Field(description="one of the family's operations, or batch / video (params say what to run)")
    input: JobInput | None = Field(None, description="the image (every operation but batch; a video job's video, or params.input)")
    params: dict = Field(default_factory=dict, description="the operation's options, as its REST route takes them")
    model: str | None = Field(None, description="a variant to force; default: the A/B split")
    callback_url: str | None = Field(None, description="webhook URL called when the job ends (on the allow-list)")
    priority: int = Field(0, ge=-1000, le=1000, description="higher runs first")


def _inline(schema: dict) -> dict:
    """A pydantic JSON schema with its ``$defs`` written in place of their ``$ref`` (OpenAPI's
    ``openapi_extra`` has no room for ``$defs``)."""
    defs = schema.pop("$defs", {})

    def walk(node):
        if isinstance(node, dict):
            if "$ref" in node:
                return walk(defs[node["$ref"].rsplit("/", 1)[-1]])
            return {key: walk(value) for key, value in node.items()}
        if isinstance(node, list):
            return [walk(value) for value in node]
        return node

    return walk(schema)


def _image_inputs(operation) -> dict[str, bool]:
    """The operation's image inputs and whether each is required: ``{"image": True}`` for an
    image-body operation, its named ``images`` for a JSON-body one."""
    if getattr(operation, "body", "image") == "json":
        return dict(getattr(operation, "images", {}))
    return {"image": True}


def owner_of(request: Request) -> str:
    """Whose job it is: ``<kind>:<name>`` of the authenticated caller (``api_key:ci``,
    ``jwt:alice``) when auth is on, else ``client:<X-Client-Id>``, else anonymous (``""``). The
    kind keeps a key, a token subject and a client id of the same name apart."""
    principal = getattr(request.state, "principal", None)
    if principal is not None:
        return f"{principal.kind}:{principal.name}"
    client = caller_of(request)
    return f"client:{client}" if client else ANONYMOUS


def _idempotency_key(request: Request) -> str | None:
    key = request.headers.get(IDEMPOTENCY_HEADER)
    if key is None:
        return None
    key = key.strip().strip('"')  # the draft's sf-string form ("...") or a bare token
    if not 0 < len(key) <= MAX_IDEMPOTENCY_KEY or not key.isprintable():
        raise InvalidInput(f"{IDEMPOTENCY_HEADER} must be 1 to {MAX_IDEMPOTENCY_KEY} printable characters")
    return key


class Jobs:
    """What one ingress replica's job routes share: the store, storage, and the checks."""

    def __init__(self, ingress: "Ingress") -> None:
        self.ingress = ingress
        self.config = ingress.config.jobs
        runner = ingress.job_runner  # the job loop in this replica (jobs.worker: ingress): one store, migrated once
        if runner is not None:
            self.store, self.storage = runner.store, runner.storage
        else:
            self.store = JobStore(self.config.url())
            self.store.migrate()
            self.storage = Storage(self.config.storage)

    # ---- checks ----

    def check(self, body: JobRequest) -> None:
        """Refuse what cannot run, with a 4xx: unknown family, operation, variant, bad params,
        a missing or superfluous input, a callback URL off the allow-list."""
        family = self.ingress.families.get(body.family)
        if family is None:
            raise Unprocessable(f"unknown family {body.family!r}; served: {', '.join(sorted(self.ingress.families))}")
        if body.operation in COMPOSITE:
            if body.input is not None and body.operation == "batch":
                raise Unprocessable("a batch job names its inputs in params (inputs, prefix or zip), not in input")
            operation, params, model = self._composite(body)
        else:
            operation, params, model = body.operation, body.params, body.model
        try:
            spec_operation = family.spec.operation(operation)
        except KeyError:
            names = ", ".join([op.name for op in family.spec.operations] + list(COMPOSITE))
            raise Unprocessable(f"family {body.family!r} has no operation {operation!r}; operations: {names}") from None
        if body.operation not in COMPOSITE:
            wanted = _image_inputs(spec_operation)
            if body.input is None and any(wanted.values()):
                raise Unprocessable(f"{body.family} {body.operation} needs an input: {{'url': ...}} or {{'data': base64}}")
            if body.input is not None and len(wanted) > 1:
                raise Unprocessable(f"{body.family} {body.operation} takes several images; jobs give one input")
            if body.input is not None and not wanted and getattr(spec_operation, "body", "image") == "json":
                raise Unprocessable(f"{body.family} {body.operation} takes no image")
        from pixelfleet.serve.ingress import validate_params

        validate_params(spec_operation, params)
        if model is not None and model not in family.variants:
            raise Unprocessable(f"unknown {body.family} model {model!r}; served: {', '.join(sorted(family.variants))}")
        if body.callback_url is not None:
            check_callback_url(body.callback_url, self.config.webhooks)

    def _composite(self, body: JobRequest) -> tuple[str, dict, str | None]:
        """A batch or video job's own checks (``jobs/batch.py``, ``jobs/video.py``); returns the
        operation, params and model each of its items runs with."""
        if body.operation == "batch":
            from pixelfleet.jobs.batch import validate as validate_batch

            spec = validate_batch(body.params, self.storage)
        else:  # a video comes from params.input or the job's input
            from pixelfleet.jobs.video import validate as validate_video

            spec = validate_video(body.params, self.storage, has_input=body.input is not None)
        return getattr(spec, "operation", "upscale"), getattr(spec, "params", {}), getattr(spec, "model", body.model)

    def store_input(self, job_id: str, body: JobRequest) -> dict | None:
        """Where the job's input lies: ``{"url"}``, a checked URL (it must exist) or the decoded
        ``data`` written below the results root (``<job>/input``); with ``"as": NAME`` for an
        operation whose body is JSON with named images (the worker then passes ``{NAME: bytes}``)."""
        given = body.input
        if given is None:
            return None
        named = {}
        if body.operation not in COMPOSITE:
            operation = self.ingress.families[body.family].spec.operation(body.operation)
            if getattr(operation, "body", "image") == "json":
                named = {"as": next(iter(_image_inputs(operation)))}
        if given.url is not None:
            where = self.storage.locate(given.url, results=False)  # refused (400): not below an input root (results are their owner's)
            self.storage.size(where.url)  # missing (404)
            return {"url": where.url, **named}
        try:
            data = base64.b64decode(given.data, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidInput("input.data is not valid base64") from None
        if not data:
            raise InvalidInput("input.data is empty")
        return {"url": self.storage.write_bytes(self.storage.result_url(job_id, "input"), data), **named}

    def drop_input(self, given: JobInput | None, stored: dict | None) -> None:
        """Delete the input :meth:`store_input` wrote for a job that was not created."""
        if given is not None and given.data is not None and stored is not None:
            self.storage.delete(stored["url"])

    # ---- views ----

    def view(self, job: Job) -> dict:
        """The job as the API shows it, its webhook attempts included."""
        shown = job.public()
        if job.callback_url is not None:
            shown["webhook"] = {"state": job.webhook_state, "deliveries": [d.public() for d in self.store.deliveries(job.id)]}
        return shown

    def owned(self, job_id: str, owner: str) -> Job:
        """``owner``'s job ``job_id``; NotFound (404) if there is none (or it is another's)."""
        job = self.store.get(job_id, owner)
        if job is None:
            raise NotFound(f"no job {job_id}")
        return job


def build_router(ingress: "Ingress") -> APIRouter:
    """The ``/v1/jobs`` routes of one ingress replica (opens the store and migrates it)."""
    jobs = Jobs(ingress)
    router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

    body_schema = {"required": True, "content": {"application/json": {"schema": _inline(JobRequest.model_json_schema())}}}

    @router.post("", status_code=202, response_class=JSONResponse, openapi_extra={"requestBody": body_schema})
    async def submit(request: Request) -> JSONResponse:
        """Submit a job; 202 with the job and ``Location``. See the module's docstring."""
        raw = await read_limited(request, ingress.config.limits.max_body_bytes)
        try:
            body = JobRequest.model_validate_json(raw)
        except ValidationError as err:
            raise Unprocessable(describe_validation(err.errors())) from None
        owner, key = owner_of(request), _idempotency_key(request)
        await asyncio.to_thread(jobs.check, body)  # batch and video checks look at storage
        fingerprint = request_hash(body.model_dump(mode="json"))
        existing = await asyncio.to_thread(jobs.store.by_key, owner, key) if key is not None else None
        if existing is None:
            job_id = uuid.uuid4().hex
            stored = await asyncio.to_thread(jobs.store_input, job_id, body)
            new = NewJob(
                owner=owner, family=body.family, operation=body.operation, params=body.params, request_hash=fingerprint, input=stored,
                model=body.model, callback_url=body.callback_url, priority=body.priority, idempotency_key=key, id=job_id,
            )  # fmt: skip
            try:
                job, created = await asyncio.to_thread(jobs.store.submit, new, jobs.config.max_attempts)
            except IdempotencyMismatch as err:
                existing, created = err.job, False
            if not created:
                await asyncio.to_thread(jobs.drop_input, body.input, stored)
        if existing is not None:  # a retried submit: the first one's job
            if existing.request_hash != fingerprint:
                raise Unprocessable(f"{IDEMPOTENCY_HEADER} was used for another request (job {existing.id})")
            job, created = existing, False
        if created:
            ingress.wake_jobs()
        headers = {"Location": f"{request.scope.get('root_path', '')}/v1/jobs/{job.id}"}
        if not created:
            headers["Idempotent-Replayed"] = "true"
        return JSONResponse(await asyncio.to_thread(jobs.view, job), status_code=202, headers=headers)

    @router.get("")
    async def list_jobs(
        request: Request,
        state: Literal[STATES] | None = Query(None, description="only jobs in this state"),  # type: ignore[valid-type]
        limit: int | None = Query(None, ge=1, le=1000, description="jobs per page (default: jobs.page_size)"),
        before: int | None = Query(None, ge=0, description="the cursor from the previous page's next"),
    ) -> dict:
        """The caller's jobs, newest first, paged: ``{"jobs": [...], "next": cursor | null}``."""
        page = limit or jobs.config.page_size
        found = await asyncio.to_thread(jobs.store.list, owner_of(request), state, page, before)
        return {"jobs": [job.public() for job in found], "next": found[-1].seq if len(found) == page else None}

    @router.get("/{job_id}")
    async def get_job(job_id: str, request: Request) -> dict:
        """One job: state, progress, attempts, error, result's media type, webhook attempts."""
        job = await asyncio.to_thread(jobs.owned, job_id, owner_of(request))
        return await asyncio.to_thread(jobs.view, job)

    @router.post("/{job_id}/cancel")
    async def cancel_job(job_id: str, request: Request) -> dict:
        """Cancel a queued or running job; 409 if it already finished otherwise."""
        job = await asyncio.to_thread(jobs.store.cancel, job_id, owner_of(request))
        if job is None:
            raise NotFound(f"no job {job_id}")
        if job.state != CANCELLED:
            raise Conflict(f"job {job_id} already {job.state}")
        return job.public()

    @router.get("/{job_id}/result", response_class=Response, responses={200: {"content": {"image/png": {}, "application/json": {}}}})
    async def job_result(job_id: str, request: Request) -> Response:
        """The result: the image's bytes (or the operation's JSON); a video's bytes; a batch's
        summary JSON (its manifest's URL). 409 until the job has succeeded."""
        job = await asyncio.to_thread(jobs.owned, job_id, owner_of(request))
        if job.state != SUCCEEDED:
            raise Conflict(f"job {job_id} is {job.state}; its result exists once it has succeeded")
        headers = {VARIANT_HEADER: job.variant} if job.variant else {}
        if job.operation == "batch" or job.result_url is None:
            return JSONResponse(job.result or {}, headers=headers)
        where = await asyncio.to_thread(jobs.storage.locate, job.result_url)

        def chunks():  # streamed from storage in 1 MiB pieces (Starlette iterates it in a thread)
            with where.fs.open(where.path, "rb") as source:
                while block := source.read(1 << 20):
                    yield block

        return StreamingResponse(chunks(), media_type=job.result_media_type, headers=headers)

    @router.get("/{job_id}/events", response_class=StreamingResponse, responses={200: {"content": {"text/event-stream": {}}}})
    async def job_events(job_id: str, request: Request) -> StreamingResponse:
        """Server-sent events (text/event-stream, the WHATWG HTML standard's format): ``state``
        when the job's state changes, ``progress`` when only its progress does; each ``data`` is
        the job's JSON, its ``id`` a counter. A comment line (``: keep-alive``) goes out every
        :data:`KEEP_ALIVE_S` seconds without an event, and a stream ends after
        ``jobs.events_max_s`` seconds (the client connects again: ``retry`` says after how many
        milliseconds), so a watcher holds an ingress slot for a bounded time."""
        owner = owner_of(request)
        first = await asyncio.to_thread(jobs.owned, job_id, owner)

        async def events():
            job, shown, number = first, None, 0
            started = last_sent = time.monotonic()
            yield f"retry: {int(jobs.config.poll_interval_s * 1000)}\n\n"
            while job is not None:
                now = (job.state, job.progress, job.stage, job.attempts)
                if shown is None or now != shown:
                    kind = "state" if shown is None or shown[0] != job.state or shown[3] != job.attempts else "progress"
                    number += 1
                    yield f"id: {number}\nevent: {kind}\ndata: {json.dumps(job.public(), separators=(',', ':'))}\n\n"
                    shown, last_sent = now, time.monotonic()
                elif time.monotonic() - last_sent >= KEEP_ALIVE_S:
                    yield ": keep-alive\n\n"
                    last_sent = time.monotonic()
                if job.state in TERMINAL or await request.is_disconnected() or time.monotonic() - started > jobs.config.events_max_s:
                    return
                await asyncio.sleep(jobs.config.events_interval_s)
                job = await asyncio.to_thread(jobs.store.get, job_id, owner)

        return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    return router

