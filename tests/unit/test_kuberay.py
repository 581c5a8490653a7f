"""kuberay/: every manifest is what ``python kuberay/render.py`` renders from the repository's
configs, and validates against its KubeRay CRD (RayService, RayJob) and Ray's Serve schema; the
RayService has the GPU worker group, autoscaling and GCS fault tolerance; every training command
has a RayJob whose entrypoint the CLI and the command's config loader accept.

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
  ``gcsFaultToleranceOptions.backend`` (immutable); the manifests set neither;
- ``metadata`` is ``{type: object}`` in every CRD: the apiserver validates ObjectMeta itself; here
  only ``metadata.name`` is checked (required, a DNS-1123 subdomain). ``apiVersion``/``kind``
  must be ``ray.io/v1`` and the CRD's kind;
- not checked, like the apiserver at CR creation: the core-API rules of the embedded pod
  templates (requests <= limits, container names, ...) that apply only when KubeRay creates pods.
"""

from __future__ import annotations

import copy
import importlib.util
import shlex
from datetime import datetime
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CRDS = REPO.parent / "shared" / "kuberay-crds"
MANIFEST = REPO / "kuberay" / "rayservice.yaml"
GPU_CONFIG = REPO / "serve" / "configs" / "gpu.yaml"
KINDS = {"RayService": "ray.io_rayservices.yaml", "RayJob": "ray.io_rayjobs.yaml"}
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


