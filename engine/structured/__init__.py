"""Structured output: constraints (`spec`), their compilation with xgrammar (`compiler`) and each sequence's
matcher (`matcher`). The sampler applies the bitmasks (`engine.sample.bitmask`)."""
