"""export_pipeline: a loaded SnapFusionPipeline -> a folder of mobile models (Core ML and / or ExecuTorch).

    OUT/TextEncoder.mlpackage  Denoiser.mlpackage  Unet.mlpackage  VAEDecoder.mlpackage      (format coreml)
    OUT/TextEncoder.pte        Denoiser.pte        Unet.pte        VAEDecoder.pte            (format executorch)
    OUT/vocab.json  merges.txt  manifest.json

Every input is validated before anything is written. The folder is built in a temporary directory beside OUT and
moved into place only when every component passed its numeric check, so a failure leaves nothing half-written.
"""

from __future__ import annotations

import json
import numbers
import os
import platform
import shutil
import tempfile
from collections.abc import Callable, Iterable

import torch

from pipelines import EfficientUNet2DConditionModel, SnapFusionPipeline
from pipelines.latency import LatencyTable, host_description

from .bundle import write_tokenizer_files
from pipelines.guidance import is_guidance_embedded

from .convert import (
    DEPLOYMENT_TARGET, MIN_PSNR_DB, ComponentReport, ConvertOptions, _check, component_graph, convert_component,
    coreml_runtime_available, decoder_of, import_coremltools, text_length, unet_batch,
)  # fmt: skip
from .denoiser import describe, step_schedule
from .errors import ExportError
from .options import COMPONENTS, PACKAGE_NAMES, PTE_NAMES, check_options, check_out_dir, parse_format
from .palettize import WEIGHT_THRESHOLD
from .report import ExportReport


# ---------------------------------------------------------------------------------------------- validation


def check_size(pipe: SnapFusionPipeline, height, width) -> tuple[int, int]:
    default = pipe.unet.config.sample_size * pipe.vae_scale_factor
    m = pipe.size_multiple
    sizes = []
    for name, v in (("height", height), ("width", width)):
        v = default if v is None else v
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < m or v % m:
            raise ExportError(
                f"{name} must be a positive multiple of {m} (VAE factor {pipe.vae_scale_factor} x UNet downsampling "
                f"{pipe.unet_downsample_factor}); got {v!r}."
            )
        sizes.append(int(v))
    return sizes[0], sizes[1]


def check_components_present(pipe: SnapFusionPipeline, components: tuple[str, ...]) -> None:
    needs = {"text_encoder": ("text_encoder", "tokenizer"), "unet": ("unet",), "denoiser": ("unet", "scheduler")}
    for c in components:
        if c == "vae_decoder":
            if decoder_of(pipe) is None:
                raise ExportError("the pipeline has no 'vae_decoder' component to export (no vae_decoder, no vae).")
            continue
        for attr in needs[c]:
            if getattr(pipe, attr, None) is None:
                raise ExportError(f"the pipeline has no '{attr}', needed to export '{c}'.")


