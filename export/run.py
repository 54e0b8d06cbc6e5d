"""Reference runner: an image from an export folder alone (see docs/export.md).

    python -m export.run OUT_DIR --prompt "a big red circle" --seed 0 --out image.png

It reads the tokenizer files, the manifest and the exported components (ExecuTorch .pte files here; Core ML packages
where Core ML runs), and nothing else: no model code of this repo, no torch.nn module; torch only for tensors and
its CPU generator, which draws the initial noise exactly as ``SnapFusionPipeline`` does, so the same prompt and seed
give the pipeline's image. Steps: text encoder (prompt, and the empty prompt for CFG) -> Denoiser in a plain loop
over the baked schedule -> VAEDecoder.

Bad input prints one line, ``error: ...``, on stderr and exits with code 2; nothing is written.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import numpy as np
import torch

from .errors import ExportError
from .options import MANIFEST_FORMAT, OLDER_MANIFEST_FORMATS, PACKAGE_NAMES, PTE_NAMES

RUNTIMES = ("executorch", "coreml")
NEEDED = ("text_encoder", "denoiser", "vae_decoder")


def read_manifest(out_dir: str) -> dict:
    """The export's manifest; ``ExportError`` for a folder that is not an export or one of another format."""
    path = os.path.join(out_dir, "manifest.json")
    if not os.path.isdir(out_dir):
        raise ExportError(f"{out_dir} is not a folder.")
    try:
        with open(path) as f:
            manifest = json.load(f)
    except (OSError, ValueError):
        raise ExportError(f"{out_dir} is not an export folder (no readable manifest.json from `python -m export`).")
    fmt = manifest.get("format") if isinstance(manifest, dict) else None
    if fmt in OLDER_MANIFEST_FORMATS:
        raise ExportError(f"{out_dir} was exported with manifest format {fmt}, which has no denoiser; this runner "
                          f"reads {MANIFEST_FORMAT}: export again with `python -m export`.")  # fmt: skip
    if fmt != MANIFEST_FORMAT:
        raise ExportError(f"{out_dir}: manifest format {fmt!r} is not {MANIFEST_FORMAT}, the format this runner "
                          "reads; export again with this version of `python -m export`.")  # fmt: skip
    return manifest


class _CoreMLModule:
    """A Core ML package called like a .pte (tensors in, tensors out), where the Core ML runtime exists (macOS)."""

    def __init__(self, path: str, entry: dict):
        import coremltools as ct

        self.model = ct.models.MLModel(path, compute_units=ct.ComputeUnit.ALL)
        self.inputs = [i["name"] for i in entry["inputs"]]
        self.outputs = [o["name"] for o in entry["outputs"]]

    def __call__(self, *inputs: torch.Tensor) -> list[torch.Tensor]:
        feed = {n: v.numpy().astype(np.int32 if v.dtype == torch.int64 else np.float32)
                for n, v in zip(self.inputs, inputs)}  # fmt: skip
        out = self.model.predict(feed)
        return [torch.from_numpy(np.asarray(out[n], dtype=np.float32)) for n in self.outputs]


def _load_components(out_dir: str, manifest: dict, runtime: str) -> dict:
    if runtime not in RUNTIMES:
        raise ExportError(f"runtime must be one of {', '.join(RUNTIMES)}; got {runtime!r}.")
    if runtime not in manifest.get("formats", []):
        raise ExportError(f"{out_dir} holds no {runtime} files (formats: {', '.join(manifest.get('formats', []))}).")
    names = PTE_NAMES if runtime == "executorch" else PACKAGE_NAMES
    entries = (manifest.get("executorch") or {}).get("components", {}) if runtime == "executorch" else \
        manifest.get("components", {})  # fmt: skip
    missing = [c for c in NEEDED if c not in entries or not os.path.exists(os.path.join(out_dir, names[c]))]
    if missing:
        raise ExportError(f"{out_dir} lacks {', '.join(names[c] for c in missing)}; the runner needs the text "
                          "encoder, the denoiser and the decoder (export with --components "
                          "text_encoder,denoiser,vae_decoder).")  # fmt: skip
    if runtime == "executorch":
        from .executorch import PteModule, require_executorch

        require_executorch()
        return {c: PteModule(os.path.join(out_dir, names[c])) for c in NEEDED}
    if platform.system() != "Darwin":
        raise ExportError(f"the Core ML runtime runs only on macOS; this is {platform.system()}: use --runtime "
                          "executorch.")  # fmt: skip
    try:
        return {c: _CoreMLModule(os.path.join(out_dir, names[c]), entries[c]) for c in NEEDED}
    except ImportError:
        raise ExportError("coremltools is not installed; run `pip install coremltools==9.0`.") from None


