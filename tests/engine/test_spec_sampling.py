"""Speculative decoding with temperature > 0 keeps the target distribution.

The worker samples every draft position exactly as it would without speculation and keeps the run the
drafts predicted plus one (engine.spec_decode.verify): rejection sampling for a point-mass draft. Checked
two ways: a chi-square test on a fixed distribution (the real sampler: temperature, top-k) that the
plausible wrong rules fail, and seeded requests through the engine, which draw exactly the tokens they
draw without speculation (the sampling noise is a function of seed, output position and token).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine import SamplingParams
from engine.engine import LLMEngine
from engine.sample.sampler import Sampler, SamplingRow
from engine.spec_decode.verify import accepted_tokens
from engine.step import SamplingOptions
from tests.engine.spec_helpers import repetitive_prompts, run_all, save_loopy_model

CHI2_CRIT_DF3_P001 = 16.27  # chi-square critical value, 3 degrees of freedom, p = 0.001
N = 6000
LOGITS = torch.tensor([2.0, 1.5, 1.0, 0.5, 0.0, -1.0])  # top_k=4 leaves the first four tokens
DRAFT = 1  # the proposed token: p(1) ~ 0.29 after top-k


def target_probs() -> np.ndarray:
    p = torch.softmax(LOGITS[:4] / 0.8, dim=0).numpy()
    return p


def chi2(counts: np.ndarray, probs: np.ndarray) -> float:
    expected = probs * counts.sum()
    return float(((counts - expected) ** 2 / expected).sum())


def sample_positions(num_positions: int) -> np.ndarray:
    """[N, positions] tokens the real sampler draws at consecutive output positions of N seeded sequences."""
    sampler = Sampler(torch.device("cpu"), seed=0)
    rows = []
    for seed in range(N):
        opts = SamplingOptions(temperature=0.8, top_k=4, seed=seed)
        for i in range(num_positions):
            rows.append(SamplingRow(f"s{seed}", opts, [7] * (3 + i), 3, ()))
    out = sampler(LOGITS.repeat(len(rows), 1), rows)
    return np.array(out.token_ids).reshape(N, num_positions)


def test_the_first_token_after_a_draft_follows_the_target_distribution():
    draws = sample_positions(2)  # position 0 verifies the draft, position 1 is the bonus if it is accepted
    probs = target_probs()
    first = np.array([accepted_tokens(row, [DRAFT])[0] for row in draws.tolist()])
    assert chi2(np.bincount(first, minlength=4)[:4], probs) < CHI2_CRIT_DF3_P001
    # and the token after an accepted draft (the bonus) too
    second = np.array([accepted_tokens(row, [DRAFT])[1] for row in draws.tolist() if row[0] == DRAFT])
    assert chi2(np.bincount(second, minlength=4)[:4], probs) < CHI2_CRIT_DF3_P001


def test_the_chi_square_test_fails_plausible_wrong_rules():
    draws = sample_positions(1)[:, 0]
    probs = target_probs()
    u = np.random.default_rng(0).random(N)
    # wrong 1: accept the draft with probability p(draft), else draw from p again (no residual)
    wrong = np.where(u < probs[DRAFT], DRAFT, draws)
    assert chi2(np.bincount(wrong, minlength=4)[:4], probs) > CHI2_CRIT_DF3_P001
    # wrong 2: accept the draft whenever it is in the top-k set (argmax-free "plausible" acceptance)
    assert chi2(np.bincount(np.full(N, DRAFT), minlength=4)[:4], probs) > CHI2_CRIT_DF3_P001


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    """Tiny models gain nothing from threads (see tests/conftest.py)."""


def test_seeded_sampling_draws_the_same_tokens_with_and_without_speculation(tmp_path):
    model = save_loopy_model(tmp_path)
    prompts = repetitive_prompts(6, 512, seed=7)
    spec_cfg = {"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_min": 1, "disable_by_batch_size": 64}
    plain = LLMEngine.from_args(model=model, device="cpu")
    spec = LLMEngine.from_args(model=model, device="cpu", speculative_config=spec_cfg)
    params = [SamplingParams(temperature=t, top_k=k, top_p=p, min_p=m, seed=100 + i, max_tokens=24, ignore_eos=True,
                             min_tokens=5)
              for i, (t, k, p, m) in enumerate([(0.3, 0, 1.0, 0.0), (0.5, 5, 1.0, 0.0), (0.7, 0, 0.8, 0.0),
                                                (0.6, 0, 1.0, 0.1), (1.0, 3, 0.9, 0.0), (0.4, 0, 1.0, 0.0)])]
    want, _, _ = run_all(plain, prompts, params)
    got, stats, _ = run_all(spec, prompts, params)
    assert got == want
    assert 0 < stats.num_accepted_tokens < stats.num_draft_tokens


@pytest.mark.parametrize("temperature", [0.0, 0.5])
def test_penalties_apply_at_draft_positions_as_if_the_drafts_were_output(tmp_path, temperature):
    # penalties weak enough that the model still repeats itself (drafts are proposed and some accepted)
    model = save_loopy_model(tmp_path)
    prompts = repetitive_prompts(4, 512, seed=8)
    spec_cfg = {"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_min": 1, "disable_by_batch_size": 64}
    plain = LLMEngine.from_args(model=model, device="cpu")
    spec = LLMEngine.from_args(model=model, device="cpu", speculative_config=spec_cfg)
    params = [SamplingParams(temperature=temperature, seed=i, max_tokens=24, ignore_eos=True, **pen)
              for i, pen in enumerate([{"repetition_penalty": 1.3}, {"frequency_penalty": 0.6},
                                       {"presence_penalty": 0.8}, {"frequency_penalty": 1.5}])]
    want, _, _ = run_all(plain, prompts, params)
    got, stats, _ = run_all(spec, prompts, params)
    assert got == want
    assert 0 < stats.num_accepted_tokens < stats.num_draft_tokens
