"""compressed-tensors' pack-quantized int4 (signed codes + 8 eight inputs a word, zero points eight outputs a
word) maps onto the grouped int4 format exactly; the config's schemes, targets and ignore list are honoured,
and what kvserve cannot run is refused naming `quantization`. Whole checkpoints: test_quant_prepacked.py."""

from __future__ import annotations

import copy

import pytest
import torch

from engine.quantization.checkpoint_formats import CheckpointFormat, checkpoint_format
from engine.quantization.compressed_tensors import int4_from_compressed
from engine.quantization.int4 import dequantize_int4
from tests.engine.prepacked_helpers import compressed_config, dequantize, pack_compressed, random_codes


@pytest.mark.parametrize("group_size, symmetric, scale_dtype", [(32, True, torch.bfloat16), (128, False, torch.float16),
                                                                (None, False, torch.bfloat16)])
def test_packed_tensors_give_the_checkpoints_weights_bit_for_bit(group_size, symmetric, scale_dtype):
    n, k = 64, 256
    q, z, s = random_codes(n, k, 1 if group_size is None else k // group_size, k, symmetric=symmetric,
                           scale_dtype=scale_dtype)
    packed = pack_compressed(q, z, s, symmetric)
    assert ("weight_zero_point" in packed) == (not symmetric)
    codes, scale, zero = int4_from_compressed(**packed, group_size=group_size)
    assert torch.equal(codes, q.to(torch.int32))
    assert torch.equal(dequantize_int4(codes, scale, zero, group_size or k), dequantize(q, z, s))


def test_unpacked_signed_zero_points_of_older_writers_read_the_same():
    q, z, s = random_codes(32, 64, 2, 5)
    packed = pack_compressed(q, z, s, symmetric=False)
    unpacked = {**packed, "weight_zero_point": (z - 8).to(torch.int8)}
    a, b = int4_from_compressed(**packed, group_size=32), int4_from_compressed(**unpacked, group_size=32)
    assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_actorder_with_reordered_inputs_and_mismatched_tensors_are_refused_naming_quantization():
    q, z, s = random_codes(32, 64, 2, 6, symmetric=True)
    packed = pack_compressed(q, z, s, symmetric=True)
    with pytest.raises(ValueError, match="^quantization: compressed-tensors act-order"):
        int4_from_compressed(**packed, group_size=32, weight_g_idx=(torch.arange(64) // 32).flip(0))
    with pytest.raises(ValueError, match="^quantization: compressed-tensors tensors do not fit together"):
        int4_from_compressed(**packed, group_size=64)


def test_pack_quantized_configs_map_to_formats():
    assert checkpoint_format(compressed_config(128, True)) == CheckpointFormat("compressed-tensors", 128)
    assert checkpoint_format(compressed_config(None, False)) == CheckpointFormat("compressed-tensors", None)
    targets = compressed_config(64, True)
    targets["config_groups"]["group_0"]["targets"] = ["re:.*self_attn\\..*_proj$", "re:.*mlp\\..*_proj$"]
    targets["ignore"] = []  # the regexes do not reach lm_head
    assert checkpoint_format(targets).group_size == 64


def edited(path: str, value, group: int | None = 32) -> dict:
    """compressed_config(group, symmetric) with the entry at `path` ('a/b/c') set to `value`."""
    qc = copy.deepcopy(compressed_config(group, True))
    *keys, last = path.split("/")
    node = qc
    for key in keys:
        node = node[key]
    node[last] = value
    return qc


W = "config_groups/group_0/weights"


@pytest.mark.parametrize("qc, message", [
    (edited(f"{W}/num_bits", 8), "weights num_bits=8, type='int', strategy='group'"),
    (edited(f"{W}/type", "float"), "weights num_bits=4, type='float'"),
    (edited(f"{W}/strategy", "tensor"), "strategy='tensor'"),
    (edited(f"{W}/dynamic", True), "dynamic or block-structured weight scales"),
    (edited("config_groups/group_0/input_activations", {"num_bits": 8, "type": "int"}), "activation quantization"),
    (edited("config_groups/group_0/format", "int-quantized"), "format 'int-quantized'"),
    (edited("format", "marlin-24", group=32) | {"config_groups": {"group_0": {
        k: v for k, v in compressed_config(32, True)["config_groups"]["group_0"].items() if k != "format"}}},
     "format 'marlin-24'"),
    (edited("ignore", []), "a quantized LM head"),
    (edited("ignore", ["lm_head", "re:.*down_proj"]), "a checkpoint leaving mlp.down_proj unquantized"),
    (edited("config_groups/group_0/targets", ["re:.*self_attn.*"]), "a checkpoint leaving mlp.gate_proj unquantized"),
    (edited("quantization_status", "frozen"), "quantization_status 'frozen'"),
    (edited("kv_cache_scheme", {"num_bits": 8}), "kv_cache_scheme"),
    (edited("sparsity_config", {"format": "sparse-24-bitmask"}), "sparsity"),
    (edited("config_groups/group_1", compressed_config(64, True)["config_groups"]["group_0"]),
     "a mix of weight schemes"),
])
def test_unsupported_compressed_tensors_configs_are_refused_naming_quantization(qc, message):
    with pytest.raises(ValueError, match="^quantization: compressed-tensors .*" + message.replace("(", r"\(")
                       .replace("[", r"\[")):
        checkpoint_format(qc)


@pytest.mark.parametrize("strategy, group_size, symmetric, scale_dtype", [
    ("group", 32, True, torch.bfloat16), ("group", 128, False, torch.float16), ("channel", None, False, torch.bfloat16)])
def test_the_librarys_own_packing_unpacks_to_its_own_dequantization(strategy, group_size, symmetric, scale_dtype):
    """Cross-check against compressed-tensors itself (not in kvserve's environment: skipped there; run with
    `pip install --no-deps --target DIR compressed-tensors loguru psutil` and PYTHONPATH=DIR; 0.20.1 passed)."""
    pytest.importorskip("compressed_tensors")
    from compressed_tensors.compressors.pack_quantized.base import PackedQuantizationCompressor
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme
    from compressed_tensors.quantization.utils import calculate_qparams

    n, k = 96, 256
    w = torch.randn(n, k, generator=torch.Generator().manual_seed(0)) * 0.05
    args = QuantizationArgs(num_bits=4, type="int", symmetric=symmetric, strategy=strategy, group_size=group_size)
    scheme = QuantizationScheme(targets=["Linear"], weights=args)
    wg = w.reshape(n, 1 if group_size is None else k // group_size, -1)
    scale, zero_point = calculate_qparams(wg.amin(-1), wg.amax(-1), args)
    state = {"weight": w, "weight_scale": scale.to(scale_dtype),
             **({} if symmetric else {"weight_zero_point": zero_point})}
    packed = PackedQuantizationCompressor.compress(state, scheme)
    theirs = PackedQuantizationCompressor.decompress(packed, scheme)["weight"]  # in the scales' dtype
    codes, s, z = int4_from_compressed(packed["weight_packed"], packed["weight_scale"], packed["weight_shape"],
                                       group_size, packed.get("weight_zero_point"))
    ours = dequantize_int4(codes, s, z, group_size or k)
    assert torch.equal(ours.to(theirs.dtype), theirs)
