"""The application graph, built from the validated config and nothing else.

``import_path: serve.app:build_app`` in ``serve/configs/*.yaml``; the config's ``args``
validate into :class:`~serve.config.AppConfig` first, so a bad config fails the deploy with
pydantic's message. Every
variant of a family is its own deployment, named ``<family>-<variant>``, so the Serve config's
``deployments`` list can give it its own replicas and resources.
"""

from __future__ import annotations

import os

from ray.serve import Application

from deployments.ocr import OCR
from deployments.superres import SuperResolution
from serve.config import AppConfig
from serve.ingress import Ingress

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def build_app(args: dict) -> Application:
    """Ingress -> {SuperResolution[variant]}, {OCR[variant]}; ``args`` as in :class:`AppConfig`."""
    config = AppConfig.model_validate(args)
    superres = {
        name: SuperResolution.options(name=f"superres-{name}").bind(
            variant=name, weights=str(variant.weights_path()), **variant.model_dump(exclude={"weights"})
        )
        for name, variant in config.superres.variants.items()
    }
    ocr = {
        name: OCR.options(name=f"ocr-{name}").bind(variant=name, **variant.model_dump())
        for name, variant in config.ocr.variants.items()
    }
    return Ingress.bind(config=config.model_dump(mode="json"), superres=superres, ocr=ocr)
