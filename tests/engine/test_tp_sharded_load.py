"""Each rank loads exactly its slice of the checkpoint (Megatron layout): q/k/v rows of its heads, gate/up
rows of its MLP columns, o_proj / down_proj input columns, its vocabulary rows plus zero padding; norms and
row-parallel biases whole. Checked against the unsharded model, without starting any process."""

from __future__ import annotations

import pytest
import torch

from engine.config import EngineArgs
from engine.distributed.partition import plan_for_model
from engine.models.loader import build_model
from engine.models.parallel import TPContext


def shards_of(model_dir: str, world: int):
    cfg = EngineArgs(model=model_dir, device="cpu").resolve().model
    full = dict(build_model(cfg, torch.device("cpu")).named_parameters())
    plan = plan_for_model(cfg, world)
    heads_total = sum(s.num_kv_heads for s in plan)
    ranks = []
    for shard in plan:
        tp = TPContext(shard, comm=None, head_dim=cfg.head_dim, kv_heads_all_ranks=heads_total)  # no forward here
        ranks.append((shard, dict(build_model(cfg, torch.device("cpu"), tp=tp).named_parameters())))
    return cfg, full, ranks


@pytest.mark.parametrize("arch,world", [("llama", 2), ("qwen2", 2), ("qwen3", 3), ("qwen3", 2)])
def test_every_rank_holds_exactly_its_slice(arch, world, tiny_model_dir):
    cfg, full, ranks = shards_of(tiny_model_dir(arch), world)
    d, q_all, kv_all = cfg.head_dim, cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
    inter = cfg.hf_config.intermediate_size
    for shard, p in ranks:
        q0, q1 = (h * d for h in shard.q_heads)
        k0, k1 = (h * d for h in shard.kv_heads)
        i0, i1 = shard.intermediate
        for layer in range(cfg.num_layers):
            pre = f"layers.{layer}."
            qkv = full[pre + "self_attn.qkv_proj.weight"]
            want = torch.cat([qkv[q0:q1], qkv[q_all + k0:q_all + k1], qkv[q_all + kv_all + k0:q_all + kv_all + k1]])
            assert torch.equal(p[pre + "self_attn.qkv_proj.weight"], want)
            if arch == "qwen2":  # q/k/v biases follow their rows
                b = full[pre + "self_attn.qkv_proj.bias"]
                assert torch.equal(p[pre + "self_attn.qkv_proj.bias"],
                                   torch.cat([b[q0:q1], b[q_all + k0:q_all + k1], b[q_all + kv_all + k0:q_all + kv_all + k1]]))
            assert torch.equal(p[pre + "self_attn.o_proj.weight"], full[pre + "self_attn.o_proj.weight"][:, q0:q1])
            gate_up = full[pre + "mlp.gate_up_proj.weight"]
            assert torch.equal(p[pre + "mlp.gate_up_proj.weight"], torch.cat([gate_up[i0:i1], gate_up[inter + i0:inter + i1]]))
            assert torch.equal(p[pre + "mlp.down_proj.weight"], full[pre + "mlp.down_proj.weight"][:, i0:i1])
            assert torch.equal(p[pre + "input_layernorm.weight"], full[pre + "input_layernorm.weight"])
            if arch == "qwen3":
                assert torch.equal(p[pre + "self_attn.q_norm.weight"], full[pre + "self_attn.q_norm.weight"])
        v0, v1 = shard.real_vocab
        for name in ("embed_tokens.weight", "lm_head.weight"):
            if name in full:
                w = p[name]
                assert w.shape[0] == shard.vocab_rows
                assert torch.equal(w[:v1 - v0], full[name][v0:v1])
                assert not w[v1 - v0:].any()  # padding rows are zero
        assert torch.equal(p["norm.weight"], full["norm.weight"])


def test_one_rank_runs_the_whole_model_in_the_engine_process(tiny_model_dir):
    from engine import LLM
    from engine.executor.uniproc import InProcessExecutor

    llm = LLM(tiny_model_dir("llama"), device="cpu", num_kv_blocks=16)
    assert isinstance(llm.engine.executor, InProcessExecutor)
    assert llm.engine.runner.tp is None and llm.engine.runner.model.tp is None
    assert isinstance(llm.engine.runner.model.embed_tokens, torch.nn.Embedding)  # not the vocabulary-parallel one
