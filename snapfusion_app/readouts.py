"""What the Compare tab shows, rendered from measured timings: per-side readouts, the speed-up banner, live progress,
the side headers. Pure functions of their inputs (no gradio, no models)."""

from __future__ import annotations

import html
import math
from typing import Any

GREEN = ("#16a34a", "22,163,74", "#15803d")  # border, background rgb, text
AMBER = ("#d97706", "217,119,6", "#b45309")
GRAY = ("#6b7280", "107,114,128", "#374151")
START_HINT = "Press <b>Generate both</b>: the measured speed-up of the right side appears here."


def side_name(key: str) -> str:
    return "left" if key == "left" else "right"


def unet_passes(timings: dict) -> int:
    """UNet evaluations per denoising step: 2 with classifier-free guidance (one batch of 2), else 1 (no CFG, or a
    guidance-embedded UNet that takes the guidance scale as an input)."""
    return 2 if timings.get("cfg") else 1


def unet_evaluations(timings: dict) -> int:
    """UNet evaluations per image: steps run x passes per step."""
    return timings["steps_run"] * unet_passes(timings)


def passes_text(timings: dict) -> str:
    """How the UNet ran each step, in words."""
    if timings.get("cfg"):
        return "CFG: 2 passes per step, one batch of 2"
    if timings.get("guidance_embedded"):
        return "1 pass per step, guidance as input"
    return "no CFG: 1 pass per step"


def settings_text(timings: dict) -> str:
    """The settings a run used, from its timings: "50 steps, CFG 7.5", "4 steps, guidance 4.5 as input" (a
    guidance-embedded UNet) or "4 steps, no CFG"."""
    guidance = f" {timings['guidance']:g}" if "guidance" in timings else ""
    if timings.get("cfg"):
        how = f"CFG{guidance}"
    elif timings.get("guidance_embedded"):
        how = f"guidance{guidance} as input"
    else:
        how = "no CFG"
    return f"{timings['steps_run']} steps, {how}"


def readout_markdown(timings: dict, guidance: float, device_text: str, notes: list[str], role: str = "") -> str:
    """Measured timings of one run as a small table (``timings`` from ``SnapFusionPipeline``), with the count of
    UNet evaluations it made; ``role`` names the model that ran ("One-pass student")."""
    n, passes = timings["steps_run"], unet_passes(timings)
    who = f"{html.escape(role)}: " if role else ""
    lines = [
        f"**{who}{n} steps · guidance {guidance:g}** · {timings['total_ms']:,.0f} ms in total",
        "",
        "| part | measured |",
        "|---|---|",
        f"| text encoder | {timings['text_encoder_ms']:,.1f} ms |",
        f"| UNet | {timings['unet_ms_mean']:,.1f} ms/step × {n} steps = {timings['unet_ms_total']:,.0f} ms "
        f"({passes_text(timings)}) |",
        f"| decoder | {timings['decoder_ms']:,.1f} ms |",
        f"| **total** | **{timings['total_ms']:,.0f} ms** |",
        "",
        f"UNet evaluations: {n} steps × {passes} {'passes' if passes > 1 else 'pass'} per step = **{n * passes}** "
        "for this image (a count, not a measurement).",
        "",
        f"Measured on {html.escape(device_text)}, this run.",
    ]
    lines += [f"\n> {note}" for note in notes]
    return "\n".join(lines)


def truncation_note(what: str, limit: int, ignored: int, dropped: str) -> str:
    """The readout's note for a prompt past the text encoder's limit; ``dropped`` is the ignored text as typed."""
    note = f"{what} truncated: this text encoder reads {limit} tokens; the last {ignored} tokens were ignored"
    if not dropped:
        return note + "."
    shown = dropped if len(dropped) <= 80 else dropped[:77] + "..."
    return note + f" (text from: “{html.escape(shown, quote=False)}”)."


