"""The super-resolution family: SRResNet/SRGAN generators, tiled, tiles batched across requests.

``SPEC`` is what the graph reads (``deployments/spec.py``). Modules: ``config.py`` (variant config,
request options), ``deployment.py`` (the Ray Serve deployment), ``upscaler.py`` (the model on
its backend and the tile loop, without Ray), ``tiling.py`` (tile geometry), ``routing.py``
(chains of variants for scales no single variant has).
"""

from __future__ import annotations

from pydantic import BaseModel

from pixelfleet.deployments.spec import FamilySpec, Operation
from pixelfleet.deployments.superres.config import SuperResConfig, UpscaleParams
from pixelfleet.deployments.superres.deployment import SuperResolution
from pixelfleet.deployments.superres.routing import superres_chain

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


SPEC = FamilySpec(
    name="superres",
    title="Super-resolution (SRResNet, SRGAN)",
    config=SuperResConfig,
    deployment=SuperResolution,
    operations=(UPSCALE,),
    agreement="psnr_y_db",
    plan=plan,
)
