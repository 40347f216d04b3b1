"""Model building blocks reproduce transformers' numerics exactly (fp32) or to rounding."""

from __future__ import annotations

import torch
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb

from engine.models.layers import RotaryEmbedding, apply_rope, gemm_rows, linear


def test_rotary_embedding_is_bit_identical_to_transformers():
    cfg = LlamaConfig(hidden_size=128, num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256,
                      rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                                       "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                       "original_max_position_embeddings": 64})
    ours = RotaryEmbedding(cfg, head_dim=64, max_positions=256)
    ours.build(torch.device("cpu"))
    positions = torch.tensor([0, 1, 7, 63, 64, 200, 255])
    q, k = torch.randn(7, 2, 64), torch.randn(7, 1, 64)
    cos, sin = LlamaRotaryEmbedding(cfg)(q, positions.unsqueeze(0))
    hf_q, hf_k = apply_rotary_pos_emb(q.transpose(0, 1).unsqueeze(0), k.transpose(0, 1).unsqueeze(0), cos, sin)
    rope = ours(positions, q.dtype)
    our_q, our_k = apply_rope(q, rope), apply_rope(k, rope)
    assert torch.equal(our_q, hf_q[0].transpose(0, 1))
    assert torch.equal(our_k, hf_k[0].transpose(0, 1))


def test_linear_matches_f_linear_for_skinny_and_wide_batches():
    w, b = torch.randn(300, 64), torch.randn(300)
    for rows in (1, 3, 5, 7, 13, 128, 129, 251, 700):  # padded to an even count / a multiple of 8, or not
        x = torch.randn(rows, 64)
        out = linear(x, w, b)
        assert out.shape == (rows, 300)
        torch.testing.assert_close(out, torch.nn.functional.linear(x, w, b), rtol=1e-5, atol=1e-5)
    x = torch.randn(64, 7).t()  # a column-major input, as a flipped GEMM's output is
    torch.testing.assert_close(linear(x, w), torch.nn.functional.linear(x, w), rtol=1e-5, atol=1e-5)


def test_skinny_gemm_row_padding_never_shrinks_and_lands_on_fast_sizes():
    for m in range(1, 257):
        rows = gemm_rows(m)
        assert m <= rows < m + 8
        assert rows in (2, 4, 5, 6) or rows % 8 == 0


def test_rms_norm_add_forward_on_cpu_is_the_in_place_add_then_the_norm_bit_for_bit():
    from engine.models.layers import RMSNorm

    norm = RMSNorm(64, 1e-6)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(64))
        for dtype in (torch.float32, torch.bfloat16):
            residual, delta = torch.randn(5, 64, dtype=dtype), torch.randn(5, 64, dtype=dtype)
            expected_residual = residual.clone().add_(delta)
            expected = norm.to(dtype)(expected_residual.clone())
            out = norm.add_forward(residual, delta)
            assert torch.equal(residual, expected_residual) and torch.equal(out, expected)


def test_rope_of_q_and_k_on_cpu_is_apply_rope_of_each():
    from engine.models.layers import apply_rope_qk

    q, k = torch.randn(3, 4, 32), torch.randn(3, 2, 32)
    angles = torch.rand(3, 1, 16)
    rope = (angles.cos(), angles.sin())
    q_out, k_out = apply_rope_qk(q, k, rope)
    assert torch.equal(q_out, apply_rope(q, rope)) and torch.equal(k_out, apply_rope(k, rope))


def test_rms_norm_in_fp32_is_the_op_sequence_bit_for_bit():
    """The CPU fp32 path (torch's rms_norm) against transformers' LlamaRMSNorm, whose op sequence the other
    dtypes still run, on row counts of decode and prefill and on magnitudes around eps."""
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    from engine.models.layers import RMSNorm

    g = torch.Generator().manual_seed(0)
    for dim, eps in ((64, 1e-6), (576, 1e-5)):
        ours, hf = RMSNorm(dim, eps), LlamaRMSNorm(dim, eps)
        with torch.no_grad():
            ours.weight.copy_(torch.randn(dim, generator=g))
            hf.weight.copy_(ours.weight)
            for rows in (1, 3, 8, 33, 2048):
                for scale in (1e-3, 1.0, 30.0):
                    x = torch.randn(rows, dim, generator=g) * scale * torch.rand(rows, 1, generator=g)
                    assert torch.equal(ours(x), hf(x))


def test_rope_of_adjacent_q_and_k_heads_is_apply_rope_of_each_bit_for_bit():
    from engine.models.layers import apply_rope_heads

    h, kvh, d = 9, 3, 64
    for t in (1, 3, 16):
        angles = torch.rand(t, 1, d // 2) * 100
        for rope in ((angles.cos(), angles.sin()), (angles[..., :16].cos(), angles[..., :16].sin())):  # partial
            # a qkv projection's output, row-major and column-major (the skinny CPU GEMM's transposed result)
            for qkv in (torch.randn(t, (h + 2 * kvh) * d), torch.randn((h + 2 * kvh) * d, t).t()):
                q, k = apply_rope_heads(qkv[:, :(h + kvh) * d].view(t, -1, d), h, rope)
                q_ref = apply_rope(qkv[:, :h * d].view(t, h, d), rope)
                k_ref = apply_rope(qkv[:, h * d:(h + kvh) * d].view(t, kvh, d), rope)
                assert q.shape == (t, h, d) and k.shape == (t, kvh, d)
                assert torch.equal(q, q_ref) and torch.equal(k, k_ref)
