"""Turning logits into tokens: the sampler and its per-request options."""
