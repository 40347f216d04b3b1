"""Length distributions: the three spellings, their ranges, and their errors."""

import numpy as np
import pytest

from loadtest.lengths import LengthSpec


def test_a_number_is_a_fixed_length():
    spec = LengthSpec.parse("128")
    assert spec == LengthSpec.fixed(128)
    assert spec.sample(np.random.default_rng(0), 5).tolist() == [128] * 5


def test_a_range_is_uniform_with_both_ends_included():
    spec = LengthSpec.parse("32:36")
    drawn = spec.sample(np.random.default_rng(0), 2000)
    assert drawn.min() == 32 and drawn.max() == 36
    assert set(drawn.tolist()) == {32, 33, 34, 35, 36}


def test_normal_is_rounded_and_clipped_at_one():
    spec = LengthSpec.parse("normal:128,32")
    drawn = spec.sample(np.random.default_rng(0), 20000)
    assert drawn.dtype == np.int64
    assert abs(drawn.mean() - 128) < 1.0 and abs(drawn.std() - 32) < 1.0
    assert LengthSpec.normal(2, 50).sample(np.random.default_rng(0), 1000).min() == 1


def test_describe_gives_back_the_spelling():
    for text in ("128", "32:256", "normal:128,32"):
        assert LengthSpec.parse(text).describe() == text


@pytest.mark.parametrize("text", ["0", "-3", "256:32", "abc", "1:2:3", "normal:128", "normal:0,1", "normal:10,-1"])
def test_bad_spellings_are_rejected_with_the_parameter_named(text):
    with pytest.raises(ValueError, match="^length:"):
        LengthSpec.parse(text)
