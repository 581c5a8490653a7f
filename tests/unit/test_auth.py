"""serve/auth.py without Ray: API keys (env parsing, hashing, constant-time matching), JWTs
(HS256, RS256, ES256, a JWKS file; expired, wrong audience, bad signature), scopes per route, the
middleware's 401/403 answers in both error forms, and `pixelfleet up`'s safe default."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import os
import subprocess
import sys
import time

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from fastapi import FastAPI
from pixelfleet.models.errors import Forbidden, Unauthorized
from pixelfleet.serve.auth import (
    API_KEYS_ENV,
    Authenticator,
    StoredKey,
    check_request,
    configured_keys,
    hash_key,
    install_auth,
    is_loopback,
    match_key,
    new_api_key,
    parse_env_keys,
    required_scopes,
    startup_check,
    token_scopes,
)
from pixelfleet.serve.config import AuthConfig
from pixelfleet.serve.errors import install_error_handlers

from tests.conftest import REPO

INFER_KEY = "infer-key-0123456789abcdef"
ADMIN_KEY = "admin-key-0123456789abcdef"
SECRET = "s" * 40


def token(key, algorithm: str = "HS256", lifetime_s: float = 300, headers: dict | None = None, **claims) -> str:
    body = {"sub": "alice", "scope": "infer", "exp": int(time.time() + lifetime_s), **claims}
    return jwt.encode(body, key, algorithm=algorithm, headers=headers)


def pem(public_key) -> bytes:
    return public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


@pytest.fixture(scope="module")
def rsa_key():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ec_key():
    return ec.generate_private_key(ec.SECP256R1())


# ---- API keys ----


def test_hash_key_is_hex_sha256_and_new_keys_are_random():
    assert hash_key("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"  # FIPS 180-2 example
    (key1, hash1), (key2, _) = new_api_key(), new_api_key()
    assert key1 != key2 and len(key1) >= 40 and hash1 == hash_key(key1)


def test_env_keys_with_and_without_scopes():
    keys = parse_env_keys(f" {INFER_KEY} , {ADMIN_KEY}:admin+infer ,")
    assert [k.scopes for k in keys] == [frozenset({"infer"}), frozenset({"admin", "infer"})]
    assert keys[0].digest.hex() == hash_key(INFER_KEY)
    assert keys[0].name == f"env-{hash_key(INFER_KEY)[:8]}"  # a name, never the key
    assert parse_env_keys("") == []


@pytest.mark.parametrize("value", ["short:infer", f"{INFER_KEY}:root", f"ok-key-0123456789abc,{INFER_KEY}:infer+nope"])
def test_env_keys_refused_without_echoing_the_key(value):
    with pytest.raises(ValueError) as caught:
        parse_env_keys(value)
    assert INFER_KEY not in str(caught.value) and "short" not in str(caught.value)
    assert API_KEYS_ENV in str(caught.value)


def test_configured_keys_from_hashes_key_env_and_the_environment():
    config = AuthConfig.model_validate(
        {"enabled": True, "api_keys": [
            {"name": "ci", "hash": hash_key(INFER_KEY)},
            {"name": "ops", "key_env": "OPS_KEY", "scopes": ["admin"]},
        ]}
    )  # fmt: skip
    keys = configured_keys(config, {"OPS_KEY": ADMIN_KEY, API_KEYS_ENV: "env-key-0123456789abcdef:jobs"})
    assert [(k.name, k.scopes) for k in keys] == [
        ("ci", frozenset({"infer"})), ("ops", frozenset({"admin"})), (f"env-{hash_key('env-key-0123456789abcdef')[:8]}", frozenset({"jobs"})),
    ]  # fmt: skip
    with pytest.raises(ValueError, match="OPS_KEY is not set"):
        configured_keys(config, {})


@pytest.mark.parametrize("entry", [{"name": "x"}, {"name": "x", "hash": "0" * 64, "key_env": "K"}, {"name": "x", "hash": "not-hex"}, {"name": "x", "key": INFER_KEY}])
def test_a_key_entry_has_exactly_one_source_and_never_a_plain_key(entry):
    with pytest.raises(ValueError):
        AuthConfig.model_validate({"enabled": True, "api_keys": [entry]})


def test_match_key_compares_every_stored_digest():
    keys = [StoredKey("a", bytes.fromhex(hash_key(INFER_KEY)), frozenset({"infer"})), StoredKey("b", bytes.fromhex(hash_key(ADMIN_KEY)), frozenset())]
    assert match_key(INFER_KEY, keys).name == "a"
    assert match_key(ADMIN_KEY, keys).name == "b"
    assert match_key(INFER_KEY[:-1], keys) is None
    assert match_key(hash_key(INFER_KEY), keys) is None  # the hash itself is no key


# ---- JWT ----


def authenticator(**jwt_config) -> Authenticator:
    config = AuthConfig.model_validate({"enabled": True, "jwt": jwt_config})
    return Authenticator.from_config(config, {"JWT_SECRET": SECRET})


def bearer(credential: str) -> dict[str, str]:
    return {"authorization": f"Bearer {credential}"}


def test_jwt_hs256_with_the_secret_from_the_environment():
    auth = authenticator(secret_env="JWT_SECRET")
    principal = auth.authenticate(bearer(token(SECRET, scope="infer admin")))
    assert (principal.name, principal.scopes, principal.kind) == ("alice", frozenset({"infer", "admin"}), "jwt")
    with pytest.raises(Unauthorized, match="signature") as caught:
        auth.authenticate(bearer(token("x" * 40)))
    assert caught.value.headers["WWW-Authenticate"] == 'Bearer realm="pixelfleet", error="invalid_token"'


def test_jwt_hs256_secret_must_be_set_and_long():
    with pytest.raises(ValueError, match="at least 32 bytes"):
        Authenticator.from_config(AuthConfig.model_validate({"enabled": True, "jwt": {"secret_env": "JWT_SECRET"}}), {"JWT_SECRET": "short"})


def test_jwt_rs256_and_es256_with_public_key_files(tmp_path, rsa_key, ec_key):
    (tmp_path / "rsa.pem").write_bytes(pem(rsa_key.public_key()))
    (tmp_path / "ec.pem").write_bytes(pem(ec_key.public_key()))
    rsa_auth = authenticator(public_key_file=str(tmp_path / "rsa.pem"))
    ec_auth = authenticator(public_key_file=str(tmp_path / "ec.pem"))
    assert rsa_auth.authenticate(bearer(token(rsa_key, "RS256", sub="svc-1"))).name == "svc-1"
    assert ec_auth.authenticate(bearer(token(ec_key, "ES256", sub="svc-2"))).name == "svc-2"
    with pytest.raises(Unauthorized, match="no key for its algorithm"):
        rsa_auth.authenticate(bearer(token(ec_key, "ES256")))
    # algorithm confusion: an HS256 token signed with the public key's PEM as the secret
    # (PyJWT refuses to sign it, so by hand: RFC 7515 section 3.1's compact form)
    def b64(data: bytes) -> bytes:
        return base64.urlsafe_b64encode(data).rstrip(b"=")

    signing_input = b64(b'{"alg":"HS256","typ":"JWT"}') + b"." + b64(json.dumps({"sub": "eve", "exp": int(time.time() + 60)}).encode())
    signature = hmac.new(pem(rsa_key.public_key()), signing_input, hashlib.sha256).digest()
    confused = (signing_input + b"." + b64(signature)).decode()
    with pytest.raises(Unauthorized):
        rsa_auth.authenticate(bearer(confused))


def test_jwt_with_a_jwks_file_picks_the_key_by_kid(tmp_path, rsa_key, ec_key):
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwks = {"keys": [
        {**jwt.algorithms.RSAAlgorithm.to_jwk(rsa_key.public_key(), as_dict=True), "kid": "r1", "alg": "RS256"},
        {**jwt.algorithms.RSAAlgorithm.to_jwk(other.public_key(), as_dict=True), "kid": "r2", "alg": "RS256"},
        {**jwt.algorithms.ECAlgorithm.to_jwk(ec_key.public_key(), as_dict=True), "kid": "e1"},
    ]}  # fmt: skip
    (tmp_path / "jwks.json").write_text(json.dumps(jwks))
    auth = authenticator(jwks_file=str(tmp_path / "jwks.json"))
    assert auth.authenticate(bearer(token(rsa_key, "RS256", headers={"kid": "r1"}, sub="a"))).name == "a"
    assert auth.authenticate(bearer(token(other, "RS256", headers={"kid": "r2"}, sub="b"))).name == "b"
    assert auth.authenticate(bearer(token(ec_key, "ES256", headers={"kid": "e1"}, sub="c"))).name == "c"
    assert auth.authenticate(bearer(token(other, "RS256", sub="d"))).name == "d"  # no kid: every RS256 key is tried
    with pytest.raises(Unauthorized, match="signature"):
        auth.authenticate(bearer(token(other, "RS256", headers={"kid": "r1"})))
    with pytest.raises(Unauthorized, match="no key"):
        auth.authenticate(bearer(token(rsa_key, "RS256", headers={"kid": "unknown"})))


def test_jwt_expired_wrong_audience_issuer_and_missing_claims():
    auth = authenticator(secret_env="JWT_SECRET", audience="pixelfleet", issuer="https://idp.example", leeway_s=0)
    good = {"aud": "pixelfleet", "iss": "https://idp.example"}
    assert auth.authenticate(bearer(token(SECRET, **good))).name == "alice"
    cases = [
        (token(SECRET, lifetime_s=-10, **good), "expired"),
        (token(SECRET, aud="other", iss="https://idp.example"), "audience"),
        (token(SECRET, aud="pixelfleet", iss="https://evil.example"), "issuer"),
        (token(SECRET, iss="https://idp.example"), "aud claim"),
        (jwt.encode({"sub": "alice", **good}, SECRET, algorithm="HS256"), "exp claim"),
        (jwt.encode({"exp": int(time.time() + 60), **good}, SECRET, algorithm="HS256"), "sub claim"),
        ("not.a.jwt", "not a JWT"),
    ]
    for credential, reason in cases:
        with pytest.raises(Unauthorized, match=reason) as caught:
            auth.authenticate(bearer(credential))
        assert credential not in caught.value.message


def test_a_token_with_aud_passes_where_no_audience_is_configured():
    """An identity provider's tokens carry aud; without ``audience`` set it is not checked."""
    auth = authenticator(secret_env="JWT_SECRET")
    assert auth.authenticate(bearer(token(SECRET, aud="some-api"))).name == "alice"


