"""The application's configuration: the ``args`` of the pixelfleet app in a Serve config file.

``serve/configs/local.yaml`` and ``gpu.yaml`` are ordinary Ray Serve config files (what
``serve run``, ``serve deploy`` and KubeRay's ``serveConfigV2`` take); their ``args`` validate
against :class:`AppConfig`. Per-deployment resources (``num_cpus``, ``num_gpus``, replicas,
``max_ongoing_requests``) stay in the Serve config's ``deployments`` list, where Ray reads them.

``families`` maps a family's name to its config block; the block's ``kind`` names the plug-in
(``deployments/spec.py``), whose own config model validates the rest: a union discriminated by
``kind`` over every installed family, open to plug-ins given as ``module:SPEC``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, SerializeAsAny, field_validator

from pixelfleet.deployments.spec import FamilyConfig, FamilySpec, Limits, Strict, load_spec


class StateConfig(Strict):
    """Where the app keeps what changes while it runs (traffic weights, variants added)."""

    path: str = Field(
        "~/.pixelfleet/state.json",
        description="JSON file (local path or fsspec URL) written on every traffic or variant change and read at start",
    )


class TracingConfig(Strict):
    """OpenTelemetry traces: spans are made always; exported only where an OTLP endpoint is set."""

    otlp_endpoint: str | None = Field(None, description="OTLP/HTTP traces endpoint, e.g. http://collector:4318/v1/traces")
    service_name: str = "pixelfleet"


class AppConfig(Strict):
    """``args`` of the pixelfleet application."""

    limits: Limits = Limits()
    families: dict[str, SerializeAsAny[FamilyConfig]] = Field(description="family name -> its config block (kind, default, variants, traffic)")
    state: StateConfig = StateConfig()
    tracing: TracingConfig = TracingConfig()

    @field_validator("families", mode="before")
    @classmethod
    def _validate_families(cls, families: Any) -> dict[str, FamilyConfig]:
        if not isinstance(families, dict) or not families:
            raise ValueError("families must map at least one family name to its config")
        validated = {}
        for name, block in families.items():
            if isinstance(block, FamilyConfig):
                validated[name] = block
                continue
            if not isinstance(block, dict):
                raise ValueError(f"families.{name} must be a mapping")
            spec = load_spec(block.get("kind", name))
            validated[name] = spec.config.model_validate({"kind": block.get("kind", name), **block})
        return validated

    def spec(self, family: str) -> FamilySpec:
        """The plug-in of ``family``."""
        return load_spec(self.families[family].kind)

    def specs(self) -> dict[str, FamilySpec]:
        """Every family's plug-in, by family name."""
        return {name: self.spec(name) for name in self.families}


def state_path(config: AppConfig) -> str:
    """The state file's URL or path, ``~`` expanded for local paths."""
    path = config.state.path
    return str(Path(path).expanduser()) if "://" not in path else path
