"""What a running job sees: the interface between the job worker (``jobs/worker.py``) and the
work it runs (one operation, ``jobs/batch.py``, ``jobs/video.py``).

The worker builds one :class:`JobContext` per claimed job. Everything slow (inference, storage)
is awaited; everything the caller should see later (progress, checkpoints) goes to the job's row
in the store, so it survives the worker replica.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable


@dataclass(frozen=True)
class InferResult:
    """One operation's answer, as the ingress produced it.

    Attributes:
        content: the encoded result: image bytes (PNG/JPEG/WebP as the params asked) or a JSON
            object (e.g. OCR's text and boxes).
        media_type: the content's media type (``image/png``, ``application/json``).
        variant: the variant(s) that produced it (``srresnet-x4``, or ``a+b`` for a chain).
    """

    content: bytes | dict
    media_type: str
    variant: str


@runtime_checkable
class JobContext(Protocol):
    """A claimed job, as the work that runs it sees it.

    Attributes:
        job_id: the job's id (a UUID4 hex string, 32 characters).
        family: the job's target family (``superres``).
        operation: the job's operation (``upscale``, or ``batch`` / ``video``).
        params: the job's ``params`` as submitted (JSON object).
        attempt: 1 on the first run, 2 after the first retry or lease expiry, ...
        resume_state: the last :meth:`checkpoint`'s state on a rerun (after a crash, a lease
            expiry or a retry), else None.
    """

    job_id: str
    family: str
    operation: str
    params: dict
    attempt: int
    resume_state: dict | None

    async def infer(self, family: str, operation: str, data: bytes | dict[str, bytes], params: dict, model: str | None = None) -> InferResult:
        """Run one operation through the app's ingress (validation, A/B split and shadows apply,
        the job's owner is the caller for sticky routing).

        Args:
            data: the encoded input image (bytes); for an operation whose body is JSON with
                named images (``Operation.body == "json"``), ``{name: bytes}`` (``{}``: none).
            params: the operation's options (validated against the family's spec).
            model: a variant to force, else the traffic weights choose.

        Raises:
            pixelfleet.models.errors.PixelfleetError: the family's 4xx (bad image, bad params) and
                the call's 5xx (overloaded, unavailable, timeout).
        """
        ...

    async def progress(self, done: int, total: int, stage: str) -> None:
        """Record progress in the job's row: ``percent = 100 * done / total`` (0 if total is 0)
        and ``stage`` (a short word: ``frames``, ``items``, ``encode``); also renews the lease."""
        ...

    async def checkpoint(self, state: dict) -> None:
        """Persist ``state`` (a JSON object) in the job's row; a rerun of the job gets it back as
        :attr:`resume_state`. Also renews the lease."""
        ...

    def cancelled(self) -> bool:
        """Whether the job was cancelled since it was claimed (seen at the last heartbeat or
        progress write). Long work should check it between items and return early."""
        ...