def test_token_scopes_from_scope_or_scopes():
    assert token_scopes({"scope": "infer  admin other"}) == {"infer", "admin"}
    assert token_scopes({"scopes": ["jobs", 3, "x"]}) == {"jobs"}
    assert token_scopes({"scopes": "infer"}) == {"infer"}
    assert token_scopes({}) == frozenset()


# ---- requests and scopes ----


@pytest.mark.parametrize(
    ("method", "path", "scopes"),
    [
        ("GET", "/healthz", None), ("GET", "/readyz", None), ("GET", "/metrics", None), ("GET", "/v2/health/live", None),
        ("GET", "/v2/health/ready", None),
        ("POST", "/v1/superres", {"infer"}), ("POST", "/v1/ocr/lines", {"infer"}), ("POST", "/v2/models/ocr/infer", {"infer"}),
        ("POST", "/v2/models/superres/versions/x2/infer", {"infer"}),
        ("PUT", "/v1/traffic/superres", {"admin"}), ("POST", "/v1/variants/superres", {"admin"}),
        ("DELETE", "/v1/variants/superres/x", {"admin"}), ("GET", "/v1/traffic", {"infer", "admin"}),
        ("POST", "/v1/jobs", {"jobs"}), ("GET", "/v1/jobs/17", {"jobs"}),
        ("GET", "/v1/models", set()), ("GET", "/docs", set()), ("GET", "/v2/models/ocr", set()), ("GET", "/nope", set()),
    ],
)  # fmt: skip
def test_required_scopes(method, path, scopes):
    assert required_scopes(method, path) == (None if scopes is None else frozenset(scopes))


