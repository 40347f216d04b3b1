"""The Ray Serve application of `kvserve serve --replicas N`: three deployments and how they are wired.

    Serve HTTP proxy (every node, --host/--port)
        -> KVServeIngress  (ingress; num_cpus 0)   forwards each request through a DeploymentHandle whose
                                                   request router picks the engine replica
        -> KVServeEngine   (N replicas, or autoscaled between bounds on ongoing requests; each with its
                            CPUs or num_gpus = tensor-parallel size; Serve restarts a dead one)
    ReplicaDirectory (1 replica; num_cpus 0): the live engine replicas' metrics endpoints, by heartbeat

`build_application` returns the bound application; `server.ray_cli` runs it.
"""

from __future__ import annotations

import asyncio
import logging

import ray.exceptions
from ray import serve
from ray.serve.config import RequestRouterConfig
from ray.serve.exceptions import RayServeException

from engine.config import EngineArgs
from engine.tools.peaks import PeakArgs

from .config import ServerConfig
from .ray_bridge import ForwardedRequest
from .ray_config import RayServeConfig
from .ray_directory import ReplicaDirectory, ReplicaEntry
from .ray_engine import EngineReplica
from .ray_ingress import ReplicaFailed, build_ingress_app

APP_NAME = "kvserve"
ENGINE_DEPLOYMENT = "KVServeEngine"
INGRESS_MAX_ONGOING = 8192  # the ingress only relays: it holds every stream of every replica at once
HEALTH_CHECK_PERIOD_S = 5.0
DIRECTORY_TIMEOUT_S = 5.0  # a handle call waits for a replica to exist; the directory may be restarting


@serve.ingress()
class Ingress:
    def __init__(self, engine, directory, server_config: ServerConfig):
        logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per replica scrape otherwise
        self._engine = engine.options(method_name="handle", stream=True)
        self._directory = directory
        self._config = server_config

    def __serve_build_asgi_app__(self):
        return build_ingress_app(self._forward, self._list_replicas, self._config)

    async def _forward(self, request: ForwardedRequest):
        """The replica's ASGI messages; ReplicaFailed if the replica dies or cannot be reached meanwhile."""
        response = self._engine.remote(request)
        done = False
        try:
            async for message in response:
                yield message
            done = True
        except (ray.exceptions.RayError, RayServeException) as e:
            # The replica's process died (ActorDiedError, a node lost), was killed by Ray's memory monitor
            # (OutOfMemoryError), or raised outside the app (RayTaskError): in every case this request is lost.
            raise ReplicaFailed(f"{type(e).__name__}: {str(e)[:300]}") from None
        finally:
            if not done:
                response.cancel()  # the client left, or the replica failed: stop the request there too

    async def _list_replicas(self) -> list[ReplicaEntry]:
        return await asyncio.wait_for(self._directory.live.remote(), DIRECTORY_TIMEOUT_S)


def engine_gpus(config: RayServeConfig, engine_args: EngineArgs, cluster_has_gpus: bool) -> float:
    """GPUs per engine replica: the flag, else the tensor-parallel size on a cluster with GPUs (unless the
    engine is told to run on the CPU), else 0."""
    if config.replica_gpus is not None:
        return config.replica_gpus
    if not cluster_has_gpus or str(engine_args.device).startswith("cpu"):
        return 0
    return float(getattr(engine_args, "tensor_parallel_size", 1) or 1)


def build_application(config: RayServeConfig, server_config: ServerConfig, engine_args: EngineArgs,
                      num_gpus: float, peak_args: PeakArgs | None = None) -> serve.Application:
    directory = serve.deployment(ReplicaDirectory, name="ReplicaDirectory", num_replicas=1,
                                 max_ongoing_requests=1024, ray_actor_options={"num_cpus": 0},
                                 logging_config={"enable_access_log": False}).bind()
    scale = ({"autoscaling_config": config.autoscaling_config()} if config.autoscaling
             else {"num_replicas": config.replicas})
    engine = serve.deployment(
        EngineReplica, name=ENGINE_DEPLOYMENT, **scale,
        max_ongoing_requests=config.max_ongoing_requests,
        ray_actor_options={"num_cpus": config.replica_cpus, "num_gpus": num_gpus},
        request_router_config=RequestRouterConfig(request_router_class=config.router_class,
                                                  request_router_kwargs=config.router_kwargs()),
        # On shutdown Serve stops routing to the replica, waits up to this long for its in-flight requests,
        # then kills it. The ingress lives a little longer (below), so it can still end the streams that were
        # cut with a replica_failed error event.
        graceful_shutdown_timeout_s=server_config.shutdown_timeout,
        health_check_period_s=HEALTH_CHECK_PERIOD_S,
    ).bind(server_config, engine_args, directory, config.replica_metrics_port, peak_args)
    ingress = serve.deployment(Ingress, name="KVServeIngress", num_replicas=config.ingress_replicas,
                               max_ongoing_requests=INGRESS_MAX_ONGOING, ray_actor_options={"num_cpus": 0},
                               graceful_shutdown_timeout_s=server_config.shutdown_timeout + 5.0)
    return ingress.bind(engine, directory, server_config)
