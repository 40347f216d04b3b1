"""`kvserve serve --replicas N`: start (or join) Ray, deploy the application, serve until SIGTERM/SIGINT.

    kvserve serve --replicas 2                              # a local Ray instance on 127.0.0.1
    kvserve serve --replicas 2 --min-replicas 1 --max-replicas 8
    kvserve serve --replicas 4 --ray-address 10.0.0.1:6379 --host 0.0.0.0   # an existing cluster

Without --ray-address a local Ray instance starts on the loopback address and stops with this process. With
it, the application is deployed onto that cluster and deleted again when this process stops; the cluster and
Serve's proxies stay. `serve.run` returns once every replica has loaded its model, then the "serving on"
line is printed. The first SIGTERM/SIGINT deletes the application: Serve stops routing to it, each replica
drains its in-flight requests for --shutdown-timeout seconds (the rest end with an error), and the process
exits 0; a second signal exits at once.
"""

from __future__ import annotations

import ipaddress
import logging
import signal
import socket
import threading

from engine.config import EngineArgs
from engine.tools.peaks import PeakArgs

from .config import ServerConfig
from .ray_config import RayServeConfig

logger = logging.getLogger(__name__)


def local_node_ip(host: str) -> str:
    """The address a local Ray instance uses: --host when it is a loopback IPv4 address, else 127.0.0.1.
    A local instance never needs to be reached from elsewhere, whatever the HTTP proxy binds."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return "127.0.0.1"
    return host if ip.version == 4 and ip.is_loopback else "127.0.0.1"


def free_port(host: str) -> int:
    """A port that was free on `host` a moment ago (Serve's proxy cannot report a port it chose itself)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def run(config: ServerConfig, ray_config: RayServeConfig, engine_args: EngineArgs,
        peak_args: PeakArgs | None = None) -> int:
    try:
        import ray
        from ray import serve
    except ImportError:
        print("kvserve serve: --replicas needs Ray Serve: pip install 'kvserve[ray]'", flush=True)
        return 2

    from .ray_app import APP_NAME, build_application, engine_gpus

    port = config.port or free_port(config.host)
    local = ray_config.ray_address is None
    if local:
        _start_local_ray(ray, local_node_ip(config.host))
        where = f"local Ray instance at {ray.get_runtime_context().gcs_address}"
    else:
        ray.init(address=ray_config.ray_address)
        where = f"Ray cluster at {ray_config.ray_address}"
    print(f"kvserve: {where}", flush=True)
    stop = _StopSignal()
    try:
        serve.start(http_options={"host": config.host, "port": port})
        num_gpus = engine_gpus(ray_config, engine_args, ray.cluster_resources().get("GPU", 0) > 0)
        app = build_application(ray_config, config, engine_args, num_gpus, peak_args)
        scale = (f"{ray_config.replicas} (autoscaling {ray_config.min_replicas}..{ray_config.max_replicas})"
                 if ray_config.autoscaling else str(ray_config.replicas))
        print(f"kvserve: deploying {scale} engine replica(s), {ray_config.replica_cpus:g} CPU / {num_gpus:g} GPU "
              f"each, router {ray_config.router}; each replica loads the model", flush=True)
        try:
            serve.run(app, name=APP_NAME, route_prefix="/")
        except RuntimeError as e:
            print(f"kvserve serve: the deployment failed: {e}", flush=True)
            return 1
        print(f"kvserve: serving on http://{_url_host(config.host)}:{port} (Ray Serve; GET /metrics/targets "
              "lists the replicas' metrics endpoints)", flush=True)
        stop.wait()
        print("kvserve: stopping: draining the replicas", flush=True)
        return 0
    finally:
        try:
            serve.delete(APP_NAME)
            if local:
                serve.shutdown()
        finally:
            ray.shutdown()


def _start_local_ray(ray, node_ip: str, attempts: int = 3) -> None:
    """ray.init of a local instance. Ray gives its raylet a fixed 30 s to register with the GCS, which a busy
    small machine can miss; another attempt then usually succeeds."""
    for attempt in range(1, attempts + 1):
        try:
            ray.init(_node_ip_address=node_ip, include_dashboard=False)
            return
        except Exception as e:  # noqa: BLE001 - Ray raises a bare Exception for this timeout
            ray.shutdown()
            if attempt == attempts or "timed out during startup" not in str(e):
                raise
            print(f"kvserve: the local Ray instance did not start in time ({e}); trying again", flush=True)


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


class _StopSignal:
    """The first SIGTERM/SIGINT ends `wait()`; a second one exits at once."""

    def __init__(self):
        self._event = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)

    def _on_signal(self, sig, frame) -> None:
        if self._event.is_set():
            raise SystemExit(1)
        logger.info("Received %s", signal.Signals(sig).name)
        self._event.set()

    def wait(self) -> None:
        while not self._event.wait(1.0):
            pass
