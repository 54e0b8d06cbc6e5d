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
    # Merges are applied by rank over the whole word, so a merge added for one word can split another ("an" from
    # "and" inside "orange"). Add merges word by word, each time re-running BPE with the merges so far and merging
    # its first two symbols, until the word is one token. A new merge has the lowest priority, so it never changes
    # how an earlier word tokenizes (that word reaches one token before the new merge can apply).
    merges: list[tuple[str, str]] = []
    ranks: dict[tuple[str, str], int] = {}
    for word in sorted({w.lower() for w in words if w}):
        while len(symbols := _bpe(word, ranks)) > 1:
            pair = (symbols[0], symbols[1])
            ranks[pair] = len(merges)
            merges.append(pair)
            add(pair[0] + pair[1])
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


def _bpe(word: str, ranks: dict[tuple[str, str], int]) -> list[str]:
    """CLIP's byte-pair encoding of one lower-case word (the algorithm of ``CLIPTokenizer.bpe``)."""
    symbols = list(word[:-1]) + [word[-1] + "</w>"]
    while len(symbols) > 1:
        pairs = {(a, b) for a, b in zip(symbols, symbols[1:])}
        best = min(pairs, key=lambda pair: ranks.get(pair, float("inf")))
        if best not in ranks:
            break
        merged, i = [], 0
        while i < len(symbols):
            if i < len(symbols) - 1 and (symbols[i], symbols[i + 1]) == best:
                merged.append(symbols[i] + symbols[i + 1])
                i += 2
            else:
                merged.append(symbols[i])
                i += 1
        symbols = merged
    return symbols
