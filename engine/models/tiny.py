"""Random tiny Llama models saved as HF directories, for tests and demos (no download, milliseconds a step).

With `tokenizer=True` the directory gets the default model's tokenizer files, so text prompts, chat
templates and token ids are realistic; the vocabulary then has to be the default model's (49,152).
"""

from __future__ import annotations

import shutil
from pathlib import Path

DEFAULT_VOCAB = 49152


def save_tiny_llama(out: Path, *, vocab_size: int = DEFAULT_VOCAB, max_position_embeddings: int = 512,
                    tokenizer: bool = True, seed: int = 0) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from .resolve import resolve_model

    if tokenizer and vocab_size != DEFAULT_VOCAB:
        raise ValueError(f"vocab_size: the default tokenizer needs {DEFAULT_VOCAB}, got {vocab_size}")
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, intermediate_size=128, max_position_embeddings=max_position_embeddings,
                      bos_token_id=1, eos_token_id=2, tie_word_embeddings=True)
    out = Path(out)
    LlamaForCausalLM(cfg).save_pretrained(out)
    if tokenizer:
        tokenizer_dir = resolve_model(None).path
        for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json"):
            if (tokenizer_dir / name).is_file():
                shutil.copy(tokenizer_dir / name, out / name)
    return out
