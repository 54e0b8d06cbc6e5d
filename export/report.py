"""ExportReport: what an export produced, as JSON (the folder's manifest.json) and as a short Markdown table."""

from __future__ import annotations

from dataclasses import dataclass, field

from .convert import ComponentReport
from .options import MANIFEST_FORMAT

MB = 2**20  # one unit for every size the export shows: package sizes, the zip (as gradio's file widget counts)


def format_size(n_bytes: int, digits: int = 1) -> str:
    """``3_774_873`` -> ``"3.6 MB"`` (MB = 2^20 bytes)."""
    return f"{n_bytes / MB:,.{digits}f} MB"


@dataclass
class ExportReport:
    out_dir: str
    components: dict[str, ComponentReport]
    precision: str
    quantization: dict  # {"bits": None | 8 | 6 | 4, "method": ..., "weight_threshold": ...}
    attention: str
    image: dict  # height, width, latent sizes, vae_scale_factor, latent_channels, scaling_factor
    text: dict  # sequence length, hidden size, tokenizer files
    scheduler: dict  # {"class": ..., "config": {...}}
    num_inference_steps: int  # the model's recommended values (pipeline config)
    guidance_scale: float
    end_to_end: dict  # {"measured": {...} | None, "estimate": {...} | None}
    source: dict  # model path / id or preset, pipeline class
    environment: dict
    deployment_target: str
    unet_batch: int
    notes: list[str] = field(default_factory=list)
    formats: list[str] = field(default_factory=lambda: ["coreml"])
    executorch: dict | None = None  # runtime, backend, quantization, components (ComponentReport dicts), end_to_end
    guidance_embedded: bool = False
    denoiser: dict | None = None  # export.denoiser.describe: what the Denoiser computes and how to call it

    @property
    def cfg(self) -> bool:
        return self.guidance_scale > 1.0 and not self.guidance_embedded

    def to_dict(self) -> dict:
        """JSON-able; this is also the content of ``manifest.json`` (which leaves out ``out_dir``)."""
        return {
            "format": MANIFEST_FORMAT,
            "formats": self.formats,
            "out_dir": self.out_dir,
            "source": self.source,
            "components": {k: v.to_dict() for k, v in self.components.items()},
            "precision": self.precision,
            "quantization": self.quantization,
            "attention": self.attention,
            "deployment_target": self.deployment_target,
            "image": self.image,
            "text": self.text,
            "scheduler": self.scheduler,
            "num_inference_steps": self.num_inference_steps,
            "guidance_scale": self.guidance_scale,
            "cfg": self.cfg,
            "guidance_embedded": self.guidance_embedded,
            "unet_batch": self.unet_batch,
            "denoiser": self.denoiser,
            "executorch": self.executorch,
            "numeric_checks": {k: _check_summary(v.check) for k, v in self.components.items()},
            "end_to_end": self.end_to_end,
            "environment": self.environment,
            "notes": self.notes,
        }

    def to_markdown(self) -> str:
        """A short human table per format: per component file, size, PSNR and which check, latency and its kind."""
        lines = self._coreml_markdown() if "coreml" in self.formats else []
        et = self.executorch
        if et:
            if lines:
                lines.append("")
            q = et["quantization"]["scheme"]
            lines += [
                f"ExecuTorch export to `{self.out_dir}`: {et['backend']} delegate, "
                f"{'int8 weights (dynamic int8 activations)' if q == 'int8' else 'fp32'}, "
                f"{self.image['width']}x{self.image['height']} px, {self.num_inference_steps} steps, "
                f"guidance {self.guidance_scale:g}",
                "",
                "| component | file | size (MB = 2^20 bytes) | numeric check | latency |",
                "|---|---|---|---|---|",
            ]
            for c in et["components"].values():
                chk = c["check"]["executorch"]
                lines.append(f"| {c['name']} | {c['package']} | {format_size(c['size_mb'] * MB, 2)} | ExecuTorch "
                             f"runtime vs eager: {chk['psnr_db']:.1f} dB ({'pass' if chk['passed'] else 'FAIL'}) | "
                             f"{_latency_cell(c['latency'])} |")  # fmt: skip
            if et["end_to_end"].get("measured"):
                m = et["end_to_end"]["measured"]
                lines += ["", f"End to end (ExecuTorch): {m['ms']:.1f} ms = {m['formula']}, {m['label']}"]
        return "\n".join(lines)

    def _coreml_markdown(self) -> list[str]:
        bits = self.quantization.get("bits")
        lines = [
            (
                f"Core ML export to `{self.out_dir}`: {self.precision}, "
                f"{f'{bits}-bit k-means palettization' if bits else 'no quantization'}, attention {self.attention}, "
                f"{self.image['width']}x{self.image['height']} px, {self.num_inference_steps} steps, "
                f"guidance {self.guidance_scale:g}{' (CFG, UNet batch 2)' if self.cfg else ''}"
                f"{' (guidance-embedded UNet: one pass per step)' if self.guidance_embedded else ''}"
            ),
            "",
            "| component | package | size (MB = 2^20 bytes) | numeric check | latency |",
            "|---|---|---|---|---|",
        ]
        for c in self.components.values():
            size = format_size(c.size_mb * MB, 2)
            if c.size_mb_before_quantization is not None:
                size += f" ({format_size(c.size_mb_before_quantization * MB, 2)} before)"
            lines.append(f"| {c.name} | {c.package} | {size} | {_check_cell(c.check)} | {_latency_cell(c.latency)} |")
        e2e = self.end_to_end
        if e2e.get("measured"):
            m = e2e["measured"]
            lines += ["", f"End to end: {m['ms']:.1f} ms = {m['formula']}, {m['label']}"]
        elif e2e.get("measured_note"):
            lines += ["", f"End to end: {e2e['measured_note']}"]
        if e2e.get("estimate"):
            est = e2e["estimate"]
            lines.append(f"Estimate (not a measurement): {est['ms']:.1f} ms = {est['formula']}, {est['label']}")
        return lines


def _check_summary(check: dict) -> dict:
    return {k: ({"ran": True, "psnr_db": v["psnr_db"], "passed": v["passed"]} if v.get("ran")
                else {"ran": False, "reason": v.get("reason", "")}) for k, v in check.items()}  # fmt: skip


def _check_cell(check: dict) -> str:
    parts = []
    g = check.get("exported_graph")
    if g and g.get("ran"):
        parts.append(f"exported graph vs eager: {g['psnr_db']:.1f} dB ({'pass' if g['passed'] else 'FAIL'})")
    c = check.get("coreml", {})
    if c.get("ran"):
        parts.append(f"Core ML package: {c['psnr_db']:.1f} dB ({'pass' if c['passed'] else 'FAIL'})")
    else:
        parts.append("Core ML package: not run (no Core ML runtime)")
    return "; ".join(parts)


def _latency_cell(latency: dict) -> str:
    m = latency["measured"]
    text = f"{m['ms']:.1f} ms, {m['label']}, median of {m['runs']}"
    est = latency.get("estimate")
    if est:
        text += f"; estimate {est['ms']:.1f} ms per call ({est['label']})"
    return text
