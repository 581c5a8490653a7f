"""Running the app on a local Ray (``pixelfleet up``) and reporting on it (``pixelfleet status``).

``up`` does in-process what ``serve run CONFIG`` does: it starts Ray, starts Serve with the
config's HTTP options, and submits the config; then it waits until the application runs.

A Ray started in-process by ``ray.init()`` is a whole cluster (GCS, raylet) that other processes
can join while this one lives, but Ray 2.60 gives them no way to find it: only ``ray start``
writes the address file that ``ray.init()`` reads (``/tmp/ray/ray_current_cluster``), and
``ray.init(address="auto")`` takes any raylet it finds among this machine's processes (another
user's test session as well). Ray also turns token authentication on for a cluster that
``ray.init()`` starts, and a process that joins by an explicit address must enable it itself.
So ``up`` announces its cluster in a small JSON file (:func:`cluster_file`): GCS address, the
process id that holds it, the authentication mode (never the token, which stays in Ray's token
file) and the dashboard URL; ``pixelfleet train srgan`` reads it to join (:func:`read_announcement`).
"""

from __future__ import annotations

import atexit
import getpass
import json
import logging
import os
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import FrameType

import ray
import yaml
from ray import serve
from ray.exceptions import GetTimeoutError, RayActorError
from ray.serve.schema import ApplicationStatus, ServeDeploySchema
from rich.console import Console

from pixelfleet.ray_private import print_worker_lines
from pixelfleet.serve import control
from pixelfleet.serve.access_log import console_line
from pixelfleet.serve.drain import drain
from pixelfleet.serve.skip_imports import SETUP_HOOK

DRAIN_TIMEOUT_S = 4.0
"""On SIGTERM or Ctrl-C, the longest wait for the requests in flight before Serve stops (the
port closes about 0.2 s after it)."""

SHUTDOWN_LIMIT_S = 60.0
"""On SIGTERM or Ctrl-C, the longest the drain and Ray's shutdown may take together before the
process exits anyway (code 1; the processes Ray started die with it): a last resort against a
hang. A normal stop takes ~8 s; ``serve.shutdown()`` may wait up to Serve's
``graceful_shutdown_timeout_s`` (20 s by default) for requests still running after the drain.
When Ray's own processes were stopped by the same signal (a SIGTERM to the whole process group,
as ``timeout`` and systemd send it), the drain finds the controller mute and the runner skips
``serve.shutdown()``, which would wait for it."""

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


