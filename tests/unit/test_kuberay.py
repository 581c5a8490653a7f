"""kuberay/rayservice.yaml: the embedded Serve config, the RayService CRD schema, Ray's Serve schema.

No Ray cluster and no Kubernetes needed. The CRDs (KubeRay v1.7.0, see SOURCE.md there) are read
from ``../shared/kuberay-crds``; the CRD tests skip when that folder is absent.

How the CRD's ``openAPIV3Schema`` is checked. It is a Kubernetes *structural schema*, which the
kube-apiserver does not evaluate as plain JSON Schema; ``to_json_schema`` translates it node by
node to JSON Schema Draft 7, close to what ``kubectl apply`` (server-side, default
``--validate=strict``) does:

- unknown fields: the apiserver prunes them, and strict field validation turns that into an
  error; here every object that lists ``properties`` gets ``additionalProperties: false``
  (unless it has ``x-kubernetes-preserve-unknown-fields``);
- ``x-kubernetes-int-or-string: true``: integer or string (a quantity pattern then applies to
  strings only, as in the apiserver);
- ``nullable: true`` allows null. Simplification: a null in a non-nullable field is an error
  here, where the apiserver would prune it silently (stricter, never looser);
- ``default``: the apiserver defaults before it validates, so a required property that has a
  default is not required here;
- ``x-kubernetes-list-type``: ``set`` -> unique items; ``map`` -> items unique on
  ``x-kubernetes-list-map-keys`` (a missing key takes its schema default, e.g. protocol TCP);
  ``atomic`` and ``x-kubernetes-map-type`` only matter to server-side apply merges;
- ``format``: int32/int64 ranges and date-time are checked, other formats are not;
- not evaluated (simplification): the CEL rules (``x-kubernetes-validations``). In the v1
  RayService schema they are only on ``managedBy`` (immutable, two allowed values) and
  ``gcsFaultToleranceOptions.backend`` (immutable); the manifest sets neither;
- ``metadata`` is ``{type: object}`` in every CRD: the apiserver validates ObjectMeta itself; here
  only ``metadata.name`` is checked (required, a DNS-1123 subdomain). ``apiVersion``/``kind``
  must be ``ray.io/v1``/``RayService``;
- not checked, like the apiserver at CR creation: the core-API rules of the embedded pod
  templates (requests <= limits, container names, ...) that apply only when KubeRay creates pods.
"""

from __future__ import annotations

import copy
import importlib.util
from datetime import datetime
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CRDS = REPO.parent / "shared" / "kuberay-crds"
MANIFEST = REPO / "kuberay" / "rayservice.yaml"
GPU_CONFIG = REPO / "serve" / "configs" / "gpu.yaml"
SAMPLES = ["ray-service.sample.yaml", "ray-service.mobilenet.yaml"]
DNS1123_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the CRD is 1 MB: libyaml when present


def _load(path: Path):
    with path.open(encoding="utf-8") as f:
        return yaml.load(f, Loader=_Loader)


# --- the structural schema -> JSON Schema translation (see the module docstring) --------------


def to_json_schema(node: dict) -> dict:
    out = {}
    for key, value in node.items():
        if key == "properties":
            out[key] = {name: to_json_schema(sub) for name, sub in value.items()}
        elif key in ("items", "additionalProperties", "not") and isinstance(value, dict):
            out[key] = to_json_schema(value)
        elif key in ("anyOf", "allOf", "oneOf"):
            out[key] = [to_json_schema(sub) for sub in value]
        elif key == "x-kubernetes-list-type":
            if value == "set":
                out["uniqueItems"] = True
            elif value == "map":
                item_props = node.get("items", {}).get("properties", {})
                out["x-k8s-unique-map-keys"] = {
                    k: item_props.get(k, {}).get("default") for k in node["x-kubernetes-list-map-keys"]
                }
        elif key.startswith("x-kubernetes-") or key in ("nullable", "default", "description", "example"):
            continue
        else:
            out[key] = value
    types = ["integer", "string"] if node.get("x-kubernetes-int-or-string") else node.get("type")
    if types is not None:
        types = [types] if isinstance(types, str) else list(types)
        if node.get("nullable"):
            types.append("null")
        out["type"] = types[0] if len(types) == 1 else types
    if "properties" in node and "additionalProperties" not in node and not node.get(
        "x-kubernetes-preserve-unknown-fields"
    ):
        out["additionalProperties"] = False
    if "required" in node:
        props = node.get("properties", {})
        out["required"] = [r for r in node["required"] if "default" not in props.get(r, {})]
    return out


def _unique_map_keys(validator, keys: dict, instance, schema):
    """``x-kubernetes-list-type: map``: no two items share their key values (scalars, per k8s)."""
    from jsonschema import ValidationError

    if not validator.is_type(instance, "array"):
        return
    seen = set()
    for item in instance:
        if isinstance(item, dict):
            key = tuple(item.get(k, default) for k, default in keys.items())
            if key in seen:
                yield ValidationError(f"duplicate entry for list-map keys {dict(zip(keys, key))}")
            seen.add(key)


