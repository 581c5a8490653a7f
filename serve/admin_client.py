"""The admin side of a running app over HTTP (httpx), for ``pixelfleet traffic`` and
``pixelfleet variants``: the traffic and variant routes of ``serve/rest.py``, ``/v1/models``
and ``/metrics``; and the parsing of the commands' ``VARIANT=W`` arguments.
"""

from __future__ import annotations

import math
import os
from typing import Any

import httpx
import yaml

DEFAULT_URL = "http://127.0.0.1:8000"
TIMEOUT_S = 30.0
ADD_TIMEOUT_S = 900.0  # the server waits up to 600 s for a new variant's replica


class AdminError(Exception):
    """An error answer of the app: its HTTP ``status`` and the JSON error's ``message``."""

    def __init__(self, status: int, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.code = status, message, code


def parse_number_assignments(items: list[str], what: str = "weight") -> dict[str, float]:
    """``["a=1", "b=0.5"]`` -> ``{"a": 1.0, "b": 0.5}``.

    Raises:
        ValueError: an item without ``=``, an empty name, a name given twice, or a value that is
            not a finite number.
    """
    out: dict[str, float] = {}
    for item in items:
        name, sep, raw = item.partition("=")
        name = name.strip()
        if not sep or not name:
            raise ValueError(f"expected VARIANT={what.upper()}, got {item!r}")
        if name in out:
            raise ValueError(f"variant {name!r} given twice")
        try:
            value = float(raw)
        except ValueError:
            raise ValueError(f"{what} of {name!r} is not a number: {raw!r}") from None
        if not math.isfinite(value):
            raise ValueError(f"{what} of {name!r} is not finite: {raw!r}")
        out[name] = value
    return out


def parse_settings(items: list[str]) -> dict[str, Any]:
    """``["tile_size=64", "ensemble=true"]`` -> ``{"tile_size": 64, "ensemble": True}``: each
    value is read as YAML, as ``pixelfleet train srgan --set`` reads it.

    Raises:
        ValueError: an item without ``=`` or with an empty key, or a value that is not YAML.
    """
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"expected KEY=VALUE, got {item!r}")
        try:
            out[key.strip()] = yaml.safe_load(raw)
        except yaml.YAMLError as err:
            raise ValueError(f"value of {key.strip()!r} is not valid YAML: {err}") from None
    return out


def variant_request(name: str, weights: str | None, settings: dict[str, Any], num_cpus: float | None, num_gpus: float | None, replicas: int | None) -> dict:
    """The body of ``POST /v1/variants/{family}``: config ``{"weights": weights, **settings}``
    (no ``weights`` when None: a family that loads none, such as OCR engines) and the Serve
    deployment options given."""
    actor = {k: v for k, v in (("num_cpus", num_cpus), ("num_gpus", num_gpus)) if v is not None}
    deployment: dict[str, Any] = {"ray_actor_options": actor} if actor else {}
    if replicas is not None:
        deployment["num_replicas"] = replicas
    config = {**settings, **({"weights": weights} if weights is not None else {})}
    return {"name": name, "config": config, "deployment": deployment}


def _error_of(response: httpx.Response) -> AdminError:
    """The app's JSON error (``{"error": {"code", "message"}}``), or the body's start."""
    try:
        body = response.json()
    except ValueError:
        return AdminError(response.status_code, response.text[:500] or response.reason_phrase)
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        return AdminError(response.status_code, str(error.get("message", error)), error.get("code"))
    return AdminError(response.status_code, str(error if error is not None else body)[:500])


#: The environment variable holding the API key or JWT the CLI sends.
CREDENTIAL_ENV = "PIXELFLEET_API_KEY"


