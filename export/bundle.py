"""The files around the Core ML packages: the tokenizer's vocab.json / merges.txt, and the zip for download."""

from __future__ import annotations

import json
import os
import tempfile
import zipfile

from .errors import ExportError
from .options import is_export_folder

STORE_ABOVE_BYTES = 1 << 20  # weight blobs barely compress: store them, deflate the small files


def tokenizer_vocab_and_merges(tokenizer) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """The BPE vocabulary (token -> id, specials included) and merges (in rank order) of a CLIP tokenizer.

    transformers 5 tokenizers are backed by ``tokenizers`` and save only tokenizer.json, so both are read from
    the backend's JSON; a slow (Python) CLIP tokenizer exposes them as ``encoder`` / ``bpe_ranks``.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        model = json.loads(backend.to_str())["model"]
        if model.get("type") != "BPE":
            raise ExportError(
                f"tokenizer model is {model.get('type')!r}; the Swift package needs a BPE (CLIP) tokenizer."
            )
        merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
        vocab = dict(model["vocab"])
    elif hasattr(tokenizer, "encoder") and hasattr(tokenizer, "bpe_ranks"):
        vocab = dict(tokenizer.encoder)
        merges = [pair for pair, _ in sorted(tokenizer.bpe_ranks.items(), key=lambda kv: kv[1])]
    else:
        raise ExportError(f"cannot read a BPE vocabulary and merges from {type(tokenizer).__name__}.")
    vocab.update(tokenizer.get_vocab())  # added / special tokens (<|startoftext|>, <|endoftext|>)
    bad = [m for m in merges if len(m) != 2 or any(" " in t or "\n" in t or not t for t in m)]
    if bad:
        raise ExportError(f"merge {bad[0]!r} cannot be written as a 'left right' line of merges.txt.")
    return vocab, merges


def write_tokenizer_files(tokenizer, out_dir: str) -> dict:
    """Write vocab.json and merges.txt (the files apple's ``BPETokenizer`` reads); return their manifest entry."""
    vocab, merges = tokenizer_vocab_and_merges(tokenizer)
    with open(os.path.join(out_dir, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump(vocab, f, ensure_ascii=False)
    with open(os.path.join(out_dir, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n")
        f.writelines(f"{a} {b}\n" for a, b in merges)
    return {"vocab": "vocab.json", "merges": "merges.txt", "vocab_size": len(vocab), "merges_count": len(merges),
            "bos_token": tokenizer.bos_token, "eos_token": tokenizer.eos_token,
            "pad_token": tokenizer.pad_token}  # fmt: skip


def zip_export(out_dir: str, zip_path: str | None = None, overwrite: bool = False) -> str:
    """Zip an export folder for download; returns the zip's path (default: ``<out_dir>.zip`` beside it).

    Entries are ``<folder name>/...``. An existing zip is replaced only with ``overwrite=True``; the zip is
    written to a temporary file and moved into place, so a failed run leaves no partial zip.
    """
    out_dir = os.path.abspath(out_dir)
    if not os.path.isdir(out_dir) or not is_export_folder(out_dir):
        raise ExportError(f"{out_dir} is not an export folder (no manifest.json from `python -m export`).")
    zip_path = os.path.abspath(zip_path or out_dir.rstrip(os.sep) + ".zip")
    if zip_path.startswith(out_dir + os.sep):
        raise ExportError(f"zip path {zip_path} is inside the folder it would archive; choose a path outside it.")
    if os.path.exists(zip_path) and not overwrite:
        raise ExportError(f"{zip_path} exists; pass overwrite=True (--overwrite) to replace it.")
    root = os.path.basename(out_dir.rstrip(os.sep))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(zip_path)}.partial-", dir=os.path.dirname(zip_path))
    os.close(fd)
    try:
        with zipfile.ZipFile(tmp, "w") as zf:
            for dirpath, dirnames, filenames in os.walk(out_dir):
                dirnames.sort()
                for name in sorted(filenames):
                    full = os.path.join(dirpath, name)
                    arc = os.path.join(root, os.path.relpath(full, out_dir))
                    method = zipfile.ZIP_STORED if os.path.getsize(full) > STORE_ABOVE_BYTES else zipfile.ZIP_DEFLATED
                    zf.write(full, arc, compress_type=method)
        os.chmod(tmp, 0o644)
        os.replace(tmp, zip_path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return zip_path