def key_authenticator() -> Authenticator:
    return Authenticator.from_config(AuthConfig(enabled=True), {API_KEYS_ENV: f"{INFER_KEY}:infer,{ADMIN_KEY}:admin"})


def test_check_request_401_403_and_public_routes():
    auth = key_authenticator()
    assert check_request(auth, "GET", "/healthz", {}) is None
    with pytest.raises(Unauthorized, match="credentials required") as caught:
        check_request(auth, "POST", "/v1/superres", {})
    assert caught.value.headers["WWW-Authenticate"] == 'Bearer realm="pixelfleet"'
    with pytest.raises(Unauthorized, match="Bearer"):
        check_request(auth, "POST", "/v1/superres", {"authorization": f"Basic {INFER_KEY}"})
    with pytest.raises(Unauthorized, match="invalid credentials"):
        check_request(auth, "POST", "/v1/superres", {"x-api-key": ADMIN_KEY + "x"})
    assert check_request(auth, "POST", "/v1/superres", {"x-api-key": INFER_KEY}).scopes == {"infer"}
    with pytest.raises(Forbidden, match="admin") as caught:
        check_request(auth, "PUT", "/v1/traffic/superres", bearer(INFER_KEY))
    assert caught.value.headers["WWW-Authenticate"] == 'Bearer realm="pixelfleet", error="insufficient_scope", scope="admin"'
    assert check_request(auth, "PUT", "/v1/traffic/superres", bearer(ADMIN_KEY)).scopes == {"admin"}


