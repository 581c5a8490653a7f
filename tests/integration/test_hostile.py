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
- a flood beyond that app's ingress admission (``admission.max_in_flight``): JSON 503 with
  ``Retry-After``, never Ray's plain text.
"""

from __future__ import annotations

import base64
import json
import re
import time
from concurrent.futures import ThreadPoolExecutor

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


#: a value for each path parameter of the app's routes (a family, version and variant it serves)
PATH_VALUES = {"family": "invert", "model": "invert", "version": "a", "variant": "b"}
UNWRAPPED = ("deep array", "deep object", "not utf-8", "nan and huge numbers")


def test_every_json_route_in_openapi_refuses_hostile_json(client):
    """Every route whose OpenAPI request body takes JSON (so routes added later too) answers the
    unwrapped hostile bodies with a 4xx in its error form."""
    schema = client.get("/openapi.json").json()
    routes = [
        (method.upper(), path)
        for path, item in schema["paths"].items()
        for method, operation in item.items()
        if "application/json" in operation.get("requestBody", {}).get("content", {})
    ]
    assert {("PUT", "/v1/traffic/{family}"), ("POST", "/v1/variants/{family}"), ("POST", "/v2/models/{model}/infer")} <= set(routes)
    for method, path in routes:
        url = path.format_map({name: PATH_VALUES.get(name, "x") for name in re.findall(r"{(\w+)}", path)})
        for name in UNWRAPPED:
            response = client.request(method, url, content=JSON_BODIES[name](lambda v: v), headers=JSON)
            assert_json_4xx(response, oip=url.startswith("/v2")), (method, path, name)
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


# --- an app with auth on and a 2-request ingress, beside the session's --------------------------

AUTH_APP = "hostileauth"
KEY = "hostile-test-infer-key-000000001"
SECRET = "hostile-test-hs256-secret-0123456789abcdef"
SECRET_ENV = "PIXELFLEET_HOSTILE_JWT_SECRET"
MAX_IN_FLIGHT = 2
DELAY_S = 2.0


@pytest.fixture(scope="module")
def auth_http(app_url, tmp_path_factory):
    """An httpx client of app ``hostileauth``: the test family ``invert`` with a fast variant
    ``a`` (default) and ``slow`` (2 s a call), auth on (an API key and HS256 JWTs), and an ingress
    that admits 2 requests at once (``admission.max_in_flight``). Its ``Ingress`` keeps Serve's
    default ``max_ongoing_requests`` (64), so every request reaches the replica and the admission
    middleware, not Ray's proxy, refuses."""
    from ray.serve.schema import ServeApplicationSchema

    app = ServeApplicationSchema(
        name=AUTH_APP, route_prefix=f"/{AUTH_APP}", import_path="pixelfleet.serve.app:build_app",
        runtime_env={"env_vars": {"PYTHONPATH": str(REPO), SECRET_ENV: SECRET}},
        args={
            "families": {"invert": {"kind": INVERT_KIND, "default": "a", "variants": {"a": {}, "slow": {"delay_s": DELAY_S}}}},
            "state": {"path": str(tmp_path_factory.mktemp("hostile-auth-state") / "state.json")},
            "auth": {"enabled": True, "api_keys": [{"name": "reader", "hash": hash_key(KEY)}], "jwt": {"secret_env": SECRET_ENV}},
            "admission": {"max_in_flight": MAX_IN_FLIGHT, "retry_after_s": 3},
        },
        deployments=[{"name": n, "ray_actor_options": {"num_cpus": 0}} for n in ("Ingress", "invert-a", "invert-slow")],
    )  # fmt: skip
    with beside_session(app), httpx.Client(base_url=f"{app_url}/{AUTH_APP}", timeout=60, headers={"Authorization": f"Bearer {KEY}"}) as http:
        yield http


# --- overload: a flood beyond the ingress's admission -------------------------------------------

OIP_BODY = {"inputs": [{"name": "image", "datatype": "UINT8", "shape": [1, 1, 3], "data": [1, 2, 3]}]}
FLOOD = 12


def _send_slow(http: httpx.Client, index: int) -> tuple[str, float, httpx.Response]:
    """Even ``index``: REST; odd: OIP v2; both to the slow variant. Returns (api, send time, response)."""
    started = time.monotonic()
    if index % 2:
        return "oip", started, http.post("/v2/models/invert/versions/slow/infer", json=OIP_BODY)
    return "rest", started, http.post("/v1/invert?model=slow", content=PNG, headers={"Content-Type": "image/png"})


def test_flood_beyond_max_in_flight_answers_json_503(auth_http, client):
    """Overload of the ingress itself is JSON 503 with Retry-After, never Ray's plain text: of a
    flood of concurrent REST and OIP calls, 2 are served and every other one is refused in its
    API's error form; health routes answer during the flood; the app serves again after it."""
    with ThreadPoolExecutor(FLOOD) as pool:
        futures = [pool.submit(_send_slow, auth_http, i) for i in range(FLOOD)]
        time.sleep(0.5)  # the flood is in: the 2 admitted requests hold the ingress for 2 s
        health = [auth_http.get(path) for path in ("/healthz", "/readyz", "/v2/health/ready")]
        results = [f.result() for f in futures]

    assert [r.status_code for r in health] == [200, 200, 200], [r.text for r in health]
    statuses = [r.status_code for _, _, r in results]
    assert set(statuses) <= {200, 503}, statuses
    refused = [(api, r) for api, _, r in results if r.status_code == 503]
    assert statuses.count(200) >= MAX_IN_FLIGHT and refused, statuses
    sent_within = max(t for _, t, _ in results) - min(t for _, t, _ in results)
    if sent_within < DELAY_S / 2:  # every request arrived while the first two were in flight
        assert statuses.count(200) == MAX_IN_FLIGHT, statuses
    for api, response in refused:
        assert response.headers["content-type"] == "application/json", response.text
        assert response.headers["retry-after"] == "3"
        body = response.json()
        if api == "rest":
            assert body["error"]["code"] == "overloaded" and body["error"]["request_id"]
        else:  # OIP's error form
            assert isinstance(body["error"], str) and "capacity" in body["error"]
    # nothing broke: the same app serves again, and so does the session's
    assert _send_slow(auth_http, 0)[2].status_code == 200
    assert client.get("/readyz").status_code == 200


# --- auth headers ------------------------------------------------------------------------------


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
        request = auth_http.build_request("POST", "/v1/invert", content=PNG)
        request.headers = httpx.Headers([(k, v) for k, v in request.headers.raw if k.lower() != b"authorization"] + [(b"content-type", b"image/png"), *raw])
        response = auth_http.send(request)
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
