"""Verification: which of a sequence's drafts to keep, given the tokens sampled at every draft position.

A sequence with drafts d_1 .. d_k is computed at k + 1 positions in one forward pass: its last known token,
then the drafts. The worker samples a token t_i at each position i = 0 .. k exactly as it would sample that
position without speculation (same penalties, top-k/top-p/min-p, same per-request seed and output-position
noise), each from the target distribution p_i conditioned on the drafts before it. It then keeps

    t_0 .. t_j,   j = the number of leading drafts with d_{i+1} == t_i

(the accepted drafts, which equal t_0 .. t_{j-1}, plus the bonus token t_j).

Greedy: t_i is the argmax, so the output is the non-speculative output token for token.

Sampling: this is rejection sampling (Leviathan et al. 2023; Chen et al. 2023) for a draft distribution that
is a point mass on d (the n-gram proposer is deterministic): accept d with probability min(1, p(d) / q(d)) =
p(d), otherwise draw from the normalized residual max(p - q, 0), which is p with d removed. Drawing t ~ p and
accepting iff t == d does exactly that: P(accept) = p(d), and given t != d, t is distributed as p restricted
to tokens != d and renormalized. Once a draft is rejected the positions after it are conditioned on a wrong
prefix and are discarded unread. Because the worker's noise is a pure function of (seed, output position,
token), a seeded request even draws the same tokens as without speculation.
"""

from __future__ import annotations

from collections.abc import Sequence


def num_accepted(targets: Sequence[int], drafts: Sequence[int]) -> int:
    """How many leading drafts the sampled tokens confirm: `targets` holds one token per position (k + 1
    of them for k drafts); draft i + 1 is kept while targets[i] == drafts[i]."""
    j = 0
    while j < len(drafts) and targets[j] == drafts[j]:
        j += 1
    return j


def accepted_tokens(targets: Sequence[int], drafts: Sequence[int]) -> list[int]:
    """The tokens a sequence gets from one verified step: the accepted drafts plus one."""
    return list(targets[:num_accepted(targets, drafts) + 1])
