"""The Dockerfile, read by the ``dockerfile`` package (BuildKit's own Go parser), since no image
can be built on this machine (no Docker daemon): its targets and stages, the non-root user, that
every COPY source exists in the repository and survives .dockerignore, that the project installs
with constraints.txt as the Makefile does, the offline environment, and the entry command."""

from __future__ import annotations

import fnmatch
import importlib.metadata
from pathlib import Path, PurePosixPath

import pytest

dockerfile = pytest.importorskip("dockerfile")

REPO = Path(__file__).resolve().parents[2]
TARGETS = ("cpu", "cuda")


@pytest.fixture(scope="module")
def commands():
    return dockerfile.parse_file(str(REPO / "Dockerfile"))


@pytest.fixture(scope="module")
def stages(commands) -> dict[str, dict]:
    """stage name -> {"base": FROM image or stage, "commands": [...]}, in file order."""
    out: dict[str, dict] = {}
    current = None
    for command in commands:
        if command.cmd == "FROM":
            image, *rest = command.value
            assert len(rest) == 2 and rest[0].upper() == "AS", f"every stage is named: {command.original}"
            current = out.setdefault(rest[1], {"base": image, "commands": []})
        elif current is not None:
            current["commands"].append(command)
    return out


def _chain(stages: dict, name: str) -> list[str]:
    """``name`` and the stages it is built on, the outermost last."""
    chain = [name]
    while stages[chain[-1]]["base"] in stages:
        chain.append(stages[chain[-1]]["base"])
    return chain


def _effective(stages: dict, name: str, instruction: str):
    """The last ``instruction`` (USER, ENTRYPOINT, ...) that target ``name`` inherits, or None."""
    for stage in _chain(stages, name):
        found = [c for c in stages[stage]["commands"] if c.cmd == instruction]
        if found:
            return found[-1]
    return None


def _env(stages: dict, name: str) -> dict[str, str]:
    env: dict[str, str] = {}
    for stage in reversed(_chain(stages, name)):
        for command in stages[stage]["commands"]:
            if command.cmd == "ENV":
                env.update(dict(zip(command.value[::2], command.value[1::2])))
    return env


def test_multi_stage_with_cpu_and_cuda_targets(stages):
    assert set(TARGETS) <= set(stages)
    assert len(stages) >= 4
    assert list(stages)[-1] == "cpu", "the default target (the last stage) is the CPU one"
    for target in TARGETS:
        assert _chain(stages, target)[-1] != target, "targets build on a shared runtime stage"
        (copy,) = [c for c in stages[target]["commands"] if c.cmd == "COPY"]
        builder = dict(f.split("=", 1) for f in copy.flags)["--from"]
        assert builder == f"build-{target}" and copy.value == ("/opt/venv", "/opt/venv")
        assert "build-base" in _chain(stages, builder)
    for name, stage in stages.items():
        for copy in (c for c in stage["commands"] if c.cmd == "COPY"):
            for flag in copy.flags:
                if flag.startswith("--from="):
                    assert flag.split("=", 1)[1] in list(stages)[: list(stages).index(name)], f"{name}: {copy.original}"


@pytest.mark.parametrize("target", TARGETS)
def test_target_runs_as_non_root(stages, target):
    user = _effective(stages, target, "USER")
    assert user is not None, "no USER: the image would run as root"
    name = user.value[0].split(":")[0]
    assert name not in ("0", "root"), user.original
    useradd = [c for s in _chain(stages, target) for c in stages[s]["commands"] if c.cmd == "RUN" and "useradd" in c.value[0]]
    assert useradd and f"--uid {name}" in useradd[0].value[0], "the user is created in the image"


@pytest.mark.parametrize("target", TARGETS)
def test_entry_command_is_pixelfleet_up(stages, target):
    entrypoint = _effective(stages, target, "ENTRYPOINT")
    assert entrypoint.json, "exec form: signals reach pixelfleet up (it stops cleanly on SIGTERM)"
    assert entrypoint.value[:2] == ("pixelfleet", "up")
    (script,) = importlib.metadata.entry_points(group="console_scripts", name="pixelfleet")
    assert script.value == "pixelfleet.serve.cli:main"


@pytest.mark.parametrize("target", TARGETS)
def test_offline_at_run_time(stages, target):
    env = _env(stages, target)
    assert env["HF_HUB_OFFLINE"] == "1"
    assert env["RAY_USAGE_STATS_ENABLED"] == "0"
    assert env["PIP_NO_INDEX"] == "1"
    runtime_runs = [c.value[0] for s in _chain(stages, target) if not s.startswith("build") for c in stages[s]["commands"] if c.cmd == "RUN"]
    assert not any("pip install" in run for run in runtime_runs), "the runtime stages install nothing from an index"


def test_project_installs_with_constraints_like_the_makefile(stages):
    assert "--constraint constraints.txt" in (REPO / "Makefile").read_text()
    for target in TARGETS:
        runs = [c.value[0] for c in stages[f"build-{target}"]["commands"] if c.cmd == "RUN"]
        installs = [r for r in runs if "pip install --constraint constraints.txt" in r]
        assert installs, f"build-{target} installs the project with constraints.txt"
    assert '".[gpu]"' in " ".join(c.value[0] for c in stages["build-cuda"]["commands"] if c.cmd == "RUN")


def _ignored(path: str, patterns: list[str]) -> bool:
    """Docker's .dockerignore rule, for the patterns used here: a path is left out when it or a
    folder above it matches a pattern (``**/`` at any depth); a later ``!pattern`` takes it back."""
    parts = PurePosixPath(path.strip("/")).parts
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for pattern in patterns:
        negate, glob = pattern.startswith("!"), pattern.lstrip("!").strip("/")
        anywhere, glob = glob.startswith("**/"), glob.removeprefix("**/")
        if any(fnmatch.fnmatchcase(p, glob) or (anywhere and fnmatch.fnmatchcase(p.rsplit("/", 1)[-1], glob)) for p in prefixes):
            ignored = not negate
    return ignored


def test_every_copy_source_exists_and_is_in_the_context(commands):
    patterns = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines() if line.strip() and not line.startswith("#")]
    assert ".venv" in patterns and ".git" in patterns
    sources = [src for c in commands if c.cmd == "COPY" and not any(f.startswith("--from=") for f in c.flags) for src in c.value[:-1]]
    assert sources
    for source in sources:
        assert (REPO / source).exists(), f"COPY {source}: not in the repository"
        assert not _ignored(source, patterns), f"COPY {source}: left out by .dockerignore"
    for needed in ("models/weights/srresnet-x4/model.safetensors", "serve/configs/local.yaml", "train/configs/srgan-x4.yaml"):
        assert not _ignored(needed, patterns), needed
    for secret in (".venv/bin/python", ".git/config", "runs/x/model.safetensors", "serve/__pycache__/app.cpython-311.pyc", ".env"):
        assert _ignored(secret, patterns), secret


def test_kuberay_manifests_name_the_cuda_image():
    version = importlib.metadata.version("pixelfleet")
    texts = [p.read_text() for p in (REPO / "kuberay").glob("ray*.yaml")]
    assert texts and all(f"image: pixelfleet:{version}-cuda" in text for text in texts)
