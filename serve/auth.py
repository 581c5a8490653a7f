"""Authentication and scopes of the HTTP routes: API keys and JWT bearer tokens.

Off unless the app config sets ``auth.enabled``. Then every route but the health and metrics
routes (:data:`PUBLIC_PATHS`, ``/v2/health/*``) needs a credential, sent as
``Authorization: Bearer <key or JWT>`` (RFC 6750 section 2.1) or ``X-API-Key: <key>``:

- **API keys**: only their SHA-256 is kept (``auth.api_keys[].hash``, or the key read from the
  environment variable ``key_env`` names, or ``$PIXELFLEET_API_KEYS``:
  ``key[:scope+scope],...``); a presented key is hashed and compared with every stored hash in
  constant time (:func:`hmac.compare_digest`). A key is never logged, echoed or stored.
- **JWT** (RFC 7519, verified by PyJWT): HS256 with a shared secret from the environment
  variable ``auth.jwt.secret_env``; RS256/ES256 with ``public_key_file`` (PEM) or ``jwks_file``
  (a JSON Web Key Set read once from a local file, keys picked by ``kid``; nothing is fetched).
  ``exp`` and ``sub`` are required; ``aud`` and ``iss`` are checked when configured. Scopes come
  from the ``scope`` claim (space-separated, RFC 8693 section 4.2) or a ``scopes`` list.

Scopes (:func:`required_scopes`): ``infer`` for the inference routes (``POST /v1/<family>...``,
``POST /v2/models/.../infer``), ``admin`` for the traffic and variant changes (``PUT
/v1/traffic/*``, ``/v1/variants/*``), ``jobs`` for ``/v1/jobs`` (reserved); ``GET /v1/traffic``
takes ``infer`` or ``admin``; every other route (metadata, docs, unknown paths) any valid
credential. The caller's identity (the key's name, the token's ``sub``) becomes the sticky key
of the A/B split in place of ``X-Client-Id``.

Failures raise :class:`~pixelfleet.models.errors.Unauthorized` (401: no or invalid credential)
and :class:`~pixelfleet.models.errors.Forbidden` (403: a missing scope), which carry the
``WWW-Authenticate: Bearer realm="pixelfleet"`` challenge (RFC 6750 section 3) and are rendered by
``serve/errors.py``. Messages never hold the credential, a hash, or which keys exist.

Only the HTTP layer is checked: handle calls from other Ray services inside the cluster are
keyless. Sources: RFC 6750 (bearer tokens), RFC 7519 (JWT), RFC 7517 (JWK), PyJWT's docs.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from pixelfleet.models.errors import Forbidden, PixelfleetError, Unauthorized
from pixelfleet.serve.config import AuthConfig
from pixelfleet.serve.errors import error_response, route_path

API_KEYS_ENV = "PIXELFLEET_API_KEYS"
API_KEY_HEADER = "X-API-Key"
SCOPES = frozenset({"infer", "jobs", "admin"})
DEFAULT_KEY_SCOPES = frozenset({"infer"})
MIN_KEY_LENGTH = 16  # plain keys: e.g. secrets.token_urlsafe(32) has 43 characters
MIN_HS256_SECRET_BYTES = 32  # RFC 7518 section 3.2: a key at least as long as the hash output
PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
PUBLIC_PREFIXES = ("/v2/health/",)
ANY_CREDENTIAL: frozenset[str] = frozenset()  # a route that needs a valid credential of any scope


@dataclass(frozen=True)
class Principal:
    """Who called: ``name`` (an API key's name or a token's ``sub``), its scopes, and how."""

    name: str
    scopes: frozenset[str]
    kind: str  # "api_key" or "jwt"


@dataclass(frozen=True)
class StoredKey:
    """An API key as kept in memory: its name, the SHA-256 digest, its scopes."""

    name: str
    digest: bytes
    scopes: frozenset[str]


# ---- API keys ----


def hash_key(key: str) -> str:
    """Hex SHA-256 of an API key (what ``auth.api_keys[].hash`` holds). A key is high-entropy
    (random), so a fast unsalted hash suffices; a password would need a slow one."""
    return hashlib.sha256(key.encode()).hexdigest()


def _scopes(given: Iterable[str], where: str) -> frozenset[str]:
    scopes = frozenset(given)
    unknown = scopes - SCOPES
    if unknown:
        raise ValueError(f"{where}: unknown scope(s) {', '.join(sorted(unknown))}; scopes are {', '.join(sorted(SCOPES))}")
    return scopes


def _plain_key(key: str, where: str) -> str:
    key = key.strip()
    if len(key) < MIN_KEY_LENGTH:
        raise ValueError(f"{where}: an API key must have at least {MIN_KEY_LENGTH} characters")
    return key


def parse_env_keys(value: str) -> list[StoredKey]:
    """The keys of ``$PIXELFLEET_API_KEYS``: comma-separated ``key`` or ``key:scope+scope``
    (default scope ``infer``). Each is named ``env-<first 8 hex digits of its hash>``.

    Raises:
        ValueError: a key shorter than :data:`MIN_KEY_LENGTH`, an unknown scope (the message
            names the entry's position, never the key).
    """
    keys = []
    for position, entry in enumerate((e.strip() for e in value.split(",")), start=1):
        if not entry:
            continue
        key, _, scopes = entry.partition(":")
        where = f"{API_KEYS_ENV} entry {position}"
        key = _plain_key(key, where)
        digest = hashlib.sha256(key.encode()).digest()
        scope_set = _scopes(scopes.split("+"), where) if scopes else DEFAULT_KEY_SCOPES
        keys.append(StoredKey(f"env-{digest.hex()[:8]}", digest, scope_set))
    return keys


def configured_keys(config: AuthConfig, env: Mapping[str, str]) -> list[StoredKey]:
    """The keys of ``config.api_keys`` (hashes, or plain keys read from ``env[key_env]``) and of
    ``env[PIXELFLEET_API_KEYS]``.

    Raises:
        ValueError: a ``key_env`` variable that is unset, or a key or scope as
            :func:`parse_env_keys` refuses it.
    """
    keys = []
    for entry in config.api_keys:
        where = f"auth.api_keys {entry.name!r}"
        if entry.hash is not None:
            digest = bytes.fromhex(entry.hash)
        else:
            if not env.get(entry.key_env or ""):
                raise ValueError(f"{where}: environment variable {entry.key_env} is not set")
            digest = hashlib.sha256(_plain_key(env[entry.key_env], where).encode()).digest()
        keys.append(StoredKey(entry.name, digest, _scopes(entry.scopes, where)))
    return keys + parse_env_keys(env.get(API_KEYS_ENV, ""))


def match_key(presented: str, keys: Iterable[StoredKey]) -> StoredKey | None:
    """The stored key whose hash equals the presented key's, or None. Every stored digest is
    compared, each in constant time (:func:`hmac.compare_digest`), so the time taken says
    nothing of which key or how much of it matched."""
    digest = hashlib.sha256(presented.encode()).digest()
    found = None
    for key in keys:
        if hmac.compare_digest(digest, key.digest) and found is None:
            found = key
    return found


# ---- JWT ----


def _public_key_algorithm(key: Any) -> str:
    if isinstance(key, rsa.RSAPublicKey):
        return "RS256"
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
        return "ES256"
    raise ValueError("auth.jwt.public_key_file: an RSA or EC P-256 public key is needed")


def token_scopes(claims: Mapping[str, Any]) -> frozenset[str]:
    """Scopes of a token: ``scope`` (a space-separated string, RFC 8693 section 4.2) or
    ``scopes`` (a list, or a space-separated string). Unknown scopes are ignored."""
    value = claims.get("scope", claims.get("scopes", ""))
    items = value.split() if isinstance(value, str) else [s for s in value if isinstance(s, str)] if isinstance(value, list) else []
    return frozenset(items) & SCOPES


class JwtVerifier:
    """Verifies JWTs with the keys of an ``auth.jwt`` block. Each key is tied to one algorithm
    (HS256 for the secret; the public key's or JWK's own), so a token can never pick another
    (no algorithm confusion, RFC 8725 section 2.1)."""

    def __init__(self, config: Any, env: Mapping[str, str]) -> None:
        """Load the secret and key files now.

        Raises:
            ValueError: an unset or short secret, an unreadable or unsupported key file, a JWKS
                with no usable key.
        """
        self.config = config
        self.keys: list[tuple[str, str | None, Any]] = []  # (algorithm, kid, key)
        if config.secret_env:
            secret = env.get(config.secret_env, "")
            if len(secret.encode()) < MIN_HS256_SECRET_BYTES:
                raise ValueError(f"auth.jwt: environment variable {config.secret_env} must hold a secret of at least {MIN_HS256_SECRET_BYTES} bytes")
            self.keys.append(("HS256", None, secret))
        if config.public_key_file:
            try:
                key = load_pem_public_key(Path(config.public_key_file).expanduser().read_bytes())
            except (OSError, ValueError) as err:
                raise ValueError(f"auth.jwt.public_key_file is not a readable PEM public key ({type(err).__name__})") from None
            self.keys.append((_public_key_algorithm(key), None, key))
        if config.jwks_file:
            try:
                keyset = jwt.PyJWKSet.from_json(Path(config.jwks_file).expanduser().read_text())
            except (OSError, ValueError, jwt.PyJWKSetError, jwt.InvalidKeyError) as err:
                raise ValueError(f"auth.jwt.jwks_file is not a readable JSON Web Key Set ({type(err).__name__})") from None
            self.keys += [(k.algorithm_name, k.key_id, k) for k in keyset.keys if k.algorithm_name in ("RS256", "ES256")]
        self.keys = [k for k in self.keys if k[0] in config.algorithms]
        if not self.keys:
            raise ValueError(f"auth.jwt: no key for the accepted algorithms {', '.join(config.algorithms)}")

    def algorithms(self) -> list[str]:
        """The algorithms this verifier has keys for."""
        return sorted({algorithm for algorithm, _, _ in self.keys})

    def verify(self, token: str) -> Principal:
        """The principal of a valid token.

        Checks: the header's ``alg`` is one this verifier holds a key for (and its ``kid``, if
        both name one), the signature, ``exp`` (required), ``nbf``/``iat`` if present, ``sub``
        (required), and ``aud``/``iss`` where configured, with ``leeway_s`` of clock skew.

        Raises:
            Unauthorized: (``invalid_token``) any check failing; the message names the check.
        """
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise Unauthorized("invalid token: not a JWT", invalid_token=True) from None
        algorithm, kid = header.get("alg"), header.get("kid")
        candidates = [key for alg, key_id, key in self.keys if alg == algorithm and (kid is None or key_id is None or key_id == kid)]
        if not candidates:
            raise Unauthorized("invalid token: no key for its algorithm or key id", invalid_token=True)
        required = ["exp", "sub"] + (["aud"] if self.config.audience else []) + (["iss"] if self.config.issuer else [])
        error: Exception | None = None
        claims = None
        for key in candidates:
            try:
                claims = jwt.decode(
                    token, key, algorithms=[algorithm], audience=self.config.audience, issuer=self.config.issuer,
                    leeway=self.config.leeway_s,
                    # a token's aud is checked only where an audience is configured (PyJWT refuses any aud otherwise)
                    options={"require": required, "enforce_minimum_key_length": True, "verify_aud": bool(self.config.audience)},
                )  # fmt: skip
                break
            except jwt.InvalidSignatureError as err:  # another key of the same algorithm may fit
                error = err
            except jwt.PyJWTError as err:
                error = err
                break
        if claims is None:
            raise Unauthorized(f"invalid token: {_reason(error)}", invalid_token=True)
        subject = claims.get("sub")
        if not isinstance(subject, str) or not subject:
            raise Unauthorized("invalid token: sub must be a non-empty string", invalid_token=True)
        return Principal(subject, token_scopes(claims), "jwt")


def _reason(error: Exception | None) -> str:
    """A fixed description of a PyJWT error (never the token's content)."""
    if isinstance(error, jwt.ExpiredSignatureError):
        return "it has expired"
    if isinstance(error, jwt.ImmatureSignatureError):
        return "it is not valid yet"
    if isinstance(error, jwt.InvalidAudienceError):
        return "its audience is not accepted"
    if isinstance(error, jwt.InvalidIssuerError):
        return "its issuer is not accepted"
    if isinstance(error, jwt.MissingRequiredClaimError):
        return f"it lacks the {error.claim} claim"
    return "its signature does not verify"


# ---- requests ----


class Authenticator:
    """The credentials an ingress replica accepts, and the check of one request."""

    def __init__(self, keys: list[StoredKey], verifier: JwtVerifier | None) -> None:
        self.keys, self.verifier = keys, verifier

    @classmethod
    def from_config(cls, config: AuthConfig, env: Mapping[str, str] | None = None) -> Authenticator | None:
        """The authenticator of ``config`` with secrets from ``env`` (default: this process's
        environment), or None when auth is off.

        Raises:
            ValueError: auth is on but no key or JWT key is configured, or as
                :func:`configured_keys` and :class:`JwtVerifier` raise.
        """
        if not config.enabled:
            return None
        env = os.environ if env is None else env
        keys = configured_keys(config, env)
        verifier = JwtVerifier(config.jwt, env) if config.jwt else None
        if not keys and verifier is None:
            raise ValueError(f"auth is enabled but no credential is configured: set auth.api_keys, auth.jwt or {API_KEYS_ENV}")
        return cls(keys, verifier)

    def describe(self) -> str:
        """What is accepted, for the start banner (counts and algorithms, never keys)."""
        parts = [f"{len(self.keys)} API key{'s' if len(self.keys) != 1 else ''}"] if self.keys else []
        if self.verifier is not None:
            parts.append(f"JWT {'/'.join(self.verifier.algorithms())}")
        return ", ".join(parts)

    def authenticate(self, headers: Mapping[str, str]) -> Principal:
        """The caller of a request with these headers.

        ``Authorization: Bearer <credential>`` (a JWT when it has the JWT form and JWT is on, else
        an API key) or ``X-API-Key: <key>``.

        Raises:
            Unauthorized: no credential, another scheme than Bearer, an unknown key, an invalid
                token, the Authorization or X-API-Key header repeated.
        """
        for name in ("authorization", API_KEY_HEADER.lower()):  # a singleton field (RFC 9110 5.3): never guess which one counts
            if len(getattr(headers, "getlist", lambda _: [])(name)) > 1:
                raise Unauthorized(f"more than one {name.title()} header")
        authorization = headers.get("authorization")
        if authorization:
            scheme, _, credential = authorization.strip().partition(" ")
            credential = credential.strip()
            if scheme.lower() != "bearer" or not credential:
                raise Unauthorized("use Authorization: Bearer <API key or token>")
            if self.verifier is not None and credential.count(".") == 2:
                return self.verifier.verify(credential)
        else:
            credential = (headers.get(API_KEY_HEADER.lower()) or "").strip()
            if not credential:
                raise Unauthorized(f"credentials required: Authorization: Bearer <API key or token>, or {API_KEY_HEADER}")
        key = match_key(credential, self.keys)
        if key is None:
            raise Unauthorized("invalid credentials", invalid_token=True)
        return Principal(key.name, key.scopes, "api_key")


def required_scopes(method: str, path: str) -> frozenset[str] | None:
    """The scopes that open a route (any one of them), :data:`ANY_CREDENTIAL` for a route that any
    valid credential opens, or None for a public route. ``path`` is relative to the app's
    route prefix.

    Public: ``/healthz``, ``/readyz``, ``/metrics``, ``/v2/health/*``. ``admin``: ``PUT
    /v1/traffic/*``, ``/v1/variants/*``. ``infer`` or ``admin``: ``GET /v1/traffic[/*]`` (read
    only, and what an inference caller may want to see). ``jobs``: ``/v1/jobs*``. ``infer``: any
    other ``POST /v1/*`` and ``POST /v2/models/*/infer``.
    """
    method = method.upper()
    if path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES):
        return None
    if path.startswith("/v1/variants"):
        return frozenset({"admin"})
    if path == "/v1/traffic" or path.startswith("/v1/traffic/"):
        return frozenset({"infer", "admin"}) if method in ("GET", "HEAD") else frozenset({"admin"})
    if path == "/v1/jobs" or path.startswith("/v1/jobs/"):
        return frozenset({"jobs"})
    if method == "POST" and (path.startswith("/v1/") or (path.startswith("/v2/models/") and path.endswith("/infer"))):
        return frozenset({"infer"})
    return ANY_CREDENTIAL


