"""The live engine replicas of a Ray Serve deployment and where their metrics are (for Prometheus).

Ray Serve routes requests but offers no way to address every replica, which is what metrics need. So each
engine replica sends a heartbeat with its `ReplicaEntry` every `HEARTBEAT_S` seconds to `ReplicaDirectory`, a
one-replica Serve deployment of its own; an entry not renewed within `TTL_S` is dropped, so a killed replica
leaves the list by itself, and a restarted directory is refilled within one heartbeat. The ingress reads the
list to merge the replicas' metrics and to answer Prometheus' HTTP service discovery.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

HEARTBEAT_S = 2.0
TTL_S = 3 * HEARTBEAT_S


@dataclass(frozen=True, slots=True)
class ReplicaEntry:
    replica: str  # Serve's unique replica id (the `replica` label, the x-kvserve-replica header)
    node: str  # the node's IP address
    metrics_url: str  # http://node:port/metrics, served by the replica itself
    pid: int  # the replica's process on its node

    @property
    def target(self) -> str:
        """host:port, as Prometheus wants a target."""
        return self.metrics_url.split("://", 1)[1].split("/", 1)[0]


class ReplicaDirectory:
    """Deployed with one replica (see `server.ray_app`); every method is cheap and never blocks."""

    def __init__(self, ttl_s: float = TTL_S):
        self._ttl_s = ttl_s
        self._entries: dict[str, tuple[ReplicaEntry, float]] = {}

    def heartbeat(self, entry: ReplicaEntry) -> None:
        self._entries[entry.replica] = (entry, time.monotonic())

    def remove(self, replica: str) -> None:
        self._entries.pop(replica, None)

    def live(self) -> list[ReplicaEntry]:
        """Entries renewed within the TTL, sorted by replica id; expired ones are forgotten."""
        now = time.monotonic()
        self._entries = {k: (e, t) for k, (e, t) in self._entries.items() if now - t <= self._ttl_s}
        return sorted((e for e, _ in self._entries.values()), key=lambda e: e.replica)
