"""The Model tab's numbers: both UNets by paper stage, parameter and FLOP totals, the block plot, the bundle's
evaluation files. Counts from the loaded modules, not timings."""

from __future__ import annotations

from pathlib import Path

from .sides import Side

STAGE_HEADERS = ["stage", "resolution", "left CA", "left RB", "right CA", "right RB", "left params (M)",
                 "right params (M)"]  # fmt: skip


def _params(module) -> int:
    from pipelines.profiling import count_params

    return int(count_params(module)) if module is not None else 0


def _fmt(v):
    return float(f"{v:.4g}") if isinstance(v, float) else v


def model_summary(sides: dict[str, Side]) -> tuple[list[list], list[list]]:
    """(rows by paper stage, rows of totals) for both sides; counts, not measurements."""
    from pipelines.profiling import architecture_table, count_decoder_macs, count_decoder_params, count_macs

    tables = {k: architecture_table(s.pipe.unet) for k, s in sides.items()}
    stages = [row["stage"] for row in tables["left"]]
    stages += [row["stage"] for row in tables["right"] if row["stage"] not in stages]
    by_stage = {k: {row["stage"]: row for row in rows} for k, rows in tables.items()}
    stage_rows = []
    for stage in stages:
        row = [stage, (by_stage["left"].get(stage) or by_stage["right"][stage])["resolution"]]
        for k in ("left", "right"):
            r = by_stage[k].get(stage, {})
            row += [r.get("CA", 0), r.get("RB", 0)]
        for k in ("left", "right"):
            row.append(round(by_stage[k].get(stage, {}).get("params", 0) / 1e6, 3))
        stage_rows.append(row)
    totals = {}
    for k, s in sides.items():
        pipe, (h, w) = s.pipe, s.image_size
        decoder = pipe.vae_decoder if pipe.vae_decoder is not None else pipe.vae  # what decodes latents
        lh, lw = h // pipe.vae_scale_factor, w // pipe.vae_scale_factor  # latent size
        macs = count_macs(pipe.unet, lh, lw, batch=2, context_len=pipe.tokenizer.model_max_length)  # CFG: batch 2
        dec_macs = count_decoder_macs(decoder, lh, lw)
        totals[k] = {
            "image size": f"{h}×{w}",
            "text encoder params (M)": _params(pipe.text_encoder) / 1e6,
            "UNet params (M)": _params(pipe.unet) / 1e6,
            "decoder params (M)": count_decoder_params(decoder) / 1e6,
            "UNet GFLOPs per step (CFG, batch 2)": 2 * macs / 1e9,
            "default steps": s.default_steps,
            "default guidance": s.default_guidance,
            "UNet GFLOPs per image (× default steps)": 2 * macs * s.default_steps / 1e9,
            "decoder GFLOPs per image": 2 * dec_macs / 1e9,
        }
    total_rows = [[name, _fmt(totals["left"][name]), _fmt(totals["right"][name])] for name in totals["left"]]
    return stage_rows, total_rows


def architecture_plot(stage_rows: list[list], left_name: str, right_name: str, path: Path) -> Path:
    """Grouped bars of CA and RB blocks per paper stage, left vs right, as a PNG."""
    from matplotlib.figure import Figure

    stage_rows = [r for r in stage_rows if r[0] != "Other"]  # conv_in, time embedding, output head: no blocks
    stages = [r[0] for r in stage_rows]
    x = list(range(len(stages)))
    fig = Figure(figsize=(9, 3.4), dpi=110, layout="constrained")
    kinds = (("CA (cross-attention)", 2), ("RB (ResNet)", 3))  # columns of the left counts in stage_rows
    for ax, (kind, col) in zip(fig.subplots(1, 2, sharey=True), kinds, strict=True):
        ax.bar([i - 0.2 for i in x], [r[col] for r in stage_rows], 0.4, label=f"left: {left_name}", color="#9ca3af")
        ax.bar([i + 0.2 for i in x], [r[col + 2] for r in stage_rows], 0.4, label=f"right: {right_name}",
               color="#16a34a")  # fmt: skip
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