def authorize(principal: Principal, scopes: frozenset[str]) -> None:
    """Pass if ``principal`` holds one of ``scopes`` (or ``scopes`` is empty).

    Raises:
        Forbidden: (``insufficient_scope``) it holds none of them.
    """
    if scopes and not principal.scopes & scopes:
        needed = " or ".join(sorted(scopes))
        raise Forbidden(f"this route needs scope {needed}", scope=" ".join(sorted(scopes)))


def check_request(auth: Authenticator, method: str, path: str, headers: Mapping[str, str]) -> Principal | None:
    """Authenticate and authorize one request: the principal, or None on a public route.

    Raises:
        Unauthorized: as :meth:`Authenticator.authenticate`.
        Forbidden: as :func:`authorize`.
    """
    scopes = required_scopes(method, path)
    if scopes is None:
        return None
    principal = auth.authenticate(headers)
    authorize(principal, scopes)
    return principal


def install_auth(api: Any, auth: Authenticator) -> None:
    """Check every request to the FastAPI app ``api`` with :func:`check_request` (a middleware,
    so unknown routes and the docs are covered too). The principal goes to
    ``request.state.principal``; a failure is answered by ``serve/errors.py``'s mapping."""
    @api.middleware("http")
    async def authenticate(request, call_next):
        try:
            request.state.principal = check_request(auth, request.method, route_path(request), request.headers)
        except PixelfleetError as err:
            return error_response(err, request)
        return await call_next(request)


