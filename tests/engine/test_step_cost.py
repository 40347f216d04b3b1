"""Per-step model FLOPs and bytes: the shared formulas (engine/roofline.py) by hand, and the engine's
`IterationStats.cost` for known steps of a real tiny model, by hand."""

from __future__ import annotations

import pytest

from engine.config import EngineArgs
from engine.engine import LLMEngine
from engine.roofline import GPU_PRESETS, ModelCost, Peak, Share, step_cost
from engine.sampling_params import SamplingParams

# The tiny llama of tests/engine/conftest.py: vocab 512, hidden 64, MLP 128, 2 layers, 4 heads, 2 KV heads,
# head_dim 16, untied lm_head, fp32.
EMBEDDING = 512 * 64
DENSE = 2 * (64 * 64 + 2 * 64 * 32 + 64 * 64) + 2 * 3 * 64 * 128 + (2 * 2 * 64 + 64)  # attn + mlp + norms
PARAMS = DENSE + 2 * EMBEDDING  # + embedding + lm_head
WEIGHT_BYTES = PARAMS * 4
KV_TOKEN = 2 * 2 * 2 * 16 * 4  # K and V x layers x kv_heads x head_dim x fp32
ATTN_PAIR = 4 * 2 * 4 * 16  # 4 x layers x heads x head_dim
LOGITS = 2 * 512 * 64


def test_the_tiny_models_numbers_by_hand():
    assert (DENSE, PARAMS, WEIGHT_BYTES, KV_TOKEN) == (74_048, 139_584, 558_336, 512)


# ---- the formulas ------------------------------------------------------------------------------------------
TOY = ModelCost(num_layers=2, num_heads=4, head_dim=8, hidden_size=32, vocab_size=100, dense_params=1000,
                weight_bytes=4000, kv_bytes_per_token=64)


def test_a_decode_attends_over_its_whole_context_and_moves_it_once():
    c = step_cost(TOY, [Share(start=9, num_new=1, sampled=True, decode=True)])
    assert c.attention_flops == 4 * 2 * 4 * 8 * 10  # 10 keys: 9 cached + itself
    assert c.flops == 2 * 1000 + 4 * 2 * 4 * 8 * 10 + 2 * 100 * 32
    assert (c.kv_read_bytes, c.kv_written_bytes, c.bytes) == (9 * 64, 64, 4000 + 10 * 64)
    assert c.kind == "decode" and c.decode_tokens == 1 and c.prefill_flops == 0


def test_a_prefill_chunk_is_causal_within_itself_and_reads_the_cached_prefix():
    c = step_cost(TOY, [Share(start=16, num_new=4, sampled=False, decode=False)])
    pairs = 4 * 16 + (1 + 2 + 3 + 4)
    assert c.attention_flops == 4 * 2 * 4 * 8 * pairs
    assert c.logits_flops == 0  # the chunk does not reach the end of the prompt: no row is sampled
    assert (c.kv_read_bytes, c.kv_written_bytes) == (16 * 64, 4 * 64)
    assert c.kind == "prefill"


def test_a_mixed_step_reads_the_weights_once_and_splits_them_by_tokens():
    c = step_cost(TOY, [Share(0, 3, True, False), Share(5, 1, True, True)])
    assert c.kind == "mixed" and c.weight_bytes == 4000
    assert c.prefill_bytes == pytest.approx(3 * 64 + 4000 * 3 / 4)
    assert c.decode_bytes == pytest.approx(6 * 64 + 4000 * 1 / 4)
    assert c.bytes == pytest.approx(4000 + 9 * 64)
    assert c.prefill_flops == 2 * 1000 * 3 + 4 * 2 * 4 * 8 * 6 + 2 * 100 * 32
    assert c.decode_flops == 2 * 1000 + 4 * 2 * 4 * 8 * 6 + 2 * 100 * 32


def test_count_multiplies_a_share_and_no_tokens_is_idle():
    one = step_cost(TOY, [Share(99, 1, True, True)])
    many = step_cost(TOY, [Share(99, 1, True, True, count=8)])
    assert many.flops == 8 * one.flops and many.bytes == 4000 + 8 * (one.bytes - 4000)
    idle = step_cost(TOY, [])
    assert idle.kind == "idle" and idle.bytes == 0 and idle.arithmetic_intensity == 0


def test_a_window_layer_sees_at_most_its_window_and_reads_only_what_the_window_still_covers():
    # layer 0 full, layer 1 slides over 4 keys; 32 bytes of K/V per layer and token
    hybrid = ModelCost(num_layers=2, num_heads=4, head_dim=8, hidden_size=32, vocab_size=100, dense_params=1000,
                       weight_bytes=4000, kv_bytes_per_token=64, layer_windows=(None, 4))
    per_layer_pair = 4 * 4 * 8
    decode = step_cost(hybrid, [Share(start=9, num_new=1, sampled=True, decode=True)])
    assert decode.attention_flops == per_layer_pair * (10 + 4)  # all 10 keys, then the last 4
    assert decode.kv_read_bytes == (9 + 3) * 32  # the window layer reads its 3 cached keys, the query's own is new
    chunk = step_cost(hybrid, [Share(start=2, num_new=4, sampled=False, decode=False)])
    # queries at positions 2..5 see 3, 4, 5, 6 keys fully, and 3, 4, 4, 4 in the window layer
    assert chunk.attention_flops == per_layer_pair * ((3 + 4 + 5 + 6) + (3 + 4 + 4 + 4))
    assert chunk.kv_read_bytes == (2 + 2) * 32 and chunk.kv_written_bytes == 4 * 64


