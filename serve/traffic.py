"""A/B traffic: weights over each family's variants, sticky per caller, shadows, and the state
that changes while the app runs (pure functions and pydantic models, tested without Ray).

Sticky assignment uses weighted rendezvous hashing (Schindelhauer and Schomaker, 2005): every
variant scores ``-weight / ln(h)``, ``h`` a hash of (caller, variant) in (0, 1), and the highest
score wins. A caller reaches the same variant while the weights stand, each variant gets its
weight's share of callers, and a weight change moves only the callers it must (raising a
variant from 0 to 10% moves 10% of callers, all of them to that variant).
"""

from __future__ import annotations

import hashlib
import json
import math
import random

import fsspec
from pydantic import BaseModel, Field

from pixelfleet.deployments.spec import check_traffic


class FamilyTraffic(BaseModel):
    """The A/B weights and shadows of one family."""

    weights: dict[str, float] = Field(description="variant -> weight >= 0; the shares are weight / sum")
    shadow: dict[str, float] = Field(default_factory=dict, description="variant -> fraction in (0, 1] of requests copied")


class AddedVariant(BaseModel):
    """A variant added while the app runs (``pixelfleet variants add``): its own Serve application."""

    config: dict = Field(description="the variant's config block, as the family's config validates it")
    deployment: dict = Field(default_factory=dict, description="Serve deployment options (replicas, ray_actor_options)")
    app: str = Field(description="the Serve application that holds its deployment")


class TrafficState(BaseModel):
    """What the app changes while it runs, in the ingress's ``user_config`` and the state file.

    ``revision`` orders the sources: the config's own weights are revision 0, and each change adds 1.
    """

    revision: int = 0
    families: dict[str, FamilyTraffic] = Field(default_factory=dict)
    added: dict[str, dict[str, AddedVariant]] = Field(default_factory=dict, description="family -> variant -> its record")
    removed: dict[str, list[str]] = Field(default_factory=dict, description="family -> config variants taken out of service")


def _unit_hash(*parts: str) -> float:
    """A uniform number in (0, 1) from the parts (SHA-256; stable across processes and hosts)."""
    digest = hashlib.sha256("\x1f".join(parts).encode()).digest()
    return (int.from_bytes(digest[:8], "big") + 0.5) / 2**64


def pick_variant(weights: dict[str, float], caller: str | None, family: str, rng: random.Random | None = None) -> str:
    """The variant that serves a request: sticky for a ``caller`` (weighted rendezvous hashing),
    else drawn at random by weight.

    Raises:
        ValueError: no variant has a weight above 0.
    """
    live = {name: w for name, w in weights.items() if w > 0}
    if not live:
        raise ValueError("no variant has a traffic weight above 0")
    if caller is None:
        names = sorted(live)
        return (rng or random).choices(names, weights=[live[n] for n in names])[0]
    return max(sorted(live), key=lambda name: -live[name] / math.log(_unit_hash(family, caller, name)))


def shadow_targets(shadow: dict[str, float], primary: str, rng: random.Random | None = None) -> list[str]:
    """The shadow variants a request is copied to: each with its fraction, never the primary."""
    draw = rng or random
    return [name for name, fraction in sorted(shadow.items()) if name != primary and draw.random() < fraction]


def validated(traffic: FamilyTraffic, variants: set[str]) -> FamilyTraffic:
    """``traffic`` if its weights and shadows fit ``variants``; raises ValueError (the reason) if not."""
    check_traffic(traffic.weights, traffic.shadow, variants)
    return traffic


def load_state(path: str) -> TrafficState | None:
    """The state file at ``path`` (local or fsspec URL), or None if there is none yet.

    Raises:
        ValueError: the file exists but is not a valid state.
    """
    try:
        with fsspec.open(path, "r") as file:
            text = file.read()
    except FileNotFoundError:
        return None
    return TrafficState.model_validate_json(text)


def save_state(path: str, state: TrafficState) -> None:
    """Write the state file (parents created; a temporary file renamed into place where local)."""
    fs, _, (target,) = fsspec.get_fs_token_paths(path)
    parent = target.rsplit("/", 1)[0] if "/" in target else ""
    if parent:
        fs.makedirs(parent, exist_ok=True)
    text = json.dumps(state.model_dump(mode="json"), indent=2, sort_keys=True)
    if fs.protocol in ("file", ("file", "local")) or "file" in fs.protocol:
        temporary = f"{target}.tmp"
        with fs.open(temporary, "w") as file:
            file.write(text)
        fs.mv(temporary, target)
    else:
        with fs.open(target, "w") as file:
            file.write(text)


def newest(*states: TrafficState | None) -> TrafficState:
    """The state with the highest revision (an empty one if none is given)."""
    present = [s for s in states if s is not None]
    return max(present, key=lambda s: s.revision) if present else TrafficState()
