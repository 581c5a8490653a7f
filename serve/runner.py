"""Running the app on a local Ray (``pixelfleet up``) and reporting on it (``pixelfleet status``).

``up`` does in-process what ``serve run CONFIG`` does: it starts Ray, starts Serve with the
config's HTTP options, and submits the config; then it waits until the application runs.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from types import FrameType

import ray
import yaml
from ray import serve
from ray.serve.schema import ApplicationStatus, ServeDeploySchema
from rich.console import Console

from pixelfleet.serve import control

console = Console(soft_wrap=True)  # never break a URL or a path across lines
SERVE_NAMESPACE = "serve"


def load_serve_config(path: Path, host: str | None = None, port: int | None = None) -> ServeDeploySchema:
    """Read and validate a Serve config file, with the HTTP host/port overridden if given.

    Raises:
        FileNotFoundError: no such file.
        pydantic.ValidationError: not a valid Serve config.
    """
    schema = ServeDeploySchema.model_validate(yaml.safe_load(path.read_text()))
    if host is not None:
        schema.http_options.host = host
    if port is not None:
        schema.http_options.port = port
    return schema


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def wait_until_running(name: str, timeout_s: float) -> None:
    """Poll ``serve.status()`` until application ``name`` runs.

    Raises:
        RuntimeError: the deployment failed (the message says why).
        TimeoutError: still deploying after ``timeout_s`` seconds.
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        app = serve.status().applications.get(name)
        if app is not None and app.status == ApplicationStatus.RUNNING:
            return
        if app is not None and app.status in (ApplicationStatus.DEPLOY_FAILED, ApplicationStatus.UNHEALTHY):
            raise RuntimeError(f"application {name} is {app.status.value}: {app.message}")
        time.sleep(0.5)
    raise TimeoutError(f"application {name} was not running after {timeout_s:.0f} s")


def with_added_variants(schema: ServeDeploySchema) -> ServeDeploySchema:
    """``schema`` plus the applications of the variants added at run time that the pixelfleet
    apps' state files record (``serve/variants.py``), so a restart serves them again."""
    from pydantic import ValidationError

    from pixelfleet.serve.config import AppConfig, state_path
    from pixelfleet.serve.traffic import load_state
    from pixelfleet.serve.variants import variant_app_schema

    extra = []
    for app in schema.applications:
        if not app.import_path.endswith("serve.app:build_app"):
            continue
        try:
            config = AppConfig.model_validate(app.args)
            state = load_state(state_path(config))
        except (ValidationError, ValueError, OSError) as err:
            console.print(f"[yellow]state of {app.name} not restored: {err}[/]")
            continue
        for family, added in (state.added if state else {}).items():
            for variant, record in added.items():
                extra.append(variant_app_schema(app.name, config, family, variant, record.config, record.deployment))
    names = {a.name for a in schema.applications}
    schema = schema.model_copy(deep=True)
    schema.applications += [a for a in extra if a.name not in names]
    return schema


def start_local(schema: ServeDeploySchema, dashboard: bool = False, timeout_s: float = 900.0) -> str:
    """Start a local Ray in this process, submit ``schema`` and wait until every app runs.

    Returns the HTTP base URL. Raises what :func:`wait_until_running` raises.
    """
    # Serve gives its HTTP proxy 5 s to report ready; a loaded 2-core laptop can take longer,
    # and the proxy is then killed and restarted in a loop. Local Ray inherits this environment.
    os.environ.setdefault("RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S", "30")
    if not ray.is_initialized():
        ray.init(include_dashboard=dashboard, namespace=SERVE_NAMESPACE, log_to_driver=True)
    schema = with_added_variants(schema)
    control.start_and_deploy(schema)
    for app in schema.applications:
        wait_until_running(app.name, timeout_s)
    return f"http://{schema.http_options.host}:{schema.http_options.port}"


def run_local(config: Path, host: str | None, port: int | None, dashboard: bool, timeout_s: float, insecure: bool = False) -> int:
    """Start Ray and the app; block until interrupted. Returns the process exit code: 2, before
    Ray starts, for an app without auth on a host other than loopback unless ``insecure``
    (``serve/auth.py``: :func:`startup_check`), or a bad auth config."""
    from pixelfleet.serve.auth import app_env, startup_check

    schema = load_serve_config(config, host, port)
    names = [app.name for app in schema.applications if app.import_path.endswith("serve.app:build_app")]
    apps = [(a.name, a.args, app_env(a.runtime_env)) for a in schema.applications if a.name in names]
    refusal, auth_line = startup_check(schema.http_options.host, apps, insecure)
    if refusal:
        Console(stderr=True, soft_wrap=True).print(f"[bold red]{refusal}[/]")
        return 2
    started = time.monotonic()
    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        with console.status(f"starting Ray and deploying {', '.join(names)} from {config}"):
            url = start_local(schema, dashboard, timeout_s)
        signal.signal(signal.SIGTERM, _raise_interrupt)  # again: ray.init installs its own handler
        console.print(f"[bold green]pixelfleet is serving at {url}[/] (ready in {time.monotonic() - started:.1f} s; OpenAPI at {url}/docs)")
        console.print(auth_line)
        for name in names:
            _print_models(name)
        console.print("Press Ctrl-C to stop.")
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        console.print("shutting down")
        return 0
    except (RuntimeError, TimeoutError) as err:
        console.print(f"[bold red]{err}[/]")
        return 1
    finally:
        if ray.is_initialized():
            serve.shutdown()
            ray.shutdown()


def _print_models(app_name: str) -> None:
    listing = serve.get_app_handle(app_name).list_models.remote().result(timeout_s=60)
    for family, entry in listing["families"].items():
        for variant, info in entry["variants"].items():
            weight = entry["traffic"]["weights"].get(variant, 0.0)
            share = f", traffic weight {weight:g}" if weight else ""
            summary = ", ".join(f"{k} {info[k]}" for k in ("scale", "engine", "weights", "precision") if info.get(k) is not None)
            console.print(f"  {family}/{variant}{' (default)' if variant == entry['default'] else ''}: {summary}{share}")


def print_status(address: str) -> int:
    """Print applications, deployments and replica counts of the cluster at ``address``."""
    try:
        ray.init(address=address, namespace=SERVE_NAMESPACE, log_to_driver=False)
    except ConnectionError as err:
        console.print(f"[bold red]no Ray cluster at {address}: {err}[/]")
        return 1
    try:
        applications = serve.status().applications
        if not applications:
            console.print("no Serve application is deployed")
            return 1
        for name, app in applications.items():
            console.print(f"[bold]{name}[/]: {app.status.value} {app.message}")
            for deployment_name, deployment in app.deployments.items():
                replicas = ", ".join(f"{getattr(state, 'value', state)} {count}" for state, count in deployment.replica_states.items())
                console.print(f"  {deployment_name}: {deployment.status.value} ({replicas})")
        return 0
    finally:
        ray.shutdown()
