"""Hostile input through the running app: no request gets a 5xx, every refusal is a 4xx in the
route's JSON error form, and the replicas keep serving afterwards.

- JSON on every JSON route (``PUT /v1/traffic/{family}``, ``POST /v1/variants/{family}``, ``POST
  /v2/models/{model}/infer``) of the session's app: 100k-deep nesting, nesting just below
  Python's recursion limit, huge arrays under the body limit, bodies over it (declared and
  chunked), bytes that are not UTF-8.
- multipart bodies on ``POST /v1/invert``: 10k parts, 10k files, 10k headers in a part, huge part
  headers and names, parts without a name or without Content-Disposition, no boundary.
- auth headers on an app with auth on beside the session's: huge and non-ASCII (latin-1, UTF-8)
  credentials, malformed ``Bearer``, repeated ``Authorization`` / ``X-API-Key``, a JWT with
  ``alg: none``, a forged or garbage JWT, a huge ``X-API-Key``.
"""

from __future__ import annotations

import base64
import json
import time

import httpx
import jwt
import pytest

from pixelfleet.serve.auth import hash_key
from tests.conftest import REPO, synthetic_photo
from tests.families.invert import KIND as INVERT_KIND
from tests.integration.apps import beside_session
from tests.integration.conftest import MAX_BODY_BYTES, png_bytes

pytestmark = pytest.mark.integration

PNG = png_bytes(synthetic_photo(8, 8))
DEEP = 100_000
#: Parses with Python's json (its C decoder stops near the recursion limit of 1000), so the
#: nested value reaches validation.
NEAR_LIMIT = 900
JSON = {"Content-Type": "application/json"}


