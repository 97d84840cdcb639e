"""Tokenizers for tiny offline models (no files, no hub): byte-level alphabets as in deps.md Sec. 3."""
from transformers import CLIPTokenizer, T5Tokenizer


def byte_chars() -> list[str]:
    """GPT-2's byte-to-unicode alphabet (no longer importable from transformers 5)."""
    bs = list(range(33, 127)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def clip_tokenizer() -> CLIPTokenizer:
    chars = byte_chars()
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": 256 + i for i, c in enumerate(chars)})
    for tok in ("ca", "cat</w>", "<|startoftext|>", "<|endoftext|>"):
        vocab[tok] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[("c", "a"), ("ca", "t</w>")], model_max_length=77)


def t5_tokenizer() -> T5Tokenizer:
    return T5Tokenizer(vocab=[("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -1.0)]
                       + [(c, -2.0) for c in "abcdefghijklmnopqrstuvwxyz0123456789.,"]
                       + [("\u2581" + w, -1.5) for w in ["a", "cat", "photo", "of"]], extra_ids=0, model_max_length=512)
