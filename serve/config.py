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
from typing import Any, Literal

from pydantic import Field, SerializeAsAny, field_validator, model_validator

from pixelfleet.deployments.spec import FamilyConfig, FamilySpec, Limits, Strict, load_spec
from pixelfleet.jobs.config import JobsConfig


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


Scope = Literal["infer", "jobs", "admin"]


class ApiKeyConfig(Strict):
    """One API key: its SHA-256 (``hash``, hex; what a file should hold), or ``key_env``, the
    environment variable holding the plain key (a plain key never sits in a file)."""

    name: str = Field(min_length=1, max_length=128, description="the caller's identity: logs and the sticky A/B key")
    hash: str | None = Field(None, pattern="^[0-9a-fA-F]{64}$", description="hex SHA-256 of the key")
    key_env: str | None = Field(None, min_length=1, description="environment variable that holds the plain key")
    scopes: list[Scope] = Field(default_factory=lambda: ["infer"], description="infer, jobs, admin")

    @model_validator(mode="after")
    def _one_source(self) -> ApiKeyConfig:
        if (self.hash is None) == (self.key_env is None):
            raise ValueError(f"api key {self.name!r}: give exactly one of hash and key_env")
        return self


class JwtConfig(Strict):
    """JWT bearer tokens (RFC 7519), verified locally: HS256 with a shared secret from an
    environment variable, RS256/ES256 with a PEM public key file or a JWKS file (no network)."""

    secret_env: str | None = Field(None, description="environment variable holding the HS256 secret (at least 32 bytes)")
    public_key_file: str | None = Field(None, description="PEM public key: RSA (RS256) or EC P-256 (ES256)")
    jwks_file: str | None = Field(None, description="JSON Web Key Set file (RFC 7517); keys picked by kid")
    algorithms: list[Literal["HS256", "RS256", "ES256"]] = Field(["HS256", "RS256", "ES256"], description="accepted algorithms")
    audience: str | None = Field(None, description="required aud claim, if set")
    issuer: str | None = Field(None, description="required iss claim, if set")
    leeway_s: float = Field(30.0, ge=0, le=300, description="clock skew allowed on exp/nbf/iat")

    @model_validator(mode="after")
    def _some_key(self) -> JwtConfig:
        if not (self.secret_env or self.public_key_file or self.jwks_file):
            raise ValueError("jwt needs secret_env, public_key_file or jwks_file")
        return self


class AuthConfig(Strict):
    """Authentication of the HTTP routes (``serve/auth.py``); off by default. Keys come from
    ``api_keys`` and from ``$PIXELFLEET_API_KEYS``; handle calls are never checked."""

    enabled: bool = False
    api_keys: list[ApiKeyConfig] = Field(default_factory=list)
    jwt: JwtConfig | None = None


class RateGroup(Strict):
    """One route group's token bucket per caller: ``burst`` requests at once, refilled at
    ``rate_per_s`` requests per second (``serve/ratelimit.py``)."""

    rate_per_s: float = Field(gt=0, le=1_000_000, description="tokens (requests) added per second")
    burst: int = Field(ge=1, le=1_000_000, description="the bucket's size: requests admitted at once after idling")


class RateLimitConfig(Strict):
    """Rate limits per caller and route group (``infer``, ``admin``, ``jobs``), kept by one
    ``RateLimiter`` deployment shared by every ingress replica; off by default. A group not named
    in ``groups`` is not limited."""

    enabled: bool = False
    groups: dict[Literal["infer", "admin", "jobs"], RateGroup] = Field(default_factory=dict, description="route group -> its limit")
    max_callers: int = Field(100_000, ge=1, le=10_000_000, description="buckets kept in memory; the least recently used are evicted")
    trust_forwarded_for: bool = Field(False, description="key anonymous callers by the first X-Forwarded-For hop (only behind a proxy that sets it)")
    timeout_s: float = Field(1.0, gt=0, le=30, description="seconds to wait for the limiter before admitting without a limit (fail open)")

    @model_validator(mode="after")
    def _some_group(self) -> RateLimitConfig:
        if self.enabled and not self.groups:
            raise ValueError("rate_limits is enabled but limits no route group: set groups.infer, groups.admin or groups.jobs")
        return self


class AdmissionConfig(Strict):
    """How many HTTP requests one ingress replica takes at once (``serve/admission.py``); the next
    ones answer 503 ``overloaded`` (JSON) with ``Retry-After``. The Serve config's ``Ingress``
    ``max_ongoing_requests`` must be at least twice ``max_in_flight`` (the default 32 fits the
    ``Ingress`` default of 64), so Ray's proxy never refuses first (in plain text)."""

    max_in_flight: int = Field(32, ge=1, le=100_000, description="requests in flight per ingress replica; health and metrics routes not counted")
    retry_after_s: int = Field(1, ge=0, le=3600, description="seconds in the Retry-After header of a refusal")
    max_streams: int = Field(
        8, ge=1, le=100_000,
        description="of max_in_flight, server-sent-event streams (job events, streamed operations) open at once per ingress replica (at most max_in_flight)",
    )  # fmt: skip


class AppConfig(Strict):
    """``args`` of the pixelfleet application."""

    limits: Limits = Limits()
    families: dict[str, SerializeAsAny[FamilyConfig]] = Field(description="family name -> its config block (kind, default, variants, traffic)")
    state: StateConfig = StateConfig()
    tracing: TracingConfig = TracingConfig()
    auth: AuthConfig = AuthConfig()
    rate_limits: RateLimitConfig | None = Field(None, description="per-caller rate limits (serve/ratelimit.py); none by default")
    jobs: JobsConfig = Field(default_factory=JobsConfig, description="durable jobs: /v1/jobs and the job worker, a JobWorker deployment or a loop in the Ingress (jobs/); off by default")
    admission: AdmissionConfig = AdmissionConfig()

    @model_validator(mode="before")
    @classmethod
    def _jobs_beside_state(cls, values: Any) -> Any:
        """``jobs.state_dir`` defaults to the folder of a local ``state.path``."""
        if not isinstance(values, dict):
            return values
        jobs = values.get("jobs")
        jobs = dict(jobs) if isinstance(jobs, dict) else jobs
        if jobs is None or (isinstance(jobs, dict) and jobs.get("state_dir") is None):
            state = values.get("state") or {}
            path = state.get("path") if isinstance(state, dict) else getattr(state, "path", None)
            path = path or StateConfig.model_fields["path"].default
            if "://" not in path or path.startswith("file://"):
                jobs = {**(jobs or {}), "state_dir": str(Path(path.removeprefix("file://")).expanduser().parent)}
                values = {**values, "jobs": jobs}
        return values

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