def _validator(kind: str):
    """A JSON Schema validator of ``kind`` (RayService, RayJob) from its KubeRay CRD."""
    jsonschema = pytest.importorskip("jsonschema")
    crd_file = CRDS / KINDS[kind]
    if not crd_file.is_file():
        pytest.skip(f"KubeRay CRDs not present: {CRDS}")
    crd = _load(crd_file)
    assert crd["spec"]["names"]["kind"] == kind
    (v1,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    schema = to_json_schema(v1["schema"]["openAPIV3Schema"])
    schema["required"] = ["apiVersion", "kind", "metadata", "spec"]
    schema["properties"]["apiVersion"] = {"const": f"{crd['spec']['group']}/v1"}
    schema["properties"]["kind"] = {"const": kind}
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


@pytest.fixture(scope="module")
def crd_validator():
    return _validator("RayService")


@pytest.fixture(scope="module")
def rayjob_validator():
    return _validator("RayJob")


def _errors(validator, document) -> list[str]:
    return sorted(
        f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in validator.iter_errors(document)
    )


@pytest.fixture(scope="module")
def render():
    """kuberay/render.py as a module (kuberay/ is not a package)."""
    spec = importlib.util.spec_from_file_location("kuberay_render", REPO / "kuberay" / "render.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def rendered(render) -> dict[Path, str]:
    return render.render_all()


@pytest.fixture(scope="module")
def manifest() -> dict:
    return _load(MANIFEST)


@pytest.fixture(scope="module")
def rayjobs(render) -> dict[str, dict]:
    """command -> its committed RayJob manifest."""
    return {job.command: _load(REPO / "kuberay" / f"rayjob-{job.command}.yaml") for job in render.load_values().training}


@pytest.fixture(scope="module")
def serve_config(manifest) -> dict:
    text = manifest["spec"]["serveConfigV2"]
    assert isinstance(text, str), "serveConfigV2 must be a YAML string (a block scalar)"
    return yaml.safe_load(text)


def _containers(cluster: dict) -> list[dict]:
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    return [c for g in groups for c in g["template"]["spec"]["containers"]]


# --- one command renders every manifest --------------------------------------------------------


def test_committed_manifests_are_what_render_py_renders(render, rendered):
    """``python kuberay/render.py --check`` would pass: byte for byte, and no stale manifest."""
    assert {p.name for p in rendered} == {p.name for p in (REPO / "kuberay").glob("ray*.yaml")}
    for path, text in rendered.items():
        assert path.read_text(encoding="utf-8") == text, f"{path.name} is stale: run python kuberay/render.py"
    assert render.main(["--check"]) == 0


def test_serve_config_v2_is_gpu_yaml_verbatim(manifest, serve_config):
    assert manifest["spec"]["serveConfigV2"] == GPU_CONFIG.read_text(encoding="utf-8")  # comments included
    assert serve_config == _load(GPU_CONFIG)


def test_serve_config_v2_validates_against_ray_serve_schema(serve_config):
    from ray.serve.schema import ServeDeploySchema

    parsed = ServeDeploySchema.model_validate(serve_config)
    assert [app.name for app in parsed.applications] == ["pixelfleet"]


def test_ray_version_and_image_follow_the_repository(manifest, rayjobs):
    import importlib.metadata

    import ray

    version = importlib.metadata.version("pixelfleet")
    for doc, cluster in [(manifest, manifest["spec"]["rayClusterConfig"])] + [(j, j["spec"]["rayClusterSpec"]) for j in rayjobs.values()]:
        assert cluster["rayVersion"] == ray.__version__
        containers = _containers(cluster)
        containers += doc["spec"].get("submitterPodTemplate", {}).get("spec", {}).get("containers", [])
        assert {c["image"] for c in containers} == {f"pixelfleet:{version}-cuda"}


# --- the RayService --------------------------------------------------------------------------


def test_rayservice_gpu_workers_and_autoscaling(manifest, serve_config):
    cluster = manifest["spec"]["rayClusterConfig"]
    (worker,) = cluster["workerGroupSpecs"]
    limits = worker["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert limits["nvidia.com/gpu"] >= 1
    assert cluster["enableInTreeAutoscaling"] is True  # Ray autoscaling of the worker pods
    assert worker["minReplicas"] < worker["maxReplicas"]
    scaled = [d for d in serve_config["applications"][0]["deployments"] if "autoscaling_config" in d]  # Serve autoscaling
    assert scaled and all(d["autoscaling_config"]["min_replicas"] < d["autoscaling_config"]["max_replicas"] for d in scaled)
    assert any(d.get("ray_actor_options", {}).get("num_gpus", 0) > 0 for d in scaled)


def test_rayservice_gcs_fault_tolerance_with_external_redis(manifest):
    options = manifest["spec"]["rayClusterConfig"]["gcsFaultToleranceOptions"]
    host, _, port = options["redisAddress"].rpartition(":")
    assert host and port.isdigit()
    secret = options["redisPassword"]["valueFrom"]["secretKeyRef"]
    assert secret["name"] and secret["key"], "the password comes from a Secret, never inline"
    assert "value" not in options["redisPassword"]


@pytest.mark.parametrize("kind", ["rayservice", "rayjob-srgan", "rayjob-lora"])
def test_pods_have_resources_probes_and_run_as_non_root(kind):
    doc = _load(REPO / "kuberay" / f"{kind}.yaml")
    cluster = doc["spec"].get("rayClusterConfig") or doc["spec"]["rayClusterSpec"]
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    for group in groups:
        spec = group["template"]["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True and spec["securityContext"]["runAsUser"] != 0
        for container in spec["containers"]:
            resources = container["resources"]
            assert {k: v for k, v in resources["limits"].items() if k != "nvidia.com/gpu"} == resources["requests"]
            for probe in ("readinessProbe", "livenessProbe"):
                assert container[probe]["httpGet"]["path"] in ("/api/healthz", "/-/healthz"), probe
            assert {"name": "HF_HUB_OFFLINE", "value": "1"} in container["env"]
    if kind == "rayservice":  # a Serve worker is ready when its Serve proxy answers
        (worker,) = cluster["workerGroupSpecs"]
        assert worker["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"] == {"path": "/-/healthz", "port": 8000}


# --- the RayJobs -----------------------------------------------------------------------------


def test_every_training_command_has_a_rayjob(render, rayjobs):
    """Each `pixelfleet train <command>` of the CLI has a RayJob, and render.py knows its loader."""
    from pixelfleet.serve.cli import train_app

    commands = {c.name or c.callback.__name__ for c in train_app.registered_commands}
    assert commands == set(rayjobs) == set(render.COMMANDS)


def test_rayjob_entrypoints_run_the_cli_on_a_valid_config(render, rayjobs):
    from typer.testing import CliRunner

    from pixelfleet.serve.cli import app

    for command, doc in rayjobs.items():
        cd, work_dir, and_, *argv = shlex.split(doc["spec"]["entrypoint"])
        assert (cd, and_) == ("cd", "&&") and work_dir.startswith("/data")
        assert argv[:3] == ["pixelfleet", "train", command]
        config = REPO / "train" / "configs" / Path(argv[3]).name
        assert argv[3].startswith("/app/train/configs/") and config.is_file()  # the Dockerfile copies train/configs/ there
        overrides = dict(pair.split("=", 1) for pair in argv[5::2])
        assert argv[4::2] == ["--set"] * len(overrides)
        import importlib

        loader = importlib.import_module(render.COMMANDS[command])
        cfg = loader.load_config(config, {k: yaml.safe_load(v) for k, v in overrides.items()})
        assert cfg.scaling.use_gpu is True
        assert cfg.scaling.num_workers == doc["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["replicas"]
        help_text = CliRunner().invoke(app, ["train", command, "--help"]).output
        assert "--set" in help_text  # the flags the entrypoint uses exist
        spec = doc["spec"]
        assert spec["shutdownAfterJobFinishes"] is True and spec["submissionMode"] == "K8sJobMode"
        (worker,) = spec["rayClusterSpec"]["workerGroupSpecs"]
        assert worker["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1


def test_render_refuses_an_unknown_command_or_bad_config(render):
    values = render.load_values()
    unknown = values.model_copy(update={"training": [values.training[0].model_copy(update={"command": "dreambooth"})]})
    with pytest.raises(ValueError, match="dreambooth"):
        render.render_all(unknown)
    bad = values.model_copy(update={"training": [values.training[0].model_copy(update={"set": {"optim.stepz": 1}})]})
    with pytest.raises(ValueError):
        render.render_all(bad)


# --- the CRD schemas -------------------------------------------------------------------------


def test_manifest_validates_against_crd(crd_validator, manifest):
    assert _errors(crd_validator, manifest) == []


def test_rayjobs_validate_against_crd(rayjob_validator, rayjobs):
    for command, doc in rayjobs.items():
        assert _errors(rayjob_validator, doc) == [], command


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


def _gcs_ft_typo(doc):
    doc["spec"]["rayClusterConfig"]["gcsFaultToleranceOptions"]["redisAdress"] = "redis:6379"


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
        (_gcs_ft_typo, "spec/rayClusterConfig/gcsFaultToleranceOptions: Additional properties"),
    ],
)
def test_crd_validation_catches_errors(crd_validator, manifest, mutate, where):
    broken = copy.deepcopy(manifest)
    mutate(broken)
    errors = _errors(crd_validator, broken)
    assert errors, "the broken manifest validated"
    assert any(e.startswith(where) for e in errors), errors


def test_rayjob_crd_validation_catches_errors(rayjob_validator, rayjobs):
    broken = copy.deepcopy(rayjobs["srgan"])
    broken["spec"]["entrypoint"] = ["pixelfleet", "train"]  # a string in the CRD
    broken["spec"]["shutdownAfterJobFinish"] = True
    errors = _errors(rayjob_validator, broken)
    assert any(e.startswith("spec/entrypoint:") for e in errors) and any("shutdownAfterJobFinish" in e for e in errors), errors
