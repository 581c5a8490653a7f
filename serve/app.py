"""The application graph, built from the validated config and nothing else.

``import_path: pixelfleet.serve.app:build_app`` in ``serve/configs/*.yaml``; the config's
``args`` validate into :class:`~pixelfleet.serve.config.AppConfig` first, so a bad config fails
the deploy with pydantic's message. Every variant of every family is its own deployment, named
``<family>-<variant>``, so the Serve config's ``deployments`` list can give it its own replicas
and resources::

    Ingress --> superres-srresnet-x4, superres-srresnet-x2, ...   (one per variant)
            --> ocr-tesseract, ocr-rapidocr, ...
            --> RateLimiter   (only with rate_limits enabled; serve/ratelimit.py)
            --> JobWorker     (only with jobs enabled and jobs.worker: deployment; jobs/worker.py:
                               claims jobs from the store and runs them through the ingress's
                               run_operation. With jobs.worker: ingress, as in local.yaml, each
                               Ingress replica runs that loop itself: one process fewer)
"""

from __future__ import annotations

import os

from ray.serve import Application

from pixelfleet.deployments.spec import Limits, load_spec
from pixelfleet.serve.config import AppConfig
from pixelfleet.serve.ingress import Ingress
from pixelfleet.serve.ratelimit import RateLimiter

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def build_app(args: dict) -> Application:
    """Ingress -> one deployment per variant of every family; ``args`` as in :class:`AppConfig`."""
    config = AppConfig.model_validate(args)
    variants = {
        family: {name: config.spec(family).bind_variant(family, name, variant, config.limits) for name, variant in block.variants.items()}
        for family, block in config.families.items()
    }
    extra = {}
    if config.rate_limits is not None and config.rate_limits.enabled:  # one limiter shared by every ingress replica
        extra["limiter"] = RateLimiter.bind(config.rate_limits.model_dump(mode="json"))
    if config.jobs.enabled and config.jobs.worker == "deployment":  # runs jobs through the ingress, found by name
        from pixelfleet.jobs.worker import JobWorker  # SQLAlchemy and its kin: not in Serve's build task unless bound

        extra["job_worker"] = JobWorker.bind(config.jobs.model_dump(mode="json"), ingress=Ingress.name)  # (binding it: a cycle)
    return Ingress.bind(config=config.model_dump(mode="json"), variants=variants, **extra)


def build_variant_app(args: dict) -> Application:
    """One variant added at run time, as an application of its own (``serve/variants.py``).

    ``args``: ``family``, ``kind`` (the plug-in), ``variant``, ``config`` (the variant's block),
    ``limits``.
    """
    spec = load_spec(args["kind"])
    block = spec.config.model_validate({"default": args["variant"], "variants": {args["variant"]: args["config"]}})
    return spec.bind_variant(args["family"], args["variant"], block.variants[args["variant"]], Limits.model_validate(args.get("limits", {})))