def load_tokenizer(out_dir: str, manifest: dict):
    """The CLIP BPE tokenizer from the export's vocab.json and merges.txt, at the exported sequence length."""
    from transformers import CLIPTokenizer

    text = manifest["text"]
    return CLIPTokenizer(os.path.join(out_dir, text["vocab"]), os.path.join(out_dir, text["merges"]),
                         pad_token=text.get("pad_token") or "<|endoftext|>",
                         model_max_length=int(text["sequence_length"]))  # fmt: skip


def tokenize(tok, texts: list[str]) -> tuple[torch.Tensor, list[str]]:
    """(N, L) token ids of ``texts`` padded / truncated to the exported length, and a note per truncated text."""
    length = tok.model_max_length
    notes = []
    for t in texts:
        n = len(tok(t, truncation=False, verbose=False).input_ids)  # with start and end tokens
        if n > length:
            notes.append(f"prompt truncated: the exported text encoder reads {length} tokens; the last {n - length} "
                         f"tokens of {t!r} were ignored.")  # fmt: skip
    ids = tok(texts, padding="max_length", max_length=length, truncation=True, return_tensors="pt").input_ids
    return ids, notes


class Runner:
    """An export folder loaded once (manifest, tokenizer files, the runtime's models); call it per image."""

    def __init__(self, out_dir: str, runtime: str = "executorch", threads: int | None = None):
        self.out_dir = out_dir
        self.manifest = read_manifest(out_dir)
        self.denoiser = self.manifest.get("denoiser")
        if not self.denoiser:
            raise ExportError(f"{out_dir} has no denoiser (export with --components "
                              "text_encoder,denoiser,vae_decoder).")  # fmt: skip
        if threads is not None:
            if runtime != "executorch" or isinstance(threads, bool) or int(threads) < 1:
                raise ExportError(f"--threads sets the ExecuTorch runtime's thread pool (>= 1); got {threads!r}.")
        self.runtime = runtime
        t0 = time.perf_counter()
        if threads is not None and runtime == "executorch":
            from .executorch import require_executorch, set_runtime_threads

            require_executorch()
            set_runtime_threads(int(threads))  # before any program loads
        self.models = _load_components(out_dir, self.manifest, runtime)
        self.tokenizer = load_tokenizer(out_dir, self.manifest)
        self.load_ms = (time.perf_counter() - t0) * 1000.0

    def __call__(self, prompt: str, seed: int = 0, guidance_scale: float | None = None,
                 num_inference_steps: int | None = None) -> dict:  # fmt: skip
        """{"image": (H, W, 3) uint8, "timings": {...}, "label": {...}, "notes": [...], "steps", "guidance_scale"}."""
        if not isinstance(prompt, str):
            raise ExportError(f"prompt must be a string; got {prompt!r}.")
        den, manifest, models = self.denoiser, self.manifest, self.models
        steps = int(den["num_inference_steps"])
        if num_inference_steps is not None and int(num_inference_steps) != steps:
            raise ExportError(f"this export's denoiser holds a {steps}-step schedule; got steps "
                              f"{num_inference_steps} (export again for another step count).")  # fmt: skip
        w = float(manifest["guidance_scale"] if guidance_scale is None else guidance_scale)
        if not np.isfinite(w):
            raise ExportError(f"guidance scale must be a finite number; got {guidance_scale!r}.")
        lo_hi = den.get("guidance_scale_range")
        if lo_hi and not lo_hi[0] <= w <= lo_hi[1]:
            raise ExportError(f"guidance scale {w:g} is outside the range this guidance-embedded model was trained "
                              f"on ({lo_hi[0]:g} to {lo_hi[1]:g}).")  # fmt: skip
        embedded = bool(den["guidance_embedded"])
        image = manifest["image"]
        t_total = time.perf_counter()
        timings: dict = {}

        # 1. text: the prompt (and the empty prompt for classifier-free guidance), batch 1 each
        t0 = time.perf_counter()
        ids, notes = tokenize(self.tokenizer, [prompt] if embedded else [prompt, ""])
        text_states = models["text_encoder"](ids[:1].to(torch.float32))[0]  # (1, L, D)
        extra = [] if embedded else [models["text_encoder"](ids[1:].to(torch.float32))[0]]  # uncond (1, L, D)
        timings["text_encoder_ms"] = (time.perf_counter() - t0) * 1000.0

        # 2. noise as the pipeline draws it: torch's CPU generator, float32, times init_noise_sigma
        shape = (1, image["latent_channels"], image["latent_height"], image["latent_width"])
        latents = torch.randn(shape, generator=torch.Generator().manual_seed(int(seed)), dtype=torch.float32)
        latents = latents * float(den["init_noise_sigma"])

        # 3. the denoiser in a plain loop; the schedule is inside it
        step_ms = []
        guidance = torch.tensor([w], dtype=torch.float32)
        for i in range(steps):
            t0 = time.perf_counter()
            step = torch.tensor([i], dtype=torch.int64)
            latents = models["denoiser"](latents, step, text_states, *extra, guidance)[0]
            step_ms.append((time.perf_counter() - t0) * 1000.0)
        timings["denoiser_ms_per_step"] = step_ms
        timings["denoiser_ms_total"] = float(sum(step_ms))

        # 4. decode (z = latents / scaling factor) and post-process as diffusers' VaeImageProcessor
        t0 = time.perf_counter()
        decoded = models["vae_decoder"](latents / float(image["scaling_factor"]))[0]  # (1, 3, H, W) in [-1, 1]
        timings["decoder_ms"] = (time.perf_counter() - t0) * 1000.0
        timings["total_ms"] = (time.perf_counter() - t_total) * 1000.0
        pixels = (decoded / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).float().numpy()[0]
        if self.runtime == "executorch":
            from .executorch import executorch_version, host_cpu, runtime_threads

            label = {"runtime": f"ExecuTorch {executorch_version()}", "backend": "XNNPACK", "host": host_cpu(),
                     "threads": runtime_threads()}  # fmt: skip
        else:
            label = {"runtime": "Core ML", "backend": "compute units ALL", "host": platform.platform(),
                     "threads": None}  # fmt: skip
        return {"image": (pixels * 255).round().astype("uint8"), "timings": timings, "label": label, "notes": notes,
                "steps": steps, "guidance_scale": w}  # fmt: skip