# ---- pixelfleet up ----


def is_loopback(host: str) -> bool:
    """Whether ``host`` only listens on this machine (``localhost``, 127.0.0.0/8, ``::1``)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def startup_check(host: str, apps: Iterable[tuple[str, dict, Mapping[str, str]]], insecure: bool) -> tuple[str | None, str]:
    """The safe default of ``pixelfleet up``: ``(refusal or None, the banner's auth line)``.

    ``apps``: ``(name, args, env)`` of each pixelfleet application, ``env`` being what its
    replicas will see. Without auth, a loopback ``host`` is allowed; any other host is refused
    unless ``insecure``. With auth on, its credentials must load (checked here, before Ray starts).
    """
    states, off = [], []
    for name, args, env in apps:
        try:
            auth = Authenticator.from_config(AuthConfig.model_validate((args or {}).get("auth") or {}), env)
        except ValueError as err:  # pydantic's ValidationError is a ValueError
            return f"application {name}: invalid auth config: {err}", ""
        if auth is None:
            off.append(name)
        else:
            states.append(f"{name}: {auth.describe()}")
    on = f"auth: on ({'; '.join(states)})" if states else ""
    if not off:
        return None, on
    if is_loopback(host):
        return None, "; ".join(filter(None, [on, f"auth: off{' for ' + ', '.join(off) if states else ''} (loopback only)"]))
    if insecure:
        return None, f"auth: OFF on {host} (--insecure): anyone who reaches this port can call every route of {', '.join(off)}"
    refusal = (
        f"refusing to serve {', '.join(off)} on {host} without authentication: set auth.enabled with auth.api_keys or "
        f"auth.jwt in the config (or keys in {API_KEYS_ENV}; README, Security), use a loopback host, or pass --insecure"
    )
    return refusal, ""


def app_env(runtime_env: Mapping[str, Any] | None, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment a local app's replicas see: this process's (``base``), plus the app's
    ``runtime_env.env_vars``."""
    env = dict(os.environ if base is None else base)
    env.update({k: str(v) for k, v in ((runtime_env or {}).get("env_vars") or {}).items()})
    return env


def new_api_key() -> tuple[str, str]:
    """A fresh random API key and its hash: ``(key, sha256 hex)`` (256 bits from :mod:`secrets`)."""
    import secrets

    key = secrets.token_urlsafe(32)
    return key, hash_key(key)