def speedup_ratios(left: dict, right: dict) -> dict[str, float]:
    """Right side's speed-up over the left: total time ratio and UNet-part ratio (left / right)."""
    return {
        "total": left["total_ms"] / right["total_ms"],
        "unet": left["unet_ms_total"] / right["unet_ms_total"] if right["unet_ms_total"] > 0 else float("nan"),
    }


def times_text(x: float) -> str:
    return f"{x:.1f}×" if x < 10 else f"{x:.0f}×"


def ratio_text(ratio: float) -> str:
    """left / right time ratio as words: "7.9× faster" or "1.3× slower"."""
    if not math.isfinite(ratio) or ratio <= 0:
        return "not comparable"
    return f"{times_text(ratio)} faster" if ratio >= 1 else f"{times_text(1 / ratio)} slower"


def _box(colors: tuple[str, str, str], inner: str) -> str:
    border, rgb, _ = colors
    return (f"<div style='border:2px solid {border};border-radius:10px;padding:10px 16px;text-align:center;"
            f"background:rgba({rgb},0.08)'>{inner}</div>")  # fmt: skip


def waiting_html(message: str = START_HINT) -> str:
    """The banner before there is a speed-up to show."""
    return _box(GREEN, f"<div style='font-size:1.1em'>{message}</div>")


def speedup_head(left: dict, right: dict) -> str:
    """The banner's headline, naming what is compared: "Right side (8 steps, CFG 4.5) is 7.9× faster than the left
    side (50 steps, CFG 7.5)"; with the one-pass student "Right side (4 steps, guidance 4.5 as input) is ..."."""
    ratio = ratio_text(speedup_ratios(left, right)["total"])
    return f"Right side ({settings_text(right)}) is {ratio} than the left side ({settings_text(left)})"


def speedup_html(left: dict, right: dict, note: str = "") -> str:
    """The banner above the images: the right side's measured speed-up over the left, with each side's settings."""
    r = speedup_ratios(left, right)
    colors = GREEN if r["total"] >= 1 else AMBER
    detail = (
        f"total {left['total_ms']:,.0f} ms → {right['total_ms']:,.0f} ms · "
        f"UNet part {ratio_text(r['unet'])} ({left['steps_run']} steps: {left['unet_ms_total']:,.0f} ms → "
        f"{right['steps_run']} steps: {right['unet_ms_total']:,.0f} ms) · UNet evaluations per image "
        f"{unet_evaluations(left)} → {unet_evaluations(right)} · measured on {html.escape(right['device'])}"
    )
    if note:
        detail += f"<br>{html.escape(note)}"
    head = html.escape(speedup_head(left, right), quote=False)
    head = f"<div style='font-size:1.6em;font-weight:700;color:{colors[2]}'>{head}</div>"
    return _box(colors, f"{head}<div>{detail}</div>")


def cancelled_html(message: str) -> str:
    """The banner after the visitor pressed Cancel."""
    return _box(GRAY, f"<div style='font-size:1.5em;font-weight:700;color:{GRAY[2]}'>Cancelled.</div>"
                      f"<div>{message}</div>")  # fmt: skip


def running_markdown(step: int, steps: int, seconds: float) -> str:
    """Live progress of one side, shown in its readout while it runs."""
    filled = round(20 * step / steps) if steps else 0
    return f"**Running: step {step}/{steps}** · {seconds:.1f} s so far\n\n`{'█' * filled}{'░' * (20 - filled)}`"


def cancelled_markdown(step: int | None, steps: int) -> str:
    """A side's readout after Cancel: where it stopped, or that it never started."""
    if step is None:
        return "**Cancelled** before this side ran: no image, no timings."
    return f"**Cancelled at step {step}/{steps}**: no image, no timings."


def side_header(arrow: str, label: str, name: str, steps: Any, guidance: Any) -> str:
    """The heading of one side: its label, the settings in its sliders, the model's name (as inline code)."""
    try:
        settings = f"{int(steps)} steps · guidance {float(guidance):g}"
    except (TypeError, ValueError, OverflowError):
        settings = ""
    return f"### {arrow} {label}: {settings}\n`{name.replace('`', chr(39))}`"
