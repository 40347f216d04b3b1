"""Bad arguments to the public kernels raise ValueError naming the argument, before anything is launched."""

from __future__ import annotations

import pytest
import torch

import kernels
from kernels.batch import make_paged_batch


def good_attention_args():
    batch = make_paged_batch([3, 1], [10, 20], num_heads=4, num_kv_heads=2, head_dim=16)
    names = ["query", "key_cache", "value_cache", "block_tables", "cu_seqlens_q", "seq_lens", "scale"]
    return dict(zip(names, batch.args()))


ATTENTION_CASES = {
    "query_2d": ("query", lambda a: a["query"][:, 0]),
    "query_int": ("query", lambda a: a["query"].to(torch.int32)),
    "query_not_tensor": ("query", lambda a: a["query"].tolist()),
    "query_last_dim_strided": ("query", lambda a: a["query"].transpose(1, 2).contiguous().transpose(1, 2)),
    "query_head_dim_too_small": ("query", lambda a: a["query"][..., :8]),
    "heads_not_multiple_of_kv_heads": ("query", lambda a: a["query"][:, :3]),
    "key_cache_dtype": ("key_cache", lambda a: a["key_cache"].half()),
    "key_cache_3d": ("key_cache", lambda a: a["key_cache"][0]),
    "key_cache_head_dim": ("key_cache", lambda a: a["key_cache"][..., :8]),
    "value_cache_shape": ("value_cache", lambda a: a["value_cache"][:-1]),
    "value_cache_dtype": ("value_cache", lambda a: a["value_cache"].double()),
    "block_tables_int64": ("block_tables", lambda a: a["block_tables"].long()),
    "block_tables_rows": ("block_tables", lambda a: a["block_tables"][:1]),
    "block_tables_device": ("block_tables", lambda a: a["block_tables"].to("meta")),
    "cu_seqlens_q_length": ("cu_seqlens_q", lambda a: a["cu_seqlens_q"][:-1]),
    "cu_seqlens_q_int64": ("cu_seqlens_q", lambda a: a["cu_seqlens_q"].long()),
    "seq_lens_2d": ("seq_lens", lambda a: a["seq_lens"][None]),
    "scale_nan": ("scale", lambda a: float("nan")),
    "scale_tensor": ("scale", lambda a: torch.tensor(0.25)),
}


@pytest.mark.parametrize("case", ATTENTION_CASES)
def test_paged_attention_rejects_bad_argument(case):
    name, mutate = ATTENTION_CASES[case]
    args = good_attention_args()
    args[name] = mutate(args)
    with pytest.raises(ValueError, match=f"^{name}:"):
        kernels.paged_attention(**args)


@pytest.mark.parametrize("out_case", ["shape", "dtype", "strided"])
def test_paged_attention_rejects_bad_out(out_case):
    args = good_attention_args()
    query = args["query"]
    out = {"shape": lambda: torch.empty(query.shape[0] + 1, *query.shape[1:]),
           "dtype": lambda: torch.empty(query.shape, dtype=torch.float16),
           "strided": lambda: torch.empty(query.shape[::-1]).transpose(0, 2)}[out_case]()
    with pytest.raises(ValueError, match="^out:"):
        kernels.paged_attention(**args, out=out)


@pytest.mark.parametrize("hint,value", [
    ("max_query_len", -1), ("max_query_len", 2.0), ("max_seq_len", torch.tensor(5)), ("num_splits", 0),
    ("num_splits", 65), ("num_splits", True),
])
def test_paged_attention_rejects_bad_hint(hint, value):
    with pytest.raises(ValueError, match=f"^{hint}:"):
        kernels.paged_attention(**good_attention_args(), **{hint: value})


def test_cpu_tensors_need_the_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError, match="^query: on cpu.*CUDA"):
        kernels.paged_attention(**good_attention_args())


@pytest.mark.skipif(torch.cuda.is_available(), reason="only the CPU interpreter refuses bf16")
def test_interpreter_refuses_bf16():
    args = good_attention_args()
    for name in ("query", "key_cache", "value_cache"):
        args[name] = args[name].bfloat16()
    with pytest.raises(ValueError, match="^query: bfloat16"):
        kernels.paged_attention(**args)


def good_store_args():
    return dict(key=torch.randn(5, 2, 16), value=torch.randn(5, 2, 16), key_cache=torch.zeros(3, 16, 2, 16),
                value_cache=torch.zeros(3, 16, 2, 16), slot_mapping=torch.arange(5))


STORE_CASES = {
    "key_dtype": ("key", lambda a: a["key"].half()),
    "key_heads": ("key", lambda a: a["key"][:, :1]),
    "key_last_dim_strided": ("key", lambda a: a["key"].transpose(1, 2).contiguous().transpose(1, 2)),
    "value_shape": ("value", lambda a: a["value"][:4]),
    "value_cache_shape": ("value_cache", lambda a: a["value_cache"][:2]),
    "slot_mapping_float": ("slot_mapping", lambda a: a["slot_mapping"].float()),
    "slot_mapping_length": ("slot_mapping", lambda a: a["slot_mapping"][:3]),
    "slot_mapping_device": ("slot_mapping", lambda a: a["slot_mapping"].to("meta")),
}


@pytest.mark.parametrize("case", STORE_CASES)
def test_store_kv_rejects_bad_argument(case):
    name, mutate = STORE_CASES[case]
    args = good_store_args()
    args[name] = mutate(args)
    with pytest.raises(ValueError, match=f"^{name}:"):
        kernels.store_kv(**args)


def test_a_block_table_narrower_than_max_seq_len_is_refused_before_any_read_past_it():
    args = good_attention_args()  # contexts of 10 and 20 tokens
    block_size = args["key_cache"].shape[1]
    narrow = args["block_tables"][:, :1]
    with pytest.raises(ValueError, match="^block_tables: 1 columns"):
        kernels.paged_attention(**{**args, "block_tables": narrow}, max_seq_len=block_size + 1)