def test_auth_on_without_any_credential_is_a_config_error():
    with pytest.raises(ValueError, match="no credential"):
        Authenticator.from_config(AuthConfig(enabled=True), {})
    assert Authenticator.from_config(AuthConfig(), {API_KEYS_ENV: INFER_KEY}) is None  # off unless enabled


def test_middleware_answers_in_the_app_error_forms_below_a_route_prefix():
    api = FastAPI()
    install_error_handlers(api)
    install_auth(api, key_authenticator())

    @api.post("/v1/echo")
    async def echo() -> dict:
        return {"ok": True}

    @api.post("/v2/models/m/infer")
    async def infer() -> dict:
        return {"ok": True}

    @api.get("/healthz")
    async def healthz() -> dict:
        return {"status": "ok"}

    async def calls() -> None:
        # as Serve's proxy calls an app at route prefix /app: root_path /app, the full path kept
        transport = httpx.ASGITransport(app=api, root_path="/app")
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            assert (await client.get("/app/healthz")).status_code == 200
            rest = await client.post("/app/v1/echo")
            assert rest.status_code == 401
            assert rest.headers["www-authenticate"] == 'Bearer realm="pixelfleet"'
            assert rest.json()["error"]["code"] == "unauthorized"
            oip = await client.post("/app/v2/models/m/infer")
            assert oip.status_code == 401 and set(oip.json()) == {"error"} and isinstance(oip.json()["error"], str)
            assert (await client.post("/app/v1/echo", headers={"X-API-Key": INFER_KEY})).json() == {"ok": True}
            unknown = await client.get("/app/v1/secret-route")
            assert unknown.status_code == 401  # without a credential, no route says whether it exists
            assert (await client.get("/app/v1/secret-route", headers=bearer(INFER_KEY))).status_code == 404

    asyncio.run(calls())


# ---- pixelfleet up ----


def test_startup_check_loopback_insecure_and_on():
    off = [("pixelfleet", {"families": {}}, {})]
    on = [("pixelfleet", {"auth": {"enabled": True}}, {API_KEYS_ENV: INFER_KEY})]
    assert startup_check("127.0.0.1", off, insecure=False) == (None, "auth: off (loopback only)")
    assert startup_check("localhost", off, insecure=False)[0] is None
    refusal, _ = startup_check("0.0.0.0", off, insecure=False)
    assert "refusing" in refusal and "--insecure" in refusal
    assert startup_check("0.0.0.0", off, insecure=True)[1].startswith("auth: OFF on 0.0.0.0 (--insecure)")
    assert startup_check("0.0.0.0", on, insecure=False) == (None, "auth: on (pixelfleet: 1 API key)")
    refusal, _ = startup_check("127.0.0.1", [("pixelfleet", {"auth": {"enabled": True}}, {})], insecure=False)
    assert "no credential" in refusal
    assert is_loopback("::1") and is_loopback("127.0.0.2") and not is_loopback("0.0.0.0") and not is_loopback("example.org")


def test_up_on_all_interfaces_without_auth_exits_2_before_starting_ray():
    env = {k: v for k, v in os.environ.items() if k != API_KEYS_ENV}
    done = subprocess.run(
        [sys.executable, "-m", "pixelfleet.serve.cli", "up", "--host", "0.0.0.0"],
        capture_output=True, text=True, env=env, cwd=REPO, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 2, done.stdout + done.stderr
    assert "refusing to serve pixelfleet on 0.0.0.0 without authentication" in done.stderr
    assert "--insecure" in done.stderr
    assert "starting Ray" not in done.stdout + done.stderr