class AdminClient:
    """The app's admin routes at ``url`` (``http://host:port``).

    ``credential`` (default: the ``PIXELFLEET_API_KEY`` environment variable), an API key or a
    JWT with the ``admin`` scope, goes as ``Authorization: Bearer`` where the app has auth on.
    Every method raises :class:`AdminError` for an error answer (4xx or 5xx) and
    ``httpx.HTTPError`` when the app cannot be reached.
    """

    def __init__(
        self, url: str = DEFAULT_URL, timeout_s: float = TIMEOUT_S, transport: httpx.BaseTransport | None = None, credential: str | None = None
    ) -> None:
        self.url = url.rstrip("/")
        credential = credential if credential is not None else os.environ.get(CREDENTIAL_ENV, "")
        headers = {"Authorization": f"Bearer {credential}"} if credential else {}
        self.http = httpx.Client(base_url=self.url, timeout=timeout_s, transport=transport, headers=headers)

    def __enter__(self) -> AdminClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.http.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        response = self.http.request(method, path, **kwargs)
        if response.is_error:
            raise _error_of(response)
        return response

    def traffic(self) -> dict:
        """``GET /v1/traffic``: ``{"revision", "families": {family: {"weights", "shadow", "default", "variants"}}}``."""
        return self._call("GET", "/v1/traffic").json()

    def set_traffic(self, family: str, weights: dict[str, float] | None, shadow: dict[str, float] | None) -> dict:
        """``PUT /v1/traffic/{family}``; the family's new traffic. Omitted (None) parts stay."""
        body = {k: v for k, v in (("weights", weights), ("shadow", shadow)) if v is not None}
        return self._call("PUT", f"/v1/traffic/{family}", json=body).json()

    def models(self) -> dict:
        """``GET /v1/models``: ``{"families": {family: {"default", "traffic", "variants": {...}}}}``."""
        return self._call("GET", "/v1/models").json()

    def add_variant(self, family: str, body: dict, timeout_s: float = ADD_TIMEOUT_S) -> dict:
        """``POST /v1/variants/{family}`` with :func:`variant_request`'s body; waits for the replica."""
        return self._call("POST", f"/v1/variants/{family}", json=body, timeout=timeout_s).json()

    def remove_variant(self, family: str, variant: str) -> dict:
        """``DELETE /v1/variants/{family}/{variant}``."""
        return self._call("DELETE", f"/v1/variants/{family}/{variant}").json()

    def metrics_text(self, metrics_url: str | None = None) -> str:
        """Prometheus exposition text from ``metrics_url`` (default: the app's ``/metrics``)."""
        return self._call("GET", metrics_url or "/metrics").text


def traffic_table(family: str, traffic: dict):
    """A rich table of one family's traffic (``GET /v1/traffic``'s entry): variant, weight,
    share of requests (weight / sum of weights, %), shadow fraction, and the config's default."""
    from rich.table import Table

    weights: dict[str, float] = traffic.get("weights", {})
    shadow: dict[str, float] = traffic.get("shadow", {})
    total = sum(w for w in weights.values() if w > 0)
    table = Table(title=f"{family} (default {traffic.get('default')})")
    for column in ("variant", "weight", "share %", "shadow", "default"):
        table.add_column(column, justify="left" if column in ("variant", "default") else "right")
    for variant in sorted(set(traffic.get("variants", [])) | set(weights) | set(shadow)):
        weight = weights.get(variant, 0.0)
        share = 100 * max(weight, 0.0) / total if total > 0 else 0.0
        table.add_row(
            variant, f"{weight:g}", f"{share:.1f}", f"{shadow[variant]:g}" if variant in shadow else "-",
            "yes" if variant == traffic.get("default") else "",
        )  # fmt: skip
    return table


def variants_table(family: str, listing: dict):
    """A rich table of one family's variants (``GET /v1/models``'s entry): weight, shadow,
    default, and the scalar fields of each variant's card (scale, weights, backend, ...)."""
    from rich.table import Table

    traffic = listing.get("traffic", {})
    weights, shadow = traffic.get("weights", {}), traffic.get("shadow", {})
    table = Table(title=f"{family}: {listing.get('title', '')}")
    for column in ("variant", "weight", "shadow", "default", "card"):
        table.add_column(column, justify="right" if column in ("weight", "shadow") else "left")
    for variant, card in sorted(listing.get("variants", {}).items()):
        details = " ".join(
            f"{k}={v}" for k, v in (card or {}).items() if k != "variant" and v is not None and not isinstance(v, (dict, list))
        )
        table.add_row(
            variant, f"{weights.get(variant, 0.0):g}", f"{shadow[variant]:g}" if variant in shadow else "-",
            "yes" if variant == listing.get("default") else "", details,
        )  # fmt: skip
    return table