def _exit_after(limit_s: float) -> threading.Timer:
    """A started daemon timer that ends the process with code 1 after ``limit_s`` seconds."""

    def exit_now() -> None:
        try:
            console.print(f"[bold red]Ray did not stop within {limit_s:g} s; exiting[/]")
            sys.stdout.flush()  # os._exit skips it: what was printed to a pipe or file would be lost
            sys.stderr.flush()
        finally:  # a closed pipe (`up | tee`, tee stopped by the same signal) must not keep us here
            os._exit(1)

    timer = threading.Timer(limit_s, exit_now)
    timer.daemon = True
    timer.start()
    return timer


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
    apps' state files record (``serve/variants.py``), so a restart serves them again, and with
    the variants taken out of service scaled to zero replicas again."""
    from pydantic import ValidationError

    from pixelfleet.serve.config import AppConfig, state_path
    from pixelfleet.serve.traffic import load_state
    from pixelfleet.deployments.spec import deployment_name
    from pixelfleet.serve.variants import scale_to_zero, variant_app_schema

    extra, removed = [], []
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
        removed.extend((app.name, family, variant) for family, names in (state.removed if state else {}).items() for variant in names)
    names = {a.name for a in schema.applications}
    schema = schema.model_copy(deep=True)
    schema.applications += [a for a in extra if a.name not in names]
    for app_name, family, variant in removed:  # variants taken out of service stay at zero replicas
        scale_to_zero(schema, app_name, deployment_name(family, variant))
    return schema


CLUSTER_FILE_ENV = "PIXELFLEET_CLUSTER_FILE"


def cluster_file() -> Path:
    """Where ``pixelfleet up`` announces its Ray cluster: ``$PIXELFLEET_CLUSTER_FILE``, else
    ``<temp dir>/pixelfleet-<user>/cluster.json`` (one per user, like Ray's own files)."""
    configured = os.environ.get(CLUSTER_FILE_ENV)
    if configured:
        return Path(configured)
    return Path(tempfile.gettempdir()) / f"pixelfleet-{getpass.getuser()}" / "cluster.json"


def announce_cluster(path: Path, dashboard_url: str | None = None) -> dict:
    """Write the Ray cluster this process started to ``path`` (JSON, replaced atomically) and
    remove it again when this process exits, if it still names this process.

    Fields: ``address`` (GCS host:port), ``pid``, ``auth_mode`` (``RAY_AUTH_MODE`` as Ray set it:
    ``token`` unless disabled), ``dashboard_url`` (as ``ray.init`` returned it; ``null`` without a
    dashboard), ``num_cpus``
    (the logical CPUs Ray announces). Returns what it wrote.

    Raises:
        OSError: the file cannot be written.
    """
    context = ray.get_runtime_context()
    record = {
        "address": context.gcs_address,
        "pid": os.getpid(),
        "auth_mode": os.environ.get("RAY_AUTH_MODE", "disabled"),
        "dashboard_url": dashboard_url or None,
        "num_cpus": ray.cluster_resources().get("CPU", 0.0),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}")
    partial.write_text(json.dumps(record, indent=2) + "\n")
    partial.replace(path)
    atexit.register(_withdraw_announcement, path, os.getpid())
    return record


def _withdraw_announcement(path: Path, pid: int) -> None:
    try:
        if json.loads(path.read_text()).get("pid") == pid:
            path.unlink()
    except (OSError, ValueError):
        pass


def read_announcement(path: Path | None = None) -> dict | None:
    """The cluster announced in ``path`` (default :func:`cluster_file`) by a ``pixelfleet up``
    that still runs, or None: no file, an unreadable one, or its process has ended."""
    path = path or cluster_file()
    try:
        record = json.loads(path.read_text())
        pid, address = int(record["pid"]), str(record["address"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass  # alive, someone else's
    return {**record, "pid": pid, "address": address, "file": str(path)}


OWN_CLUSTER = ("", "local")  # --address / RAY_ADDRESS values that mean: start a Ray of its own


def cluster_to_join(address: str | None) -> tuple[str | None, str]:
    """The Ray cluster that a command such as ``pixelfleet train srgan`` should join, and how it
    was chosen, in this order: ``address`` (its ``--address``), else ``RAY_ADDRESS`` if set
    (``auto``: Ray's own search of this machine), else the cluster that a running ``pixelfleet
    up`` announced (:func:`read_announcement`). None: start a Ray of its own (also for ``local``
    or empty). Joining the announced cluster, it enables the token authentication announced
    there in this process (:func:`pixelfleet.ray_private.enable_token_auth`) unless
    ``RAY_AUTH_MODE`` is set: Ray does that only for a cluster it finds itself.
    """
    from pixelfleet.ray_private import enable_token_auth

    if address is not None:
        target, source = address.strip(), "--address"
    elif "RAY_ADDRESS" in os.environ:
        target, source = os.environ["RAY_ADDRESS"].strip(), "RAY_ADDRESS"
    else:
        target, source = None, ""
    announced = read_announcement()
    if target is None and announced is not None:
        target, source = announced["address"], f"announced in {announced['file']} by pid {announced['pid']}"
    if target is None or target in OWN_CLUSTER:
        return None, "a Ray of its own"
    if announced is not None and target == announced["address"] and announced.get("auth_mode") == "token":
        if "RAY_AUTH_MODE" not in os.environ:
            enable_token_auth()
    return target, source


def start_local(
    schema: ServeDeploySchema,
    dashboard: bool = False,
    timeout_s: float = 900.0,
    num_cpus: int | None = None,
    announce: Path | None = None,
    verbose: bool = True,
) -> str:
    """Start a local Ray in this process, submit ``schema`` and wait until every app runs.

    ``num_cpus``: the logical CPUs Ray announces (default: the machine's); the replicas reserve
    theirs from these, and what they leave is free for other jobs, such as a training run that
    joins. ``announce``: a file to announce the cluster in (:func:`announce_cluster`), for
    ``pixelfleet train srgan`` to join; None announces nothing. ``verbose``: False keeps Ray's own
    log lines (driver INFO, Serve's replica and proxy logs, every worker's output) in Ray's log
    files (``/tmp/ray/session_latest/logs``) and prints only the access lines
    (``serve/access_log.py``); True prints everything as Ray does. All three apply only when this
    call starts Ray, and so does the setup hook that keeps pandas out of this job's worker
    processes (``serve/skip_imports.py``). A Python SIGTERM handler the caller installed stays in
    place (``ray.init`` replaces it with one that aborts the process).

    Returns the HTTP base URL. Raises what :func:`wait_until_running` raises, and OSError when
    the announcement cannot be written.
    """
    # Serve gives its HTTP proxy 5 s to report ready; a loaded 2-core laptop can take longer,
    # and the proxy is then killed and restarted in a loop. Local Ray inherits this environment.
    os.environ.setdefault("RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S", "30")
    if not ray.is_initialized():
        # The raylet prestarts a worker for the first driver, without the job's runtime env; our
        # job has one (the setup hook below), so no task could take it: 44 MiB idle for good.
        os.environ.setdefault("RAY_prestart_worker_first_driver", "0")
        if not verbose:  # Serve's replicas, proxy and controller log to their files only
            os.environ.setdefault("RAY_SERVE_LOG_TO_STDERR", "0")
            logging.getLogger("ray.serve").setLevel(logging.WARNING)
        caller_sigterm = signal.getsignal(signal.SIGTERM) if threading.current_thread() is threading.main_thread() else None
        context = ray.init(
            include_dashboard=dashboard, namespace=SERVE_NAMESPACE, log_to_driver=True, num_cpus=num_cpus,
            logging_level=logging.INFO if verbose else logging.WARNING,
            runtime_env={"worker_process_setup_hook": SETUP_HOOK},  # Serve's processes without pandas
        )
        if caller_sigterm is not None:  # ray.init's own handler aborts the process: a SIGTERM while the
            signal.signal(signal.SIGTERM, caller_sigterm)  # app deploys keeps the caller's (up's: a clean stop)
        if not verbose:
            print_worker_lines(console_line)
        if announce is not None:
            announce_cluster(announce, context.dashboard_url)
    schema = with_added_variants(schema)
    control.start_and_deploy(schema)
    for app in schema.applications:
        wait_until_running(app.name, timeout_s)
    return f"http://{schema.http_options.host}:{schema.http_options.port}"


def run_local(
    config: Path, host: str | None, port: int | None, dashboard: bool, timeout_s: float, num_cpus: int | None = None,
    insecure: bool = False, verbose: bool = False,
) -> int:
    """Start Ray (``num_cpus`` logical CPUs, default the machine's) and the app, announce the
    cluster for training runs to join (:func:`cluster_file`); block until interrupted. Returns
    the process exit code: 2, before Ray starts, for an app without auth on a host other than
    loopback unless ``insecure`` (``serve/auth.py``: :func:`startup_check`), or a bad auth config."""
    from pixelfleet.serve.auth import app_env, startup_check

    schema = load_serve_config(config, host, port)
    names = [app.name for app in schema.applications if app.import_path.endswith("serve.app:build_app")]
    apps = [(a.name, a.args, app_env(a.runtime_env)) for a in schema.applications if a.name in names]
    refusal, auth_line = startup_check(schema.http_options.host, apps, insecure)
    if refusal:
        Console(stderr=True, soft_wrap=True).print(f"[bold red]{refusal}[/]")
        return 2
    started = time.monotonic()
    serve_answers = True
    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        with console.status(f"starting Ray and deploying {', '.join(names)} from {config}"):
            url = start_local(schema, dashboard, timeout_s, num_cpus=num_cpus, announce=cluster_file(), verbose=verbose)
        signal.signal(signal.SIGTERM, _raise_interrupt)  # again: ray.init installs its own handler
        console.print(f"[bold green]pixelfleet is serving at {url}[/] (ready in {time.monotonic() - started:.1f} s; OpenAPI at {url}/docs)")
        console.print(auth_line)
        for name in names:
            _print_models(name)
        _print_free_cpus()
        console.print("One line per request: method, route, status, variant, ms, request id" + ("" if verbose else " (Ray's own logs: /tmp/ray/session_latest/logs; --verbose prints them)"))
        console.print("Press Ctrl-C to stop.")
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        _exit_after(SHUTDOWN_LIMIT_S)
        console.print(f"shutting down: the requests in flight finish first (at most {DRAIN_TIMEOUT_S:g} s)")
        try:
            drained, waited, held = drain(names, DRAIN_TIMEOUT_S)
            console.print(f"drained in {waited:.1f} s" if drained else f"{held} requests still in flight after {waited:.1f} s; stopping")
        except (GetTimeoutError, RayActorError) as err:  # the controller is gone or mute: so is Ray, as a rule
            serve_answers = False
            console.print(f"no drain: the Serve controller did not answer ({type(err).__name__}); stopping Ray")
        except Exception as err:  # Serve not (yet) running: nothing to drain
            console.print(f"no drain: {type(err).__name__}")
        return 0
    except (RuntimeError, TimeoutError) as err:
        console.print(f"[bold red]{err}[/]")
        return 1
    finally:
        if ray.is_initialized():
            if serve_answers:  # serve.shutdown() waits for a controller that no longer answers
                serve.shutdown()
            ray.shutdown()


def _print_free_cpus() -> None:
    total, free = ray.cluster_resources().get("CPU", 0.0), ray.available_resources().get("CPU", 0.0)
    console.print(
        f"Ray at {ray.get_runtime_context().gcs_address} announces {total:g} CPUs; the replicas reserve {total - free:g}, "
        f"{free:g} are free for `pixelfleet train srgan`, which joins this cluster (announced in {cluster_file()})"
    )


def _print_models(app_name: str) -> None:
    listing = serve.get_app_handle(app_name).list_models.remote().result(timeout_s=60)
    for family, entry in listing["families"].items():
        for variant, info in entry["variants"].items():
            weight = entry["traffic"]["weights"].get(variant, 0.0)
            share = f", traffic weight {weight:g}" if weight else ""
            summary = ", ".join(f"{k} {info[k]}" for k in ("scale", "engine", "weights", "device", "precision") if info.get(k) is not None)
            zero = "; scaled to zero: its first request starts a replica" if info.get("scaled_to_zero") else ""
            console.print(f"  {family}/{variant}{' (default)' if variant == entry['default'] else ''}: {summary}{share}{zero}")


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
