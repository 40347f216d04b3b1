"""Several replicas' Prometheus expositions as one, each sample labelled with the replica it came from.

The Ray Serve ingress answers `GET /metrics` with this merge of every live engine replica's own `/metrics`,
so one scrape (a load test, curl, a simple Prometheus job) sees the whole deployment: sums over the
`replica` label are deployment totals, and a filter on it is one replica. Families keep their names, types
and help texts; the text is parsed and re-rendered by prometheus_client, never edited by hand.
"""

from __future__ import annotations

from collections.abc import Mapping

from prometheus_client import generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

REPLICA_LABEL = "replica"


def merge_expositions(texts: Mapping[str, str], label: str = REPLICA_LABEL) -> bytes:
    """`{replica: exposition text}` -> one exposition in Prometheus' text format.

    ValueError (naming the replica) if a text cannot be parsed or already carries `label`.
    """
    families: dict[str, Metric] = {}
    for replica, text in texts.items():
        try:
            parsed = list(text_string_to_metric_families(text))
        except ValueError as e:
            raise ValueError(f"replica {replica}: unreadable metrics exposition ({e})") from None
        for family in parsed:
            merged = families.get(family.name)
            if merged is None:
                merged = families[family.name] = Metric(family.name, family.documentation, family.type, family.unit)
            for s in family.samples:
                if label in s.labels:
                    raise ValueError(f"replica {replica}: sample {s.name} already has a {label!r} label")
                merged.samples.append(Sample(s.name, {**s.labels, label: replica}, s.value, s.timestamp, s.exemplar))
    return generate_latest(_Families(list(families.values())))


class _Families:
    """A fixed list of families in the shape `generate_latest` collects from."""

    def __init__(self, families: list[Metric]):
        self._families = families

    def collect(self):
        return iter(self._families)
