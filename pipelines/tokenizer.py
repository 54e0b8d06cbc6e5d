"""Build a CLIP tokenizer (vocab.json + merges.txt) from a word list, with no download."""

from __future__ import annotations

import json
import os

from transformers import CLIPTokenizer

BYTE_CHARS = [chr(c) for c in range(33, 127)]  # printable ASCII; other characters map to the unknown token


def build_clip_tokenizer(words: list[str], save_dir: str, model_max_length: int = 77) -> CLIPTokenizer:
    """A CLIP BPE tokenizer whose merges spell every word in ``words`` as one token.

    The vocabulary holds printable ASCII characters (with and without the ``</w>`` end-of-word mark), every
    merge product and the specials ``<|startoftext|>`` / ``<|endoftext|>``, so any ASCII prompt tokenizes.
    """
    os.makedirs(save_dir, exist_ok=True)
    vocab: dict[str, int] = {}

    def add(tok: str):
        if tok not in vocab:
            vocab[tok] = len(vocab)

    for ch in BYTE_CHARS:
        add(ch)
    for ch in BYTE_CHARS:
        add(ch + "</w>")
    merges: list[tuple[str, str]] = []
    seen = set()
    for word in sorted({w.lower() for w in words if w}):
        symbols = list(word[:-1]) + [word[-1] + "</w>"]
        if len(symbols) < 2:
            continue
        left = symbols[0]
        for right in symbols[1:]:
            pair = (left, right)
            if pair not in seen:
                seen.add(pair)
                merges.append(pair)
                add(left + right)
            left = left + right
    add("<|startoftext|>")
    add("<|endoftext|>")
    vocab_file = os.path.join(save_dir, "vocab.json")
    merges_file = os.path.join(save_dir, "merges.txt")
    with open(vocab_file, "w") as f:
        json.dump(vocab, f)
    with open(merges_file, "w") as f:
        f.write("#version: 0.2\n")
        f.writelines(f"{a} {b}\n" for a, b in merges)
    tok = CLIPTokenizer(vocab_file, merges_file, model_max_length=model_max_length, pad_token="<|endoftext|>")
    return tok