def unet_estimate(pipe, table: str | os.PathLike | LatencyTable, height: int, width: int) -> dict:
    """UNet milliseconds per call estimated from a per-block latency table (never a measurement)."""
    if isinstance(table, LatencyTable):
        tab, where = table, "LatencyTable object"
    else:
        try:
            tab, where = LatencyTable.load(os.fspath(table)), os.fspath(table)
        except ValueError as e:
            raise ExportError(str(e)) from None
    unet = pipe.unet
    note = None
    if not isinstance(unet, EfficientUNet2DConditionModel):
        try:
            unet = EfficientUNet2DConditionModel.from_unet(unet)  # same blocks, so the table prices it
        except ValueError as e:
            raise ExportError(f"latency table: cannot price {type(pipe.unet).__name__}: {e}") from None
        note = "stock UNet priced as EfficientUNet2DConditionModel.from_unet(unet)"
    f = pipe.vae_scale_factor
    try:
        est = tab.estimate(unet, height // f, width // f, context_len=text_length(pipe))
    except ValueError as e:
        raise ExportError(f"latency table {where}: {e}") from None
    out = {"ms": round(est["total_ms"], 3), "kind": "estimate", "table": where, "table_device": tab.device,
           "table_batch": tab.batch, "label": f"estimate for {tab.device} from latency table {where} "
           f"(table source: {tab.source}); not a measurement"}  # fmt: skip
    if tab.batch != unet_batch(pipe):
        out["label"] += f"; table batch {tab.batch}, the exported UNet runs batch {unet_batch(pipe)}"
    if note:
        out["note"] = note
    return out


# ---------------------------------------------------------------------------------------------- export


def export_pipeline(
    pipe: SnapFusionPipeline,
    out_dir: str | os.PathLike,
    components: str | Iterable[str] = COMPONENTS,
    precision: str = "fp16",
    quantize: str | int | None = "none",
    attention: str = "original",
    height: int | None = None,
    width: int | None = None,
    overwrite: bool = False,
    latency_table: str | os.PathLike | LatencyTable | None = None,
    progress: Callable[[float, str], None] | None = None,
    format: str = "coreml",
) -> ExportReport:
    """Convert ``components`` of ``pipe`` to Core ML packages and / or ExecuTorch files in ``out_dir``; see
    docs/export.md.

    ``format`` "coreml" | "executorch" | "both"; ``precision`` "fp16" | "fp32" (Core ML compute precision; the
    ExecuTorch files compute in float32); ``quantize`` "none", "8" | "6" | "4" (Core ML k-means weight
    palettization bits) or "int8" (ExecuTorch: int8 weights, dynamically quantized activations); ``attention``
    "original" | "split_einsum" (Core ML UNet attention); ``height`` / ``width``
    in pixels (default: the UNet's sample size); ``latency_table``: a pipelines.latency table (JSON path) for an
    estimated UNet latency on the table's device; ``progress(fraction, message)`` is called along the way.
    Raises ``ExportError`` for bad input (before anything is written) and for failed conversions or checks.
    """
    # 1. validate everything before touching the disk
    if not isinstance(pipe, SnapFusionPipeline):
        raise ExportError(f"pipe must be a SnapFusionPipeline; got {type(pipe).__name__}.")
    comps, quant = check_options(components, precision, quantize, attention, format)
    formats = parse_format(format)
    bits = quant if isinstance(quant, int) else None
    height, width = check_size(pipe, height, width)
    check_components_present(pipe, comps)
    out = check_out_dir(out_dir, overwrite)
    estimate = None
    if latency_table is not None:
        if "unet" not in comps:
            raise ExportError("latency_table prices the UNet; add 'unet' to components or leave the table out.")
        estimate = unet_estimate(pipe, latency_table, height, width)
    say = progress or (lambda f, m: None)
    ct_version = None
    if "coreml" in formats:
        ct_version = import_coremltools().__version__
    if "executorch" in formats:
        from .executorch import require_executorch

        require_executorch()
    steps = int(pipe.config.default_num_inference_steps)
    guidance = float(pipe.config.default_guidance_scale)
    schedule = step_schedule(pipe.scheduler, steps) if "denoiser" in comps else None  # refuses a multistep solver

    # 2. convert each component into a temporary folder beside out_dir
    parent = os.path.dirname(out)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.partial-", dir=parent)
    try:
        reports, et_reports = {}, {}
        metadata = {"snapfusion.precision": precision, "snapfusion.quantize_bits": bits or "none",
                    "snapfusion.attention": attention, "snapfusion.image_size": f"{width}x{height}"}  # fmt: skip
        jobs = [(fmt, name) for fmt in formats for name in comps]
        for i, (fmt, name) in enumerate(jobs):
            def local(frac, msg, i=i):
                say(0.95 * (i + frac) / len(jobs), msg)

            if fmt == "coreml":
                opts = ConvertOptions(precision=precision, nbits=bits, min_psnr=MIN_PSNR_DB, progress=local,
                                      metadata=metadata)  # fmt: skip
                rep = convert_component(pipe, name, os.path.join(tmp, PACKAGE_NAMES[name]), opts, height, width,
                                        attention)  # fmt: skip
                if name == "unet" and estimate is not None:
                    rep.latency["estimate"] = estimate
                reports[name] = rep
            else:
                et_reports[name] = _convert_executorch(pipe, name, os.path.join(tmp, PTE_NAMES[name]), quant,
                                                       height, width, local)  # fmt: skip

        # 3. tokenizer files, manifest
        say(0.96, "tokenizer files and manifest")
        text = {"sequence_length": text_length(pipe)}
        if getattr(pipe, "tokenizer", None) is not None:
            text.update(write_tokenizer_files(pipe.tokenizer, tmp))
        if getattr(pipe, "text_encoder", None) is not None:
            text["hidden_size"] = int(pipe.text_encoder.config.hidden_size)
        report = _build_report(pipe, out, reports, precision, bits, attention, height, width, steps, guidance, text,
                               ct_version, formats, et_reports, quant, schedule)  # fmt: skip
        manifest = report.to_dict()
        manifest.pop("out_dir")
        with open(os.path.join(tmp, "manifest.json"), "w") as f:
            json.dump(manifest, f, indent=2)

        # 4. move into place (replacing a previous export only when allowed above)
        os.chmod(tmp, 0o755)
        _move_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    say(1.0, f"exported to {out}")
    return report


def _move_into_place(tmp: str, out: str) -> None:
    if not os.path.exists(out):
        os.rename(tmp, out)
        return
    if not os.listdir(out):
        os.rmdir(out)
        os.rename(tmp, out)
        return
    trash = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.old-", dir=os.path.dirname(out))
    os.rename(out, os.path.join(trash, "old"))
    os.rename(tmp, out)
    shutil.rmtree(trash, ignore_errors=True)


def _convert_executorch(pipe, name: str, path: str, quant, height: int, width: int, progress) -> ComponentReport:
    """``name``'s .pte file, checked in the ExecuTorch runtime against eager PyTorch (PSNR gate) and timed there."""
    from .executorch import convert_executorch

    with component_graph(pipe, name, height, width) as g:
        reference = [r.detach().to(torch.float32).numpy() for r in g.reference]
        fields = convert_executorch(name, g.wrapper, g.inputs, path, quant, MIN_PSNR_DB, reference, _check,
                                    progress)  # fmt: skip
    return ComponentReport(
        name=name, package=os.path.basename(path), inputs=fields["inputs"], outputs=fields["outputs"],
        size_mb=fields["size_mb"], size_mb_before_quantization=None, check={"executorch": fields["check"]},
        latency={"measured": fields["latency"]}, conversion_s=fields["conversion_s"], notes=g.notes,
    )  # fmt: skip


def _build_report(pipe, out, reports, precision, bits, attention, height, width, steps, guidance, text,
                  ct_version, formats=("coreml",), et_reports=None, quant=None,
                  schedule=None) -> ExportReport:  # fmt: skip
    f = pipe.vae_scale_factor
    decoder = decoder_of(pipe)
    image = {"height": height, "width": width, "latent_height": height // f, "latent_width": width // f,
             "vae_scale_factor": f, "latent_channels": int(pipe.unet.config.in_channels)}  # fmt: skip
    if decoder is not None:
        image["scaling_factor"] = float(decoder.config.scaling_factor)
    scheduler = {"class": type(pipe.scheduler).__name__,
                 "config": json.loads(json.dumps({k: v for k, v in dict(pipe.scheduler.config).items()
                                                  if not k.startswith("_")}, default=str))}  # fmt: skip
    embedded = is_guidance_embedded(pipe.unet)
    cfg = guidance > 1.0 and not embedded
    end_to_end = _end_to_end(reports, steps, cfg, unet_batch(pipe))
    executorch = None
    if "executorch" in formats:
        from .executorch import INT8_METHOD, executorch_version

        executorch = {
            "runtime": "ExecuTorch", "version": executorch_version(), "backend": "XNNPACK", "precision": "fp32",
            "quantization": {"scheme": quant or "none", "method": INT8_METHOD if quant else "none"},
            "components": {k: v.to_dict() for k, v in (et_reports or {}).items()},
            "end_to_end": _end_to_end(et_reports or {}, steps, cfg, unet_batch(pipe)),
        }  # fmt: skip
    notes = [
        (
            "Numeric check: the torch.export graph is compared with eager PyTorch in float32 on this host (PSNR >= "
            f"{MIN_PSNR_DB:.0f} dB). It covers graph capture and the wrappers, not Core ML's float16 rounding or the "
            "palettized weights; the Core ML package is checked only where the Core ML runtime exists (macOS)."
        ),
    ]
    if "coreml" in formats:
        notes.append("Compile on a Mac: xcrun coremlcompiler compile Unet.mlpackage OUTDIR (likewise TextEncoder, "
                     "Denoiser, VAEDecoder).")  # fmt: skip
    if "executorch" in formats:
        notes.append("ExecuTorch files are checked in the ExecuTorch runtime itself (PSNR >= "
                     f"{MIN_PSNR_DB:.0f} dB against eager PyTorch) and timed there.")  # fmt: skip
    if image.get("scaling_factor") not in (None, 0.18215):
        notes.append(f"The decoder's scaling factor is {image['scaling_factor']}; apple's Swift Decoder divides by "
                     "0.18215, so feed it latents / scaling_factor yourself.")  # fmt: skip
    return ExportReport(
        out_dir=out, components=reports, precision=precision,
        quantization={"bits": bits, "method": "k-means palettization (per-tensor LUT)" if bits else "none",
                      "weight_threshold": WEIGHT_THRESHOLD if bits else None},
        attention=attention, image=image, text=text, scheduler=scheduler, num_inference_steps=steps,
        guidance_scale=guidance, end_to_end=end_to_end,
        source={"model": pipe.name_or_path, "pipeline": type(pipe).__name__, "unet": type(pipe.unet).__name__,
                "decoder": type(decoder).__name__ if decoder is not None else None},
        environment={"coremltools": ct_version, "torch": torch.__version__, "python": platform.python_version(),
                     "host": host_description(), "coreml_runtime": coreml_runtime_available()},
        deployment_target=f"{DEPLOYMENT_TARGET} / macOS13 (Core ML spec 7)", unet_batch=unet_batch(pipe), notes=notes,
        formats=list(formats), executorch=executorch, guidance_embedded=embedded,
        denoiser=describe(schedule, pipe.scheduler, embedded,
                          getattr(pipe.config, "guidance_scale_range", None)) if schedule is not None else None,
    )  # fmt: skip


def _end_to_end(reports, steps: int, cfg: bool, batch: int = 2) -> dict:
    """text encoder (x2 with CFG: prompt and negative prompt, batch 1 each) + steps x denoiser (or UNet, batch
    ``batch``) + decoder."""
    result: dict = {"measured": None, "estimate": None}
    te_calls = 2 if cfg else 1
    step = "denoiser" if "denoiser" in reports else "unet"
    needed = ("text_encoder", step, "vae_decoder")
    if all(c in reports for c in needed):
        m = {c: reports[c].latency["measured"] for c in needed}
        ms = te_calls * m["text_encoder"]["ms"] + steps * m[step]["ms"] + m["vae_decoder"]["ms"]
        what = (f"denoiser step {m[step]['ms']:.1f} ms" if step == "denoiser" else
                f"UNet {m[step]['ms']:.1f} ms (batch {batch}{', CFG' if cfg else ''})")
        result["measured"] = {
            "ms": round(ms, 3), "label": m[step]["label"], "kind": m[step]["kind"],
            "formula": f"{te_calls} x text encoder {m['text_encoder']['ms']:.1f} ms + {steps} x {what} + decoder "
                       f"{m['vae_decoder']['ms']:.1f} ms",
        }  # fmt: skip
    else:
        missing = [c for c in needed if c not in reports]
        result["measured_note"] = f"not computed: {', '.join(missing)} not exported"
    est = reports.get("unet") and reports["unet"].latency.get("estimate")
    if est:
        result["estimate"] = {
            "ms": round(steps * est["ms"], 3), "label": est["label"], "kind": "estimate",
            "formula": f"{steps} x UNet {est['ms']:.1f} ms (UNet only: the table prices no text encoder or decoder)",
        }  # fmt: skip
    return result


__all__ = ["export_pipeline"]
