"""Prompt-lookup (n-gram) proposals and the accepted-prefix rule, on exact values."""

from __future__ import annotations

import pytest

from engine.spec_decode import NgramProposer, SpecDecodeStats, SpeculativeConfig
from engine.spec_decode.verify import accepted_tokens, num_accepted


def test_proposes_what_followed_the_latest_earlier_match():
    p = NgramProposer(num_speculative_tokens=3, min_n=2, max_n=3)
    #         0  1  2  3  4  5  6  7  8  9 10
    tokens = [1, 2, 3, 9, 8, 1, 2, 3, 7, 6, 1, 2]
    # "1 2" occurs at 0 and 5 (and ends the sequence): the latest earlier one (5) is followed by 3 7 6
    assert p.propose(tokens) == [3, 7, 6]


def test_a_longer_match_wins_over_a_later_shorter_one():
    p = NgramProposer(num_speculative_tokens=2, min_n=1, max_n=3)
    tokens = [5, 6, 7, 40, 41, 9, 7, 50, 51, 5, 6, 7]
    # "5 6 7" (n=3) matches at 0 -> 40 41; the later "7" alone (n=1, at 6) would give 50 51
    assert p.propose(tokens) == [40, 41]


def test_no_match_no_drafts_and_limits_respected():
    p = NgramProposer(num_speculative_tokens=4, min_n=2, max_n=4)
    assert p.propose([1, 2, 3, 4, 5]) == []
    assert p.propose([1, 2]) == []  # too short to hold a match and a pattern
    assert p.propose([1, 2, 3, 4, 1, 2], max_tokens=1) == [3]
    assert p.propose([1, 2, 3, 4, 1, 2], max_tokens=0) == []
    # a match near the end proposes only the tokens that exist after it
    assert p.propose([7, 7, 7]) == [7]


def test_accepts_the_longest_predicted_prefix_plus_one():
    assert num_accepted([4, 5, 6, 7], [4, 5, 6]) == 3
    assert accepted_tokens([4, 5, 6, 7], [4, 5, 6]) == [4, 5, 6, 7]  # every draft, then the bonus token
    assert accepted_tokens([4, 9, 6, 7], [4, 5, 6]) == [4, 9]  # the first wrong draft ends the run
    assert accepted_tokens([8, 5, 6, 7], [4, 5, 6]) == [8]  # later matches do not count
    assert accepted_tokens([3], []) == [3]


def test_stats_count_acceptance_per_position():
    s = SpecDecodeStats.of([(3, 3), (3, 1), (2, 0)], k=3)
    assert (s.num_drafts, s.num_draft_tokens, s.num_accepted_tokens, s.accepted_per_pos) == (3, 8, 4, (2, 1, 1))


@pytest.mark.parametrize("bad, param", [
    ({"method": "eagle"}, "speculative_config.method"),
    ({"num_speculative_tokens": 4}, "speculative_config.method"),
    ({"method": "ngram", "num_speculative_tokens": 0}, "speculative_config.num_speculative_tokens"),
    ({"method": "ngram", "prompt_lookup_min": 3, "prompt_lookup_max": 2}, "speculative_config.prompt_lookup_min"),
    ({"method": "ngram", "k": 2}, "speculative_config: unknown keys"),
])
def test_bad_configs_are_refused_naming_the_parameter(bad, param):
    with pytest.raises(ValueError, match=param):
        SpeculativeConfig.from_value(bad)


def test_cli_flags_build_the_config_and_a_tuning_flag_alone_is_refused():
    import argparse

    from engine.config import EngineArgs

    parser = EngineArgs.add_cli_args(argparse.ArgumentParser())
    args = EngineArgs.from_cli_args(parser.parse_args(["--speculative-method", "ngram", "--num-speculative-tokens", "6",
                                                       "--ngram-prompt-lookup-max", "5"]))
    assert args.speculative_config == SpeculativeConfig("ngram", 6, 2, 5)
    assert EngineArgs.from_cli_args(parser.parse_args([])).speculative_config is None
    with pytest.raises(ValueError, match="num_speculative_tokens: needs --speculative-method"):
        EngineArgs.from_cli_args(parser.parse_args(["--num-speculative-tokens", "3"]))


def test_penalty_rows_count_the_drafts_before_them_and_only_kept_tokens_are_counted_after():
    import numpy as np
    import torch

    from engine.spec_decode.penalties import draft_penalty_arrays, kept_rows

    # sequence 0: drafts (7, 8) -> rows 0..2; sequence 1: no drafts -> row 3; sequence 2: draft (9,) -> rows 4..5
    counts = np.array([3, 1, 2])
    drafts = ((7, 8), (), (9,))
    pen_rows = np.array([1, 2, 3, 5])  # penalized rows (sequences 0, 1 and 2)
    next_draft, row_first, extra_idx, extra_tok = draft_penalty_arrays(counts, drafts, pen_rows)
    assert next_draft.tolist() == [7, 8, -1, -1, 9, -1]
    assert row_first.tolist() == [0, 0, 0, 3, 4, 4]
    # row 1 (after draft 7) counts 7; row 2 counts 7 and 8; row 3 nothing; row 5 counts 9
    assert list(zip(extra_idx.tolist(), extra_tok.tolist())) == [(0, 7), (1, 7), (1, 8), (3, 9)]
    tokens = torch.tensor([7, 5, 4, 6, 1, 2])  # seq 0 keeps 7, 5 (8 was wrong); seq 1 keeps 6; seq 2 keeps 1
    kept = kept_rows(tokens, torch.from_numpy(next_draft), torch.from_numpy(row_first))
    assert kept.tolist() == [True, True, False, True, True, False]