@pytest.fixture(scope="module")
def crd_validator():
    jsonschema = pytest.importorskip("jsonschema")
    crd_file = CRDS / "ray.io_rayservices.yaml"
    if not crd_file.is_file():
        pytest.skip(f"KubeRay CRDs not present: {CRDS}")
    crd = _load(crd_file)
    assert crd["spec"]["names"]["kind"] == "RayService"
    (v1,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    schema = to_json_schema(v1["schema"]["openAPIV3Schema"])
    schema["required"] = ["apiVersion", "kind", "metadata", "spec"]
    schema["properties"]["apiVersion"] = {"const": f"{crd['spec']['group']}/v1"}
    schema["properties"]["kind"] = {"const": "RayService"}
    schema["properties"]["metadata"] = {
        "type": "object",
        "required": ["name"],
        "properties": {"name": {"type": "string", "maxLength": 253, "pattern": DNS1123_SUBDOMAIN}},
    }

    formats = jsonschema.FormatChecker(formats=())
    for name, bits in (("int32", 32), ("int64", 64)):
        formats.checks(name)(lambda v, b=bits: not isinstance(v, int) or -(2 ** (b - 1)) <= v < 2 ** (b - 1))

    @formats.checks("date-time", raises=ValueError)
    def _date_time(value):
        return not isinstance(value, str) or bool(datetime.fromisoformat(value.replace("Z", "+00:00")))

    cls = jsonschema.validators.extend(jsonschema.Draft7Validator, {"x-k8s-unique-map-keys": _unique_map_keys})
    cls.check_schema(schema)
    return cls(schema, format_checker=formats)


def _errors(validator, document) -> list[str]:
    return sorted(
        f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in validator.iter_errors(document)
    )


@pytest.fixture(scope="module")
def manifest() -> dict:
    return _load(MANIFEST)


@pytest.fixture(scope="module")
def serve_config(manifest) -> dict:
    text = manifest["spec"]["serveConfigV2"]
    assert isinstance(text, str), "serveConfigV2 must be a YAML string (a block scalar)"
    return yaml.safe_load(text)


# --- the embedded Serve config ---------------------------------------------------------------


def test_serve_config_v2_equals_gpu_yaml(serve_config):
    assert serve_config == _load(GPU_CONFIG)


def test_render_check_passes():
    """``python kuberay/render.py --check`` would pass: the block is gpu.yaml verbatim."""
    spec = importlib.util.spec_from_file_location("kuberay_render", REPO / "kuberay" / "render.py")
    render = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(render)
    text = MANIFEST.read_text(encoding="utf-8")
    assert render.render(text, GPU_CONFIG.read_text(encoding="utf-8")) == text


def test_serve_config_v2_validates_against_ray_serve_schema(serve_config):
    from ray.serve.schema import ServeDeploySchema

    parsed = ServeDeploySchema.model_validate(serve_config)
    assert [app.name for app in parsed.applications] == ["pixelfleet"]


def test_ray_version_matches_installed_ray(manifest):
    import ray

    assert manifest["spec"]["rayClusterConfig"]["rayVersion"] == ray.__version__


def test_containers_share_image_and_offline_env(manifest):
    cluster = manifest["spec"]["rayClusterConfig"]
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    containers = [c for g in groups for c in g["template"]["spec"]["containers"]]
    assert {c["image"] for c in containers} == {"pixelfleet:0.1.0-gpu"}
    for c in containers:
        assert {"name": "HF_HUB_OFFLINE", "value": "1"} in c["env"], c["name"]
    (worker,) = cluster["workerGroupSpecs"]
    assert worker["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1


# --- the RayService CRD schema ---------------------------------------------------------------


def test_manifest_validates_against_crd(crd_validator, manifest):
    assert _errors(crd_validator, manifest) == []


@pytest.mark.parametrize("sample", SAMPLES)
def test_official_samples_validate_against_crd(crd_validator, sample):
    path = CRDS / sample
    if not path.is_file():
        pytest.skip(f"sample not present: {path}")
    assert _errors(crd_validator, _load(path)) == []


def _worker(doc):
    return doc["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]


def _head_container(doc):
    return doc["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0]


def _misspelled_field(doc):
    _worker(doc)["minReplica"] = _worker(doc).pop("minReplicas")


def _int_start_param(doc):  # rayStartParams values must be strings
    doc["spec"]["rayClusterConfig"]["headGroupSpec"]["rayStartParams"]["num-cpus"] = 0


def _string_replicas(doc):
    _worker(doc)["replicas"] = "1"


def _bad_quantity(doc):
    _head_container(doc)["resources"]["limits"]["memory"] = "16 GB"


def _duplicate_port(doc):
    _head_container(doc)["ports"].append({"containerPort": 8000, "name": "serve-again"})


def _missing_template(doc):
    del doc["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]


def _int32_overflow(doc):
    _worker(doc)["maxReplicas"] = 2**31


def _wrong_kind(doc):
    doc["kind"] = "RayCluster"


@pytest.mark.parametrize(
    ("mutate", "where"),
    [
        (_misspelled_field, "spec/rayClusterConfig/workerGroupSpecs/0: Additional properties"),
        (_int_start_param, "spec/rayClusterConfig/headGroupSpec/rayStartParams/num-cpus:"),
        (_string_replicas, "spec/rayClusterConfig/workerGroupSpecs/0/replicas:"),
        (_bad_quantity, "spec/rayClusterConfig/headGroupSpec/template/spec/containers/0/resources/limits/memory:"),
        (_duplicate_port, "spec/rayClusterConfig/headGroupSpec/template/spec/containers/0/ports: duplicate"),
        (_missing_template, "spec/rayClusterConfig/headGroupSpec: 'template' is a required property"),
        (_int32_overflow, "spec/rayClusterConfig/workerGroupSpecs/0/maxReplicas:"),
        (_wrong_kind, "kind:"),
    ],
)
def test_crd_validation_catches_errors(crd_validator, manifest, mutate, where):
    broken = copy.deepcopy(manifest)
    mutate(broken)
    errors = _errors(crd_validator, broken)
    assert errors, "the broken manifest validated"
    assert any(e.startswith(where) for e in errors), errors
