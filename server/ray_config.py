"""`RayServeConfig`: how `kvserve serve --replicas N` lays kvserve out on Ray Serve (flags, validation).

Importing this module imports no Ray, so `kvserve serve --help` and the single server stay light; the
deployment itself is built in `server.ray_app`.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass

# Ray's prefix-cache-affinity router. Its public alias, ray.serve.llm.request_router.PrefixCacheAffinityRouter,
# is a plain subclass of this class, but importing ray.serve.llm pulls in ray[llm]'s dependencies (pyarrow and
# more), which a kvserve replica does not need; the implementation module imports only Ray Serve.
PREFIX_AFFINITY_ROUTER = ("ray.llm._internal.serve.routing_policies.prefix_aware.prefix_aware_router."
                          "PrefixCacheAffinityRouter")
POW2_ROUTER = "ray.serve._private.request_router:PowerOfTwoChoicesRequestRouter"  # Serve's default
ROUTERS = {"prefix-affinity": PREFIX_AFFINITY_ROUTER, "pow2": POW2_ROUTER}
DEFAULT_ROUTER = "prefix-affinity"  # measured against pow2 in docs/benchmarks.md ("Replicas on Ray Serve")
# Ray's own default never falls back to load: every request whose prefix matches (and every new prefix, sent to
# the replica holding the fewest characters) may pile onto one replica. Fall back to power of two choices once
# the replicas' ongoing requests differ by more than this (the value Serve's documentation uses).
DEFAULT_PREFIX_IMBALANCE = 20.0


_FLAG_DEFAULTS = {"min_replicas": None, "max_replicas": None, "target_ongoing_requests": 32.0,
                  "max_ongoing_requests": 256, "router": DEFAULT_ROUTER, "prefix_imbalance_threshold": None,
                  "ray_address": None, "replica_cpus": 1.0,
                  "replica_gpus": None, "replica_metrics_port": 0, "ingress_replicas": 1}


@dataclass(frozen=True)
class RayServeConfig:
    replicas: int = 1  # fixed size, or the initial size when autoscaling
    min_replicas: int | None = None  # both bounds set: autoscale between them
    max_replicas: int | None = None
    target_ongoing_requests: float = 32.0  # per replica; Serve adds replicas above it, removes below
    max_ongoing_requests: int = 256  # per replica; beyond it requests queue in the router
    router: str = DEFAULT_ROUTER
    prefix_imbalance_threshold: float | None = None  # prefix-affinity: pow2 beyond this gap (None: the default)
    ray_address: str | None = None  # None: start a local Ray instance
    replica_cpus: float = 1.0
    replica_gpus: float | None = None  # None: the tensor-parallel size on a cluster with GPUs, else 0
    replica_metrics_port: int = 0  # each replica's own /metrics: this port or the next free one (0 = any)
    ingress_replicas: int = 1

    def __post_init__(self) -> None:
        if self.replicas < 1:
            raise ValueError(f"replicas: must be >= 1, got {self.replicas}")
        if (self.min_replicas is None) != (self.max_replicas is None):
            raise ValueError("min_replicas / max_replicas: give both bounds to autoscale, or neither")
        if self.autoscaling:
            if not 0 <= self.min_replicas <= self.max_replicas or self.max_replicas < 1:
                raise ValueError(f"min_replicas / max_replicas: need 0 <= min <= max and max >= 1, "
                                 f"got {self.min_replicas} and {self.max_replicas}")
            if not self.min_replicas <= self.replicas <= self.max_replicas:
                raise ValueError(f"replicas: the initial size {self.replicas} must lie within "
                                 f"[{self.min_replicas}, {self.max_replicas}]")
        if not (self.target_ongoing_requests > 0 and math.isfinite(self.target_ongoing_requests)):
            raise ValueError(f"target_ongoing_requests: must be a finite number > 0, got {self.target_ongoing_requests}")
        if self.max_ongoing_requests < 1:
            raise ValueError(f"max_ongoing_requests: must be >= 1, got {self.max_ongoing_requests}")
        if self.router not in ROUTERS:
            raise ValueError(f"router: must be one of {', '.join(ROUTERS)}, got {self.router!r}")
        if self.prefix_imbalance_threshold is not None:
            if self.router != "prefix-affinity":
                raise ValueError("prefix_imbalance_threshold: only applies to --router prefix-affinity")
            if not self.prefix_imbalance_threshold >= 0:
                raise ValueError(f"prefix_imbalance_threshold: must be >= 0, got {self.prefix_imbalance_threshold}")
        if self.replica_cpus < 0:
            raise ValueError(f"replica_cpus: must be >= 0, got {self.replica_cpus}")
        if self.replica_gpus is not None and self.replica_gpus < 0:
            raise ValueError(f"replica_gpus: must be >= 0, got {self.replica_gpus}")
        if not 0 <= self.replica_metrics_port <= 65535:
            raise ValueError(f"replica_metrics_port: must be in [0, 65535], got {self.replica_metrics_port}")
        if self.ingress_replicas < 1:
            raise ValueError(f"ingress_replicas: must be >= 1, got {self.ingress_replicas}")

    @property
    def autoscaling(self) -> bool:
        return self.min_replicas is not None

    @property
    def router_class(self) -> str:
        return ROUTERS[self.router]

    def router_kwargs(self) -> dict:
        """Arguments of the router's `initialize_state`. Two differ from Ray's defaults: the imbalance threshold
        (see DEFAULT_PREFIX_IMBALANCE), and eviction: Ray's router keeps every prompt it routed in its prefix
        tree unless told to evict, which a long-running server cannot afford (the tree stays < ~400k chars)."""
        if self.router != "prefix-affinity":
            return {}
        threshold = self.prefix_imbalance_threshold
        return {"do_eviction": True,
                "imbalanced_threshold": DEFAULT_PREFIX_IMBALANCE if threshold is None else threshold}

    def autoscaling_config(self) -> dict | None:
        """Serve's autoscaling config; the signal is ongoing requests (running + queued) per replica."""
        if not self.autoscaling:
            return None
        return {"min_replicas": self.min_replicas, "max_replicas": self.max_replicas,
                "initial_replicas": self.replicas, "target_ongoing_requests": self.target_ongoing_requests}

    @staticmethod
    def add_cli_args(parser: argparse.ArgumentParser) -> None:
        g = parser.add_argument_group("replicas on Ray Serve (with --replicas; needs the `ray` extra)")
        g.add_argument("--replicas", type=int, default=None,
                       help="run N engine replicas as a Ray Serve application behind Serve's HTTP proxy on "
                            "--host/--port (the initial size when autoscaling)")
        g.add_argument("--min-replicas", type=int, default=None, help="autoscale: fewest replicas (with --max-replicas)")
        g.add_argument("--max-replicas", type=int, default=None, help="autoscale: most replicas (with --min-replicas)")
        g.add_argument("--target-ongoing-requests", type=float, default=32.0,
                       help="autoscale: ongoing (running + queued) requests per replica to aim for (default 32)")
        g.add_argument("--max-ongoing-requests", type=int, default=256,
                       help="most requests one replica holds at once; more wait in the router (default 256)")
        g.add_argument("--router", choices=sorted(ROUTERS), default=DEFAULT_ROUTER,
                       help=f"request router: Ray's prefix-cache affinity or Serve's power of two choices "
                            f"(default {DEFAULT_ROUTER})")
        g.add_argument("--prefix-imbalance-threshold", type=float, default=None,
                       help="prefix-affinity router: when the replicas' ongoing requests differ by more than this, "
                            f"route by load (power of two choices) instead of by prefix (default "
                            f"{DEFAULT_PREFIX_IMBALANCE:g}; inf = Ray's default, never)")
        g.add_argument("--ray-address", default=None,
                       help="join this Ray cluster (e.g. 10.0.0.1:6379) instead of starting a local instance")
        g.add_argument("--replica-cpus", type=float, default=1.0, help="CPUs reserved per replica (default 1)")
        g.add_argument("--replica-gpus", type=float, default=None,
                       help="GPUs per replica (default: the tensor-parallel size where the cluster has GPUs, else 0)")
        g.add_argument("--replica-metrics-port", type=int, default=0,
                       help="each replica serves its own /metrics on this port or the next free one (0 = any)")
        g.add_argument("--ingress-replicas", type=int, default=1,
                       help="replicas of the light ingress deployment that forwards requests (default 1)")

    @classmethod
    def from_cli_args(cls, args: argparse.Namespace) -> "RayServeConfig | None":
        """None without --replicas (the single server); then a Ray flag given anyway is an error."""
        if args.replicas is None:
            given = [f"--{k.replace('_', '-')}" for k, default in _FLAG_DEFAULTS.items() if getattr(args, k) != default]
            if given:
                raise ValueError(f"{given[0]}: only applies to replicas on Ray Serve; add --replicas N")
            return None
        return cls(replicas=args.replicas, min_replicas=args.min_replicas, max_replicas=args.max_replicas,
                   target_ongoing_requests=args.target_ongoing_requests,
                   max_ongoing_requests=args.max_ongoing_requests, router=args.router,
                   prefix_imbalance_threshold=args.prefix_imbalance_threshold,
                   ray_address=args.ray_address, replica_cpus=args.replica_cpus, replica_gpus=args.replica_gpus,
                   replica_metrics_port=args.replica_metrics_port, ingress_replicas=args.ingress_replicas)
