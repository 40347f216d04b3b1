"""Engine statistics -> Prometheus: the one place where metric definitions are computed.

Fed on the event loop with every `StepOutput` (its deltas and `IterationStats`), before the deltas reach
their requests. The unit of the per-request histograms is the *sequence*: a request with n choices is n
sequences, each observed once, as in vLLM, where n > 1 fans out into child requests.

    arrival (HTTP request in, before tokenization)      = RequestTimes.arrival
      | queue                                            first_scheduled
      |       | prefill                                  first_token
      |       |         | decode (ITL gaps, TPOT)        last_token
      |------------------- e2e --------------------------| finished
"""

from __future__ import annotations

from engine.outputs import IterationStats, SequenceDelta, StepOutput

from .metrics import ServerMetrics


class StatLogger:
    def __init__(self, metrics: ServerMetrics):
        self.metrics = metrics
        self._last_token_time: dict[tuple[str, int], float] = {}  # live sequences: time of their last token

    def record(self, out: StepOutput) -> None:
        self.record_iteration(out.stats)
        for delta in out.deltas:
            self.record_delta(delta)

    def record_iteration(self, s: IterationStats) -> None:
        m = self.metrics
        m.num_requests_running.set(s.num_running)
        m.num_requests_waiting.set(s.num_waiting)
        m.kv_cache_usage_perc.set(s.kv_cache_usage)
        if s.num_preemptions:
            m.num_preemptions.inc(s.num_preemptions)
        if s.prefix_cache_queries:
            m.prefix_cache_queries.inc(s.prefix_cache_queries)
        if s.prefix_cache_hits:
            m.prefix_cache_hits.inc(s.prefix_cache_hits)
        if s.cost is not None:
            self.record_cost(s)
        if s.spec_decode is not None and s.spec_decode.num_drafts:
            sd = s.spec_decode
            m.spec_decode_num_drafts.inc(sd.num_drafts)
            m.spec_decode_num_draft_tokens.inc(sd.num_draft_tokens)
            m.spec_decode_num_accepted_tokens.inc(sd.num_accepted_tokens)
            for pos, n in enumerate(sd.accepted_per_pos):
                m.spec_decode_accepted_at(pos).inc(n)

    def record_cost(self, s: IterationStats) -> None:
        """The step's model FLOPs and bytes (computed by the engine) by phase and step kind; utilization of
        this step against the declared peak."""
        m, c = self.metrics, s.cost
        kind = c.kind
        if kind == "idle":
            return
        for phase, flops, nbytes in (("prefill", c.prefill_flops, c.prefill_bytes), ("decode", c.decode_flops, c.decode_bytes)):
            if flops or nbytes:
                m.model_flops[phase].inc(flops)
                m.model_bytes[phase].inc(nbytes)
        m.steps[kind].inc()
        m.step_seconds[kind].inc(s.step_time_s)
        m.step_flops[kind].inc(c.flops)
        m.step_bytes[kind].inc(c.bytes)
        m.arithmetic_intensity.set(c.arithmetic_intensity)
        if m.peak is not None:
            mfu, mbu = m.peak.utilization(c, s.step_time_s)
            m.mfu.set(mfu)
            m.mbu.set(mbu)

    def engine_failed(self) -> None:
        """The engine failed: its requests have all failed, so nothing runs, waits or holds KV blocks."""
        m = self.metrics
        m.num_requests_running.set(0)
        m.num_requests_waiting.set(0)
        m.kv_cache_usage_perc.set(0)
        self._last_token_time.clear()

    def record_delta(self, d: SequenceDelta) -> None:
        m = self.metrics
        key = (d.request_id, d.index)
        num_new = len(d.new_token_ids)
        if num_new:
            m.generation_tokens.inc(num_new)
            last = self._last_token_time.get(key)
            if last is None:
                m.time_to_first_token.observe(d.token_time - d.times.arrival)
                m.prompt_tokens.inc(d.num_prompt_tokens)
            else:
                m.inter_token_latency.observe(d.token_time - last)
            for _ in range(num_new - 1):  # several tokens in one step arrive together
                m.inter_token_latency.observe(0.0)
            self._last_token_time[key] = d.token_time
        if d.finished:
            self._last_token_time.pop(key, None)
            self._record_finished(d)

    def _record_finished(self, d: SequenceDelta) -> None:
        m, t = self.metrics, d.times
        m.request_success[d.finish_reason].inc()
        finished = t.finished if t.finished is not None else d.token_time
        m.e2e_request_latency.observe(finished - t.arrival)
        if t.first_scheduled is not None:
            m.request_queue_time.observe(t.first_scheduled - t.arrival)
            if t.first_token is not None:
                m.request_prefill_time.observe(t.first_token - t.first_scheduled)
        if t.first_token is not None and t.last_token is not None:
            m.request_decode_time.observe(t.last_token - t.first_token)
            if d.num_output_tokens >= 2:
                m.time_per_output_token.observe((t.last_token - t.first_token) / (d.num_output_tokens - 1))
        m.request_prompt_tokens.observe(d.num_prompt_tokens)
        m.request_generation_tokens.observe(d.num_output_tokens)
