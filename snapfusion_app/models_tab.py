"""The Model tab's numbers: the loaded UNets (left, right and the one-pass student when loaded) by paper stage,
parameter and FLOP totals, the block plot, the bundle's evaluation files. Counts from the loaded modules, not
timings."""

from __future__ import annotations

from pathlib import Path

from .sides import Side

COLUMNS = {"left": "left", "right": "right", "onepass": "one-pass"}  # each model's column prefix in the tables


def column(key: str) -> str:
    return COLUMNS.get(key, key)


def stage_headers(sides: dict[str, Side]) -> list[str]:
    """The stage table's headers: CA and RB blocks per model, then parameters per model."""
    return (["stage", "resolution"] + [f"{column(k)} {kind}" for k in sides for kind in ("CA", "RB")]
            + [f"{column(k)} params (M)" for k in sides])  # fmt: skip


def totals_headers(sides: dict[str, Side]) -> list[str]:
    return [""] + [f"{column(k)}: {s.name}" for k, s in sides.items()]


def _params(module) -> int:
    from pipelines.profiling import count_params

    return int(count_params(module)) if module is not None else 0


def _fmt(v):
    return float(f"{v:.4g}") if isinstance(v, float) else v


def unet_passes(side: Side) -> tuple[int, str]:
    """UNet passes per step at the model's recommended guidance, and why: 2 with CFG (one batch of 2), 1 when the
    guidance scale is a UNet input or CFG is off (guidance <= 1)."""
    if side.guidance_embedded:
        return 1, "1 (guidance as input)"
    if side.default_guidance > 1.0:
        return 2, "2 (CFG)"
    return 1, "1 (no CFG)"


def model_summary(sides: dict[str, Side]) -> tuple[list[list], list[list]]:
    """(rows by paper stage, rows of totals) for each model in ``sides`` (in its order); counts, not
    measurements."""
    from pipelines.profiling import architecture_table, count_decoder_macs, count_decoder_params, count_macs

    tables = {k: architecture_table(s.pipe.unet) for k, s in sides.items()}
    stages = []
    for rows in tables.values():
        stages += [row["stage"] for row in rows if row["stage"] not in stages]
    by_stage = {k: {row["stage"]: row for row in rows} for k, rows in tables.items()}
    stage_rows = []
    for stage in stages:
        resolution = next(by_stage[k][stage]["resolution"] for k in sides if stage in by_stage[k])
        row = [stage, resolution]
        for k in sides:
            r = by_stage[k].get(stage, {})
            row += [r.get("CA", 0), r.get("RB", 0)]
        for k in sides:
            row.append(round(by_stage[k].get(stage, {}).get("params", 0) / 1e6, 3))
        stage_rows.append(row)
    totals = {}
    for k, s in sides.items():
        pipe, (h, w) = s.pipe, s.image_size
        decoder = pipe.decoder  # what decodes latents
        lh, lw = h // pipe.vae_scale_factor, w // pipe.vae_scale_factor  # latent size
        macs = count_macs(pipe.unet, lh, lw, batch=1, context_len=pipe.tokenizer.model_max_length)  # one pass
        passes, passes_text = unet_passes(s)
        dec_macs = count_decoder_macs(decoder, lh, lw)
        totals[k] = {
            "image size": f"{h}×{w}",
            "text encoder params (M)": _params(pipe.text_encoder) / 1e6,
            "UNet params (M)": _params(pipe.unet) / 1e6,
            "decoder params (M)": count_decoder_params(decoder) / 1e6,
            "UNet GFLOPs per pass (batch 1)": 2 * macs / 1e9,
            "UNet passes per step (default guidance)": passes_text,
            "UNet GFLOPs per step (× passes)": 2 * macs * passes / 1e9,
            "default steps": s.default_steps,
            "default guidance": s.default_guidance,
            "UNet evaluations per image (× default steps)": passes * s.default_steps,
            "UNet GFLOPs per image (× default steps)": 2 * macs * passes * s.default_steps / 1e9,
            "decoder GFLOPs per image": 2 * dec_macs / 1e9,
        }
    first = next(iter(totals.values()))
    total_rows = [[name] + [_fmt(totals[k][name]) for k in sides] for name in first]
    return stage_rows, total_rows


def architecture_plot(stage_rows: list[list], sides: dict[str, Side], path: Path) -> Path:
    """Grouped bars of CA and RB blocks per paper stage, one bar per model, as a PNG."""
    from matplotlib.figure import Figure

    stage_rows = [r for r in stage_rows if r[0] != "Other"]  # conv_in, time embedding, output head: no blocks
    stages = [r[0] for r in stage_rows]
    x = list(range(len(stages)))
    n = len(sides)
    width = 0.8 / n
    colors = {"left": "#9ca3af", "right": "#16a34a", "onepass": "#2563eb"}
    fig = Figure(figsize=(9, 3.4), dpi=110, layout="constrained")
    kinds = (("CA (cross-attention)", 0), ("RB (ResNet)", 1))  # offset of each count in a model's (CA, RB) pair
    for ax, (kind, offset) in zip(fig.subplots(1, 2, sharey=True), kinds, strict=True):
        for j, (k, s) in enumerate(sides.items()):
            col = 2 + 2 * j + offset
            ax.bar([i + (j - (n - 1) / 2) * width for i in x], [r[col] for r in stage_rows], width,
                   label=f"{column(k)}: {s.name}", color=colors.get(k))  # fmt: skip
        ax.set_xticks(x, stages, rotation=30)
        ax.set_title(f"{kind} blocks per stage")
        ax.grid(axis="y", alpha=0.3)
    fig.axes[0].set_ylabel("blocks")
    fig.axes[0].legend(fontsize=7, loc="upper left")
    fig.savefig(path)
    return path


def eval_files(sides: dict[str, Side]) -> tuple[list[Path], list[Path]]:
    """The bundle's evaluation results (``eval/*.png``, ``eval/*.json`` next to a local model folder)."""
    pngs, jsons = [], []
    seen = set()
    for s in sides.values():
        folder = Path(s.source).expanduser()
        if not folder.is_dir():
            continue
        ev = folder.resolve().parent / "eval"
        if ev.is_dir() and ev not in seen:
            seen.add(ev)
            pngs += sorted(ev.glob("*.png"))
            jsons += sorted(ev.glob("*.json"))
    return pngs, jsons
