"""Tokenizers for tiny offline models (their home is ntrk_bench.models.tiny)."""
from ntrk_bench.models.tiny import byte_chars, clip_tokenizer, t5_tokenizer

__all__ = ["byte_chars", "clip_tokenizer", "t5_tokenizer"]
