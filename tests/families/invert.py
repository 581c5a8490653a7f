"""A test-only model family, defined outside ``deployments/``: an image inverter.

It proves the plug-in contract (``deployments/spec.py``): the test session's config names it as
``kind: tests.families.invert:SPEC`` and the app serves it over REST, OIP v2 and by handle, with
A/B traffic, shadows and metrics, without a line of ``serve/`` knowing it. It is cheap, so the
A/B and shadow tests can send hundreds of requests.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from ray import serve

from pixelfleet.deployments.spec import FamilyConfig, FamilySpec, Limits, Operation, Result, Strict, VariantAddress, VariantDeployment
from pixelfleet.models.images import decode_image, encode_image, to_array

KIND = "tests.families.invert:SPEC"


class InvertVariant(Strict):
    """``mode``: ``invert`` (255 - x) or ``identity``; ``delay_s``: seconds added to each call."""

    mode: Literal["invert", "identity"] = "invert"
    delay_s: float = Field(0.0, ge=0, le=30)


class InvertConfig(FamilyConfig):
    kind: str = KIND
    variants: dict[str, InvertVariant]


class InvertParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format: Literal["png", "webp"] = Field("png", description="output format")
    fail: bool = Field(False, description="raise an unexpected exception in the replica (error-path tests)")


@serve.deployment(max_ongoing_requests=32, max_queued_requests=256)
class Inverter(VariantDeployment):
    """One inverter variant."""

    def __init__(self, variant: str, limits: dict, mode: str = "invert", delay_s: float = 0.0) -> None:
        self.variant, self.mode, self.delay_s = variant, mode, delay_s
        self.limits = Limits.model_validate(limits)
        self.finished = self.cancelled = 0  # calls that ran to the end / were cancelled mid-way

    async def invert(self, image: bytes | np.ndarray, params: dict, route: list[VariantAddress]) -> Result:
        """``(H, W, C)`` uint8 -> ``255 - x`` (or the same), answered in kind."""
        options = InvertParams.model_validate(params)
        if options.fail:
            raise RuntimeError("unexpected failure at /srv/secret/model.py line 12")
        pixels = to_array(decode_image(image, self.limits.max_pixels)) if isinstance(image, bytes) else image
        if self.delay_s:
            try:
                await asyncio.sleep(self.delay_s)
            except asyncio.CancelledError:
                self.cancelled += 1
                raise
        out = 255 - pixels if self.mode == "invert" else pixels.copy()
        self.finished += 1
        if not isinstance(image, bytes):
            return Result(out, "application/octet-stream")
        return Result(encode_image(out, options.format), f"image/{options.format}")

    def compare(self, operation: str, primary: Result, own: Result, params: dict) -> float | None:
        """The fraction of bytes that agree (1.0: the same image)."""
        a = primary.content if isinstance(primary.content, np.ndarray) else to_array(decode_image(primary.content, 10**9))
        b = own.content if isinstance(own.content, np.ndarray) else to_array(decode_image(own.content, 10**9))
        return float(np.mean(a == b)) if a.shape == b.shape else 0.0

    def info(self) -> dict:
        return {"variant": self.variant, "mode": self.mode, "delay_s": self.delay_s, "finished": self.finished, "cancelled": self.cancelled}

    def ready(self) -> bool:
        return True


SPEC = FamilySpec(
    name="invert",
    title="Image inverter (test family)",
    config=InvertConfig,
    deployment=Inverter,
    operations=(Operation(name="invert", params=InvertParams, output="image", summary="Invert an image"),),
    agreement="equal_fraction",
)

#: The same family with its operation marked not idempotent (``Operation.idempotent=False``): the
#: ingress does not send a call again when its replica dies, so the fault tests can show that
#: the re-send is what keeps the other stream free of failures.
ONCE_SPEC = dataclasses.replace(SPEC, name="once", operations=(dataclasses.replace(SPEC.operations[0], idempotent=False),))
