"""`ServerMetrics`: the server's Prometheus metrics on a private registry (no process-global state).

Names are vLLM's with the `kvserve:` prefix and vLLM's buckets, so dashboards and autoscalers built for vLLM
read them unchanged; every metric carries the `model_name` label. What each one means is defined in
docs/metrics.md and computed in one place, `stat_logger.StatLogger`.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from engine.roofline import Peak

PREFIX = "kvserve:"
FINISH_REASONS = ("stop", "length", "abort")
PHASES = ("prefill", "decode")  # whose work: each sequence's share of a step (engine.step_cost)
STEP_KINDS = ("prefill", "decode", "mixed")  # which steps: only prefill chunks, only decodes, or both

TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
                40.0, 80.0, 160.0, 640.0, 2560.0)
TOKEN_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                         20.0, 40.0, 80.0)
REQUEST_LATENCY_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0,
                           240.0, 480.0, 960.0, 1920.0, 7680.0)


def token_count_buckets(max_value: int) -> tuple[int, ...]:
    """1, 2, 5, 10, 20, 50, ... up to max_value (vLLM's 1-2-5 series; +Inf catches the rest)."""
    out, scale = [], 1
    while True:
        for m in (1, 2, 5):
            if m * scale > max_value:
                return tuple(out)
            out.append(m * scale)
        scale *= 10


class ServerMetrics:
    """The metric objects of one server, bound to its model name."""

    CONTENT_TYPE = CONTENT_TYPE_LATEST

    def __init__(self, model_name: str, max_model_len: int, peak: Peak | None = None):
        self.peak = peak
        self.registry = CollectorRegistry(auto_describe=True)
        self.model_name = model_name
        r, label = self.registry, ["model_name"]

        def gauge(name: str, doc: str) -> Gauge:
            return Gauge(PREFIX + name, doc, label, registry=r).labels(model_name)

        def counter(name: str, doc: str) -> Counter:
            return Counter(PREFIX + name, doc, label, registry=r).labels(model_name)

        def histogram(name: str, doc: str, buckets) -> Histogram:
            return Histogram(PREFIX + name, doc, label, buckets=buckets, registry=r).labels(model_name)

        self.num_requests_running = gauge("num_requests_running", "Sequences in the engine's running batch.")
        self.num_requests_waiting = gauge("num_requests_waiting", "Sequences waiting to be scheduled.")
        self.kv_cache_usage_perc = gauge("kv_cache_usage_perc", "Fraction of KV-cache blocks in use (0..1).")

        self.prompt_tokens = counter("prompt_tokens_total", "Prompt tokens of sequences that produced a first token.")
        self.generation_tokens = counter("generation_tokens_total", "Generated tokens.")
        self.num_preemptions = counter("num_preemptions_total", "Sequences preempted (recomputed later).")
        self.prefix_cache_queries = counter("prefix_cache_queries_total", "Prompt tokens looked up in the prefix cache.")
        self.prefix_cache_hits = counter("prefix_cache_hits_total", "Prompt tokens found in the prefix cache.")
        # speculative decoding (vLLM's names); zero when it is off
        self.spec_decode_num_drafts = counter("spec_decode_num_drafts_total", "Sequences sent draft tokens.")
        self.spec_decode_num_draft_tokens = counter("spec_decode_num_draft_tokens_total", "Draft tokens proposed.")
        self.spec_decode_num_accepted_tokens = counter("spec_decode_num_accepted_tokens_total",
                                                       "Draft tokens verified and kept.")
        self._accepted_per_pos = Counter(PREFIX + "spec_decode_num_accepted_tokens_per_pos_total",
                                         "Draft tokens kept, by position in the draft (0-based).",
                                         ["model_name", "position"], registry=r)
        success = Counter(PREFIX + "request_success_total", "Finished sequences, by finish reason.",
                          ["model_name", "finished_reason"], registry=r)
        self.request_success = {reason: success.labels(model_name, reason) for reason in FINISH_REASONS}

        self.time_to_first_token = histogram("time_to_first_token_seconds",
                                             "Arrival at the server to the first token.", TTFT_BUCKETS)
        self.inter_token_latency = histogram("inter_token_latency_seconds",
                                             "Every gap between consecutive tokens of a sequence.",
                                             TOKEN_LATENCY_BUCKETS)
        self.time_per_output_token = histogram("time_per_output_token_seconds",
                                               "Decode time / (output tokens - 1), per sequence with >= 2 tokens.",
                                               TOKEN_LATENCY_BUCKETS)
        self.e2e_request_latency = histogram("e2e_request_latency_seconds", "Arrival to finish.",
                                             REQUEST_LATENCY_BUCKETS)
        self.request_queue_time = histogram("request_queue_time_seconds", "Arrival to first scheduled.",
                                            REQUEST_LATENCY_BUCKETS)
        self.request_prefill_time = histogram("request_prefill_time_seconds", "First scheduled to first token.",
                                              REQUEST_LATENCY_BUCKETS)
        self.request_decode_time = histogram("request_decode_time_seconds", "First token to last token.",
                                             REQUEST_LATENCY_BUCKETS)
        token_buckets = token_count_buckets(max_model_len)
        self.request_prompt_tokens = histogram("request_prompt_tokens", "Prompt tokens per finished sequence.",
                                               token_buckets)
        self.request_generation_tokens = histogram("request_generation_tokens",
                                                   "Generated tokens per finished sequence.", token_buckets)

        self._add_roofline_metrics(r, model_name)

    def spec_decode_accepted_at(self, position: int) -> Counter:
        """The per-position acceptance counter (its series exists once a step has speculated that deep)."""
        return self._accepted_per_pos.labels(self.model_name, str(position))

    def _add_roofline_metrics(self, r: CollectorRegistry, model_name: str) -> None:
        """Model FLOPs and bytes (engine.roofline's formulas, the ones `kvserve plan` prints) and utilization."""

        def labelled(cls, name: str, doc: str, label: str, values: tuple[str, ...]) -> dict:
            metric = cls(PREFIX + name, doc, ["model_name", label], registry=r)
            return {v: metric.labels(model_name, v) for v in values}

        self.model_flops = labelled(Counter, "model_flops_total", "Model FLOPs computed, by phase of the work.",
                                    "phase", PHASES)
        self.model_bytes = labelled(Counter, "model_bytes_total", "Minimum bytes moved (weights, KV read and "
                                    "written), by phase of the work.", "phase", PHASES)
        self.steps = labelled(Counter, "engine_steps_total", "Engine steps, by kind.", "kind", STEP_KINDS)
        self.step_seconds = labelled(Counter, "engine_step_seconds_total", "Wall time of engine steps, by kind.",
                                     "kind", STEP_KINDS)
        self.step_flops = labelled(Counter, "engine_step_flops_total", "Model FLOPs of engine steps, by step kind.",
                                   "kind", STEP_KINDS)
        self.step_bytes = labelled(Counter, "engine_step_bytes_total", "Minimum bytes moved by engine steps, by "
                                   "step kind.", "kind", STEP_KINDS)

        def gauge(name: str, doc: str) -> Gauge:
            return Gauge(PREFIX + name, doc, ["model_name"], registry=r).labels(model_name)

        nan = float("nan")
        self.peak_flops = gauge("peak_flops_per_second", "Declared peak FLOP/s that utilization is measured against.")
        self.peak_bandwidth = gauge("peak_memory_bandwidth_bytes_per_second",
                                    "Declared peak memory bytes/s that utilization is measured against.")
        self.peak_flops.set(self.peak.flops if self.peak else nan)
        self.peak_bandwidth.set(self.peak.bandwidth if self.peak else nan)
        self.mfu = gauge("model_flops_utilization", "Last step: model FLOPs / step time / peak FLOP/s.")
        self.mbu = gauge("memory_bandwidth_utilization", "Last step: bytes moved / step time / peak bytes/s.")
        self.arithmetic_intensity = gauge("step_arithmetic_intensity", "Last step: model FLOPs per byte moved.")
        for g in (self.mfu, self.mbu, self.arithmetic_intensity):
            g.set(nan)

    def describe_memory(self, block_size: int, num_blocks: int, cache_dtype: str, quantization: str,
                        weight_bytes: int) -> None:
        """What the model loaded as, constant from then on: the KV cache's layout (vLLM's `cache_config_info`,
        value 1, the facts in its labels) and the weights' bytes in their storage format."""
        info = Gauge(PREFIX + "cache_config_info", "The KV cache's configuration, in the labels (value 1).",
                     ["model_name", "block_size", "cache_dtype", "num_gpu_blocks"], registry=self.registry)
        info.labels(self.model_name, str(block_size), cache_dtype, str(num_blocks)).set(1)
        weights = Gauge(PREFIX + "model_weight_bytes", "Bytes of the loaded weights (under tensor parallelism, "
                        "rank 0's shard), by weight format.", ["model_name", "quantization"], registry=self.registry)
        weights.labels(self.model_name, quantization).set(weight_bytes)

    def render(self) -> bytes:
        return generate_latest(_WithoutCreated(self.registry))


class _WithoutCreated:
    """The registry minus prometheus_client's `*_created` timestamp series, which vLLM does not export
    either (turning them off globally would touch process-wide state)."""

    def __init__(self, registry: CollectorRegistry):
        self.registry = registry

    def collect(self):
        for metric in self.registry.collect():
            metric.samples = [s for s in metric.samples if not s.name.endswith("_created")]
            yield metric