def test_a_moe_step_reads_the_shared_weights_and_the_experts_its_tokens_touch():
    # 3000 of the 4000 weight bytes are 8 experts, 2 chosen per token
    moe = ModelCost(num_layers=2, num_heads=4, head_dim=8, hidden_size=32, vocab_size=100, dense_params=1000,
                    weight_bytes=4000, kv_bytes_per_token=64, expert_weight_bytes=3000, num_experts=8,
                    experts_per_token=2)
    one = step_cost(moe, [Share(start=9, num_new=1, sampled=True, decode=True)])
    assert one.weight_bytes == pytest.approx(1000 + 3000 * 2 / 8)
    three = step_cost(moe, [Share(start=9, num_new=1, sampled=True, decode=True, count=3)])
    assert three.weight_bytes == pytest.approx(1000 + 3000 * (1 - (6 / 8) ** 3))
    assert step_cost(moe, [Share(0, 4096, True, False)]).weight_bytes == pytest.approx(4000)
    assert three.dense_flops == 3 * one.dense_flops  # FLOPs follow the active parameters (dense_params)


def test_the_roofline_of_a_peak():
    p = GPU_PRESETS["H100"].peak
    assert p.ridge == pytest.approx(989e12 / 3.35e12)
    assert p.attainable(1.0) == 3.35e12 and p.attainable(1e4) == 989e12
    c = step_cost(TOY, [Share(9, 1, True, True)])
    assert Peak("toy", 1e6, 1e4).utilization(c, 0.5) == (c.flops / 0.5 / 1e6, c.bytes / 0.5 / 1e4)
    with pytest.raises(ValueError, match="peak"):
        Peak("bad", 0, 1)


# ---- the engine's steps ---------------------------------------------------------------------------------
@pytest.fixture
def engine(tiny_model_dir):
    def build(**kw):
        return LLMEngine.from_args(EngineArgs(model=tiny_model_dir("llama"), num_kv_blocks=64, **kw))
    return build


def test_the_engine_counts_a_known_prefill_then_decode_step_by_hand(engine):
    e = engine()
    assert e.cost_model.weight_bytes == WEIGHT_BYTES and e.cost_model.kv_bytes_per_token == KV_TOKEN
    params = SamplingParams(temperature=0, max_tokens=3, ignore_eos=True)
    e.add_request("a", list(range(3, 13)), params)  # 10 tokens
    e.add_request("b", list(range(3, 8)), params)  # 5 tokens

    first = e.step().stats.cost
    assert first.kind == "prefill" and (first.prefill_tokens, first.decode_tokens) == (15, 0)
    assert first.flops == 2 * DENSE * 15 + ATTN_PAIR * (55 + 15) + 2 * LOGITS
    assert first.bytes == WEIGHT_BYTES + 15 * KV_TOKEN

    second = e.step().stats.cost
    assert second.kind == "decode" and (second.prefill_tokens, second.decode_tokens) == (0, 2)
    assert second.flops == 2 * DENSE * 2 + ATTN_PAIR * (11 + 6) + 2 * LOGITS
    assert second.bytes == WEIGHT_BYTES + (10 + 5) * KV_TOKEN + 2 * KV_TOKEN


def test_the_engine_costs_a_moe_and_a_window_model_by_their_active_params_and_windows(tmp_path):
    from engine.models.tiny import save_tiny_model
    from engine.roofline import count_params

    mixtral = LLMEngine.from_args(EngineArgs(model=str(save_tiny_model(tmp_path / "m", "mixtral")), num_kv_blocks=32))
    b = count_params(mixtral.config.model.hf_config)
    assert b.experts and mixtral.cost_model.dense_params == b.total - b.embedding - b.lm_head - b.experts // 2
    assert mixtral.cost_model.expert_weight_bytes == b.experts * 4 and mixtral.cost_model.experts_per_token == 2
    gemma = LLMEngine.from_args(EngineArgs(model=str(save_tiny_model(tmp_path / "g", "gemma2")), num_kv_blocks=32))
    assert gemma.cost_model.layer_windows == gemma.config.model.layer_windows == (16, None, 16)
    assert gemma.cost_model.kv_bytes_per_token == 2 * 3 * gemma.config.model.num_kv_heads * gemma.config.model.head_dim * 4


def test_chunked_prefill_makes_mixed_steps_and_its_last_one_token_chunk_is_still_prefill(engine):
    e = engine(max_num_batched_tokens=8)
    params = SamplingParams(temperature=0, max_tokens=4, ignore_eos=True)
    e.add_request("a", [5, 6, 7, 8], params)
    e.add_request("b", list(range(10, 22)), params)  # 12 tokens: chunks of 4, 7 and 1
    costs = [e.step().stats.cost for _ in range(3)]
    assert [c.kind for c in costs] == ["prefill", "mixed", "mixed"]
    assert [(c.prefill_tokens, c.decode_tokens) for c in costs] == [(8, 0), (7, 1), (1, 1)]
    last = costs[2]  # a decodes at context 6 (start 5); b computes token 11 after 11 cached, and samples
    assert last.decode_flops == 2 * DENSE + ATTN_PAIR * 6 + LOGITS
    assert last.prefill_flops == 2 * DENSE + ATTN_PAIR * 12 + LOGITS
    assert last.kv_read_bytes == (5 + 11) * KV_TOKEN and last.weight_bytes == WEIGHT_BYTES
