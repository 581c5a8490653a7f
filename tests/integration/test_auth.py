"""Auth through the running app: a second small app (the test family ``invert`` only) with auth on
beside the session's keyless one: API keys from the config (hashes) and from
``PIXELFLEET_API_KEYS``, an HS256 secret from the environment; 401/403 in both error forms, the
public health routes, scopes, JWTs, the key's name as the sticky A/B caller, and handle calls
that stay keyless."""

from __future__ import annotations

import time

import httpx
import jwt
import numpy as np
import pytest
from pixelfleet.serve.auth import hash_key
from pixelfleet.serve.traffic import pick_variant

from tests.conftest import REPO, synthetic_photo
from tests.families.invert import KIND as INVERT_KIND
from tests.integration.apps import beside_session
from tests.integration.conftest import open_image, png_bytes

pytestmark = pytest.mark.integration

APP = "authapp"
IMAGE = synthetic_photo(12, 16)
PNG = png_bytes(IMAGE)
INFER_KEY = "infer-key-for-the-auth-test-0001"
ADMIN_KEY = "admin-key-for-the-auth-test-0002"
ENV_KEY = "env-key-for-the-auth-test-00003"
SECRET = "hs256-secret-of-the-auth-test-0123456789"
SECRET_ENV = "PIXELFLEET_TEST_JWT_SECRET"
WEIGHTS = {"a": 0.5, "b": 0.5}
#: infer keys by name: enough names that both variants get some under a 50/50 split
USERS = {f"user-{i}": f"user-key-{i}-for-the-auth-test-000" for i in range(8)}


@pytest.fixture(scope="module")
def auth_url(app_url, tmp_path_factory):
    """The URL of app ``authapp`` (route prefix ``/authapp``), deployed beside the session's app
    as ``test_traffic`` deploys its second app; deleted at the end."""
    from ray.serve.schema import ServeApplicationSchema

    keys = [
        {"name": "reader", "hash": hash_key(INFER_KEY), "scopes": ["infer"]},
        {"name": "operator", "hash": hash_key(ADMIN_KEY), "scopes": ["admin"]},
        *({"name": name, "hash": hash_key(key)} for name, key in USERS.items()),  # default scope: infer
    ]
    app = ServeApplicationSchema(
        name=APP, route_prefix=f"/{APP}", import_path="pixelfleet.serve.app:build_app",
        runtime_env={"env_vars": {"PYTHONPATH": str(REPO), SECRET_ENV: SECRET, "PIXELFLEET_API_KEYS": f"{ENV_KEY}:infer"}},
        args={
            "families": {"invert": {"kind": INVERT_KIND, "default": "a", "traffic": WEIGHTS,
                                    "variants": {"a": {}, "b": {"mode": "identity"}}}},
            "state": {"path": str(tmp_path_factory.mktemp("auth-state") / "state.json")},
            "auth": {"enabled": True, "api_keys": keys, "jwt": {"secret_env": SECRET_ENV}},
        },
        deployments=[{"name": n, "ray_actor_options": {"num_cpus": 0}} for n in ("Ingress", "invert-a", "invert-b")],
    )  # fmt: skip
    with beside_session(app):
        yield f"{app_url}/{APP}"


@pytest.fixture(scope="module")
def http(auth_url):
    with httpx.Client(base_url=auth_url, timeout=120) as client:
        yield client


def invert(http: httpx.Client, headers: dict | None = None) -> httpx.Response:
    return http.post("/v1/invert", content=PNG, headers={"Content-Type": "image/png", **(headers or {})})