def generate(out_dir: str, prompt: str, seed: int = 0, guidance_scale: float | None = None,
             num_inference_steps: int | None = None, runtime: str = "executorch", threads: int | None = None) -> dict:
    """One image from an export folder: ``Runner(out_dir, runtime, threads)(prompt, seed, ...)``."""
    return Runner(out_dir, runtime, threads)(prompt, seed, guidance_scale, num_inference_steps)


# ---------------------------------------------------------------------------------------------- command line


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line instead of argparse's usage block
        fail(f"{message} (see `python -m export.run --help`)")


def fail(message: str) -> None:
    print(f"error: {' '.join(str(message).split())}", file=sys.stderr)
    raise SystemExit(2)


def parse_args(argv=None) -> argparse.Namespace:
    p = _Parser(prog="python -m export.run", description="Make an image from an export folder alone (ExecuTorch "
                ".pte files here; Core ML packages on macOS).")  # fmt: skip
    p.add_argument("out_dir", metavar="OUT_DIR", help="a folder written by `python -m export`")
    p.add_argument("--prompt", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="image file to write (PNG)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.add_argument("--guidance-scale", type=float, default=None, help="default: the model's recommended one")
    p.add_argument("--steps", type=int, default=None, help="default (and only choice): the exported schedule's")
    p.add_argument("--runtime", default="executorch", help=f"{' or '.join(RUNTIMES)}")
    p.add_argument("--threads", type=int, default=None, help="ExecuTorch thread pool size (default: one per core)")
    return p.parse_args(argv)


def format_readout(result: dict) -> str:
    t, lab = result["timings"], result["label"]
    per = t["denoiser_ms_per_step"]
    return (
        f"text encoder {t['text_encoder_ms']:.1f} ms + denoiser {len(per)} x {np.median(per):.1f} ms (median) + "
        f"decoder {t['decoder_ms']:.1f} ms = {t['total_ms']:.1f} ms end to end; measured in {lab['runtime']}, "
        f"backend {lab['backend']}, on {lab['host']}, {lab['threads']} threads"
    )


def main(argv=None) -> int:
    args = parse_args(argv)
    out = os.path.abspath(args.out)
    try:
        if os.path.exists(out) and not args.overwrite:
            raise ExportError(f"{out} exists; pass --overwrite to replace it.")
        if os.path.isdir(out):
            raise ExportError(f"{out} is a folder; --out must be an image file path.")
        result = generate(args.out_dir, args.prompt, args.seed, args.guidance_scale, args.steps, args.runtime,
                          args.threads)  # fmt: skip
    except ExportError as e:
        fail(str(e))
    from PIL import Image

    os.makedirs(os.path.dirname(out), exist_ok=True)
    tmp = f"{out}.partial-{os.getpid()}.png"
    Image.fromarray(result["image"]).save(tmp)
    os.replace(tmp, out)
    for note in result["notes"]:
        print(f"note: {note}")
    print(f"{result['steps']} steps, guidance {result['guidance_scale']:g}")
    print(format_readout(result))
    print(f"saved {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
