"""Argument checks for kernels.fused_moe (the function). Shapes, dtypes, devices and strides only (reading values would
synchronize with the device): expert ids must lie in [0, E), which is the caller's promise. Every error is a
ValueError whose message starts with the argument's name.
"""

from __future__ import annotations

import torch

from kernels.validation import FLOAT_DTYPES, _same_device, _tensor

ID_DTYPES = (torch.int32, torch.int64)


def check_fused_moe_args(x, gate_up, down, topk_weights, topk_ids) -> None:
    _tensor("x", x, 2, FLOAT_DTYPES)
    _tensor("gate_up", gate_up, 3, FLOAT_DTYPES)
    _tensor("down", down, 3, FLOAT_DTYPES)
    _tensor("topk_weights", topk_weights, 2, FLOAT_DTYPES)
    _tensor("topk_ids", topk_ids, 2, ID_DTYPES)
    num_tokens, hidden = x.shape
    num_experts, inter2, gate_up_hidden = gate_up.shape
    if inter2 % 2:
        raise ValueError(f"gate_up: expected [E, 2I, H] (gate rows then up rows), got an odd {inter2} rows")
    if gate_up_hidden != hidden:
        raise ValueError(f"gate_up: hidden size {gate_up_hidden} differs from x's {hidden}")
    if down.shape != (num_experts, hidden, inter2 // 2):
        raise ValueError(f"down: expected shape {(num_experts, hidden, inter2 // 2)}, got {tuple(down.shape)}")
    for name, t in (("gate_up", gate_up), ("down", down)):
        if t.dtype != x.dtype:
            raise ValueError(f"{name}: dtype {t.dtype} differs from x's {x.dtype}")
    if topk_ids.shape[0] != num_tokens or topk_weights.shape != topk_ids.shape:
        raise ValueError(f"topk_ids: expected [{num_tokens}, k] like topk_weights, got {tuple(topk_ids.shape)} and "
                         f"{tuple(topk_weights.shape)}")
    if not 1 <= topk_ids.shape[1] <= num_experts:
        raise ValueError(f"topk_ids: k must be in [1, {num_experts}], got {topk_ids.shape[1]}")
    _same_device("x", x.device, gate_up=gate_up, down=down, topk_weights=topk_weights, topk_ids=topk_ids)