def _deep_array(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def _deep_object(depth: int) -> bytes:
    return b'{"a":' * depth + b"1" + b"}" * depth


#: route -> a function that puts a hostile JSON value where the route expects one
JSON_ROUTES = {
    "traffic": ("PUT", "/v1/traffic/invert", lambda v: b'{"weights": ' + v + b"}"),
    "variants": ("POST", "/v1/variants/invert", lambda v: b'{"name": "hostile", "config": ' + v + b"}"),
    "oip": ("POST", "/v2/models/invert/infer", lambda v: b'{"inputs": [{"name": "image", "datatype": "UINT8", "shape": [1], "data": ' + v + b"}]}"),
}
HUGE_ARRAY = b"[" + b",".join([b"0"] * ((MAX_BODY_BYTES - 200) // 2)) + b"]"
JSON_BODIES = {
    "deep array": lambda wrap: _deep_array(DEEP),
    "deep object": lambda wrap: _deep_object(DEEP),
    "deep array in a field": lambda wrap: wrap(_deep_array(DEEP)),
    "near-limit array in a field": lambda wrap: wrap(_deep_array(NEAR_LIMIT)),
    "near-limit object in a field": lambda wrap: wrap(_deep_object(NEAR_LIMIT)),
    "huge array in a field": lambda wrap: wrap(HUGE_ARRAY),
    "huge object in a field": lambda wrap: wrap(json.dumps({f"v{i}": 1.0 for i in range(MAX_BODY_BYTES // 20)}).encode()),
    "not utf-8": lambda wrap: wrap(b'"\xff\xfe\xc3"'),
    "nan and huge numbers": lambda wrap: wrap(b"[NaN, Infinity, 1e999999, " + b"9" * 5000 + b"]"),
}


def assert_json_4xx(response: httpx.Response, oip: bool = False) -> None:
    assert 400 <= response.status_code < 500, (response.status_code, response.text[:300])
    assert response.headers["content-type"] == "application/json", response.text[:300]
    error = response.json()["error"]
    if oip:
        assert isinstance(error, str)
    else:
        assert error["code"] and error["message"], error
        assert "Traceback" not in error["message"] and "/work/" not in error["message"]


def assert_still_serving(http: httpx.Client, headers: dict | None = None) -> None:
    answer = http.post("/v1/invert", content=PNG, headers={"Content-Type": "image/png", **(headers or {})})
    assert answer.status_code == 200, answer.text
    assert http.get("/readyz").status_code == 200


# --- JSON depth and size -----------------------------------------------------------------------


@pytest.mark.parametrize("route", JSON_ROUTES)
def test_hostile_json_answers_4xx(client, route):
    method, path, wrap = JSON_ROUTES[route]
    for name, make in JSON_BODIES.items():
        response = client.request(method, path, content=make(wrap), headers=JSON)
        assert_json_4xx(response, oip=route == "oip"), name
    assert_still_serving(client)


@pytest.mark.parametrize("route", JSON_ROUTES)
def test_json_bodies_over_the_limit_answer_413(client, route):
    method, path, wrap = JSON_ROUTES[route]
    body = wrap(b'"' + b"x" * MAX_BODY_BYTES + b'"')

    def chunks():
        for start in range(0, len(body), 256 * 1024):
            yield body[start : start + 256 * 1024]

    for response in (client.request(method, path, content=body, headers=JSON), client.request(method, path, content=chunks(), headers=JSON)):
        assert response.status_code == 413, response.text[:300]
        assert_json_4xx(response, oip=route == "oip")
    assert_still_serving(client)


# --- multipart ---------------------------------------------------------------------------------

BOUNDARY = "hostile-boundary"
IMAGE_PART = (b'Content-Disposition: form-data; name="image"; filename="a.png"\r\nContent-Type: image/png', PNG)


def _multipart(parts: list[tuple[bytes, bytes]]) -> bytes:
    b = BOUNDARY.encode()
    return b"".join(b"--" + b + b"\r\n" + head + b"\r\n\r\n" + value + b"\r\n" for head, value in parts) + b"--" + b + b"--\r\n"


MULTIPART = {
    "10k fields": lambda: _multipart([IMAGE_PART] + [(f'Content-Disposition: form-data; name="f{i}"'.encode(), b"x") for i in range(10_000)]),
    "10k files": lambda: _multipart([(f'Content-Disposition: form-data; name="image"; filename="{i}.png"'.encode(), b"x") for i in range(10_000)]),
    "10k parts without a name": lambda: _multipart([IMAGE_PART] + [(b"Content-Disposition: form-data", b"x")] * 10_000),
    "a part without a name": lambda: _multipart([(b'Content-Disposition: form-data; filename="a.png"', PNG)]),
    "a part without Content-Disposition": lambda: _multipart([(b"Content-Type: image/png", PNG)]),
    "10k headers in a part": lambda: _multipart([(IMAGE_PART[0] + b"".join(b"\r\nX-H%d: v" % i for i in range(10_000)), PNG)]),
    "a 1.5 MB part header": lambda: _multipart([(IMAGE_PART[0] + b"\r\nX-Big: " + b"a" * 1_500_000, PNG)]),
    "a 1.5 MB field name": lambda: _multipart([(b'Content-Disposition: form-data; name="' + b"n" * 1_500_000 + b'"', b"x"), IMAGE_PART]),
    "a 1.5 MB field value": lambda: _multipart([IMAGE_PART, (b'Content-Disposition: form-data; name="format"', b"p" * 1_500_000)]),
    "unterminated": lambda: _multipart([IMAGE_PART])[:-10],
}


def test_hostile_multipart_answers_4xx(client):
    headers = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
    for name, make in MULTIPART.items():
        body = make()
        assert len(body) <= MAX_BODY_BYTES, name
        assert_json_4xx(client.post("/v1/invert", content=body, headers=headers)), name
    assert_json_4xx(client.post("/v1/invert", content=b"x", headers={"Content-Type": "multipart/form-data"}))  # no boundary
    # the same parser still takes a well-formed upload
    good = client.post("/v1/invert", content=_multipart([IMAGE_PART, (b'Content-Disposition: form-data; name="format"', b"webp")]), headers=headers)
    assert good.status_code == 200 and good.headers["content-type"] == "image/webp"
    assert_still_serving(client)


# --- auth headers ------------------------------------------------------------------------------

AUTH_APP = "hostileauth"
KEY = "hostile-test-infer-key-000000001"
SECRET = "hostile-test-hs256-secret-0123456789abcdef"
SECRET_ENV = "PIXELFLEET_HOSTILE_JWT_SECRET"


@pytest.fixture(scope="module")
def auth_http(app_url, tmp_path_factory):
    from ray.serve.schema import ServeApplicationSchema

    app = ServeApplicationSchema(
        name=AUTH_APP, route_prefix=f"/{AUTH_APP}", import_path="pixelfleet.serve.app:build_app",
        runtime_env={"env_vars": {"PYTHONPATH": str(REPO), SECRET_ENV: SECRET}},
        args={
            "families": {"invert": {"kind": INVERT_KIND, "default": "a", "variants": {"a": {}}}},
            "state": {"path": str(tmp_path_factory.mktemp("hostile-auth-state") / "state.json")},
            "auth": {"enabled": True, "api_keys": [{"name": "reader", "hash": hash_key(KEY)}], "jwt": {"secret_env": SECRET_ENV}},
        },
        deployments=[{"name": n, "ray_actor_options": {"num_cpus": 0}} for n in ("Ingress", "invert-a")],
    )  # fmt: skip
    with beside_session(app), httpx.Client(base_url=f"{app_url}/{AUTH_APP}", timeout=60) as http:
        yield http


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _claims() -> dict:
    return {"sub": "mallory", "scope": "infer admin", "exp": int(time.time()) + 600}


def _hostile_credentials() -> dict[str, list[tuple[bytes, bytes]]]:
    valid = (b"authorization", f"Bearer {KEY}".encode())
    unsigned = _b64(b'{"alg":"none","typ":"JWT"}') + "." + _b64(json.dumps(_claims()).encode()) + "."
    return {
        "huge bearer (1 MB)": [(b"authorization", b"Bearer " + b"a" * 1_000_000)],
        "long bearer (60 kB)": [(b"authorization", b"Bearer " + b"a" * 60_000)],
        "latin-1 bytes": [(b"authorization", b"Bearer \xe9\xff\xfe" + KEY.encode())],
        "utf-8 bytes": [(b"authorization", "Bearer ключ-€-🔑".encode())],
        "control characters": [(b"authorization", b"Bearer \x01\x02\x7f")],
        "bearer without credential": [(b"authorization", b"Bearer")],
        "basic scheme": [(b"authorization", b"Basic " + base64.b64encode(f"reader:{KEY}".encode()))],
        "tab after bearer": [(b"authorization", b"Bearer\t" + KEY.encode())],
        "three words": [(b"authorization", f"Bearer {KEY} extra".encode())],
        "repeated authorization (valid first)": [valid, (b"authorization", b"Bearer not-the-key-00000000000")],
        "repeated authorization (both valid)": [valid, valid],
        "repeated x-api-key": [(b"x-api-key", KEY.encode()), (b"x-api-key", KEY.encode())],
        "jwt alg none": [(b"authorization", f"Bearer {unsigned}".encode())],
        "jwt alg none, signature kept": [(b"authorization", f"Bearer {unsigned}{_b64(b'sig')}".encode())],
        "jwt forged secret": [(b"authorization", f"Bearer {jwt.encode(_claims(), 'x' * 40, algorithm='HS256')}".encode())],
        "jwt alg confusion header": [(b"authorization", f"Bearer {_b64(json.dumps({'alg': 'RS256', 'kid': '../../etc/passwd'}).encode())}.{_b64(b'{}')}.{_b64(b'x')}".encode())],
        "jwt garbage": [(b"authorization", b"Bearer a.b.c")],
        "jwt empty segments": [(b"authorization", b"Bearer ..")],
        "jwt non-json segments": [(b"authorization", f"Bearer {_b64(bytes(range(256)))}.{_b64(b'[')}.{_b64(b'x')}".encode())],
        "jwt huge header segment": [(b"authorization", f"Bearer {_b64(json.dumps({'alg': 'HS256', 'x': 'y' * 30_000}).encode())}.e30.e30".encode())],
        "huge x-api-key (1 MB)": [(b"x-api-key", b"k" * 1_000_000)],
        "long x-api-key (60 kB)": [(b"x-api-key", b"k" * 60_000)],
        "x-api-key non-ascii": [(b"x-api-key", "ключ".encode() + b"\xff")],
        "empty x-api-key": [(b"x-api-key", b"")],
    }


#: Requests that uvicorn (httptools), under Serve's proxy, refuses itself before any app code
#: runs (400 "Invalid HTTP request received.", plain text): a header value it does not parse. It
#: has no header size limit: the 1 MB credentials reach the app and get its 401.
BELOW_THE_APP = {"control characters"}


def test_hostile_auth_headers_answer_4xx(auth_http):
    for name, raw in _hostile_credentials().items():
        response = auth_http.post("/v1/invert", content=PNG, headers=httpx.Headers([(b"content-type", b"image/png"), *raw]))
        assert response.status_code < 500, (name, response.status_code, response.text[:300])
        if response.status_code != 401:  # refused by Serve's HTTP server (uvicorn) before the app
            assert name in BELOW_THE_APP, (name, response.status_code, response.text[:300])
            continue
        assert_json_4xx(response)
        assert response.headers["www-authenticate"].startswith("Bearer")
        for secretish in (KEY, SECRET, "mallory"):
            assert secretish not in response.text, name
    assert_still_serving(auth_http, {"Authorization": f"Bearer {KEY}"})
    token = jwt.encode({"sub": "svc", "scope": "infer", "exp": int(time.time()) + 600}, SECRET, algorithm="HS256")
    assert_still_serving(auth_http, {"Authorization": f"Bearer {token}"})