def bearer(credential: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {credential}"}


def token(lifetime_s: float, sub: str = "svc-jwt", scope: str = "infer") -> str:
    return jwt.encode({"sub": sub, "scope": scope, "exp": int(time.time() + lifetime_s)}, SECRET, algorithm="HS256")


def served_by(response: httpx.Response) -> str:
    assert response.status_code == 200, response.text
    variant = response.headers["x-pixelfleet-variant"].removeprefix("invert/")
    expected = IMAGE if variant == "b" else 255 - IMAGE
    assert np.array_equal(np.asarray(open_image(response.content)), expected)
    return variant


def test_without_credentials_only_health_answers(http):
    rest = invert(http)
    assert rest.status_code == 401
    assert rest.headers["www-authenticate"] == 'Bearer realm="pixelfleet"'
    error = rest.json()["error"]
    assert error["code"] == "unauthorized" and error["request_id"]
    oip = http.post("/v2/models/invert/infer", json={"inputs": [{"name": "image", "datatype": "UINT8", "shape": [1, 1, 3], "data": [1, 2, 3]}]})
    assert oip.status_code == 401
    assert oip.headers["www-authenticate"] == 'Bearer realm="pixelfleet"'
    assert set(oip.json()) == {"error"} and isinstance(oip.json()["error"], str)  # OIP's form below /v2
    for path in ("/v1/models", "/v1/traffic", "/docs", "/v2/models/invert"):
        assert http.get(path).status_code == 401, path
    for path in ("/healthz", "/readyz", "/v2/health/live", "/v2/health/ready"):
        assert http.get(path).status_code == 200, path


def test_keys_and_scopes(http):
    assert served_by(invert(http, bearer(INFER_KEY)))
    assert served_by(invert(http, {"X-API-Key": INFER_KEY}))
    assert served_by(invert(http, bearer(ENV_KEY)))  # from PIXELFLEET_API_KEYS
    wrong = invert(http, bearer(INFER_KEY + "x"))
    assert wrong.status_code == 401
    assert wrong.headers["www-authenticate"] == 'Bearer realm="pixelfleet", error="invalid_token"'
    assert INFER_KEY not in wrong.text
    # the admin route: 403 with the infer key, 200 with the admin key
    denied = http.put("/v1/traffic/invert", json={"weights": WEIGHTS}, headers=bearer(INFER_KEY))
    assert denied.status_code == 403
    assert denied.headers["www-authenticate"] == 'Bearer realm="pixelfleet", error="insufficient_scope", scope="admin"'
    assert denied.json()["error"]["code"] == "forbidden"
    allowed = http.put("/v1/traffic/invert", json={"weights": WEIGHTS}, headers=bearer(ADMIN_KEY))
    assert allowed.status_code == 200, allowed.text
    assert invert(http, bearer(ADMIN_KEY)).status_code == 403  # admin is no inference scope
    assert http.get("/v1/traffic", headers=bearer(INFER_KEY)).status_code == 200  # read: infer or admin
    assert http.get("/v1/traffic", headers=bearer(ADMIN_KEY)).status_code == 200
    assert http.get("/v1/models", headers=bearer(INFER_KEY)).status_code == 200


def test_jwt_bearer_tokens(http):
    assert served_by(invert(http, bearer(token(300))))
    expired = invert(http, bearer(token(-120)))
    assert expired.status_code == 401
    assert "expired" in expired.json()["error"]["message"]
    assert invert(http, bearer(token(300, scope="jobs"))).status_code == 403
    oip = http.post(
        "/v2/models/invert/infer", headers=bearer(token(300)),
        json={"inputs": [{"name": "image", "datatype": "UINT8", "shape": [1, 1, 3], "data": [1, 2, 3]}]},
    )  # fmt: skip
    assert oip.status_code == 200, oip.text


def test_the_sticky_caller_is_the_key_name(http):
    expected = {name: pick_variant(WEIGHTS, name, "invert") for name in USERS}
    assert set(expected.values()) == {"a", "b"}  # the names split across both variants
    for name, key in USERS.items():
        # X-Client-Id is ignored when auth is on: the key's name decides
        served = {served_by(invert(http, {**bearer(key), "X-Client-Id": f"other-{i}"})) for i in range(3)}
        assert served == {expected[name]}, name
    jwt_served = {served_by(invert(http, bearer(token(300, sub="user-3")))) for _ in range(2)}
    assert jwt_served == {expected["user-3"]}  # a token's sub is its caller id


def test_handle_calls_stay_keyless(auth_url):
    from ray import serve

    data = serve.get_app_handle(APP).invert.remote(PNG, model="b").result()
    assert np.array_equal(np.asarray(open_image(data)), IMAGE)
