"""The super-resolution family: SRResNet/SRGAN generators, tiled, tiles batched across requests.

``SPEC`` is what the graph reads (``deployments/spec.py``). Modules: ``config.py`` (variant config,
request options), ``deployment.py`` (the Ray Serve deployment), ``upscaler.py`` (the model on
its backend and the tile loop, without Ray), ``tiling.py`` (tile geometry), ``routing.py``
(chains of variants for scales no single variant has).
"""

from __future__ import annotations

from pydantic import BaseModel

from pixelfleet.deployments.spec import FamilySpec, Operation
from pixelfleet.deployments.superres.config import SuperResConfig, SuperResVariant, UpscaleParams
from pixelfleet.deployments.superres.routing import superres_chain
from pixelfleet.models.modelcard import ModelCard

UPSCALE = Operation(
    name="upscale",
    params=UpscaleParams,
    output="image",
    summary="Upscale an image by the scale factor of a super-resolution variant",
)


def plan(operation: Operation, params: BaseModel, chosen: str, explicit: bool, cards: dict[str, dict]) -> list[str]:
    """The variants that serve an upscale: ``chosen`` when it has the scale asked for, else the
    shortest chain of variants whose factors multiply to it (``chosen`` standing for its factor).

    Raises:
        Unprocessable: a scale no chain reaches, or an explicit ``model`` of another scale.
    """
    scales = {name: card["scale"] for name, card in cards.items()}
    return superres_chain(scales, chosen, params.scale, chosen if explicit else None)


def describe(variant: str, config: SuperResVariant) -> dict:
    """A variant's card from its config and its model folder's ``model.json``, without loading
    the weights (torch is not imported): the fields of ``SuperResolution.info()`` that do not
    depend on the loaded model. ``precision`` is the configured one (``auto`` until a replica
    resolves it).

    Raises:
        OSError: the model folder is not readable from this process.
        ValueError: its ``model.json`` is not a :class:`ModelCard`.
    """
    card = ModelCard.model_validate_json((config.weights_path() / "model.json").read_text())
    return {
        "variant": variant, "scale": card.scale, "architecture": card.architecture.model_dump(), "weights": config.weights,
        "metrics": card.metrics.model_dump() if card.metrics else None, "training": card.training.model_dump() if card.training else None,
        "backend": config.backend, "quantize": config.quantize, "device": config.device, "precision": config.precision,
        "ensemble": config.ensemble, "tile_size": config.tile_size, "overlap": config.overlap, "max_batch_size": config.max_batch_size,
        "png_level": config.png_level,
    }  # fmt: skip


SPEC = FamilySpec(
    name="superres",
    title="Super-resolution (SRResNet, SRGAN)",
    config=SuperResConfig,
    deployment="pixelfleet.deployments.superres.deployment:SuperResolution",  # imported where bound: torch stays out of the ingress
    operations=(UPSCALE,),
    agreement="psnr_y_db",
    plan=plan,
    describe=describe,
)
