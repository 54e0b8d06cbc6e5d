"""Quality: the bundle's evaluation table and FID-vs-alignment curve, read from ``training.evaluate`` JSON files.

Reads every ``<bundle>/eval/*.json`` and ``<bundle>/eval/*/results.json`` (or the files given with ``--eval-json``):
per guidance scale a text-alignment score (the toy world's CLIP-score stand-in), an FID and its true-vs-true floor.
Nothing is computed here; when no file is found the section says so and is skipped.

The steps-vs-quality curve (``quality_steps.png``) reads ``<bundle>/eval/steps/<series>_<steps>.json``: each model's
best FID and best alignment (over its evaluated guidance scales) against the UNet evaluations per image (steps x
passes per step), e.g. the one-pass student at 1, 2, 4 and 8 steps against the teacher sampled by plain DDIM with
CFG at the same number of UNet evaluations. A series' own evaluation, ``<bundle>/eval/<series>.json`` (the shipped
model at its recommended steps: ``teacher.json``, ``student.json``, ``onepass.json``), is a point of it too, unless a
steps file has the same step count.

    python -m benchmarks.quality [--bundle bundle] [--eval-json FILE ...] [--out-dir docs] [--overwrite]
"""

from __future__ import annotations

import glob
import json
import math
import os

from . import common

NAME = "quality"
# Paper Fig. 4 (MS-COCO 2014 val, 30K prompts): CLIP / FID read off its plot (about +-0.1 FID, +-0.001 CLIP).
PAPER_ROWS = [
    ("2.5", "0.283 / 13.7 (its best FID)", "0.265 / 20.7"),
    ("4.0", "0.295 / 15.1", "0.290 / 13.9"),
    ("4.5", "-", "0.294 / 13.7 (its best FID)"),
    ("6.0", "0.301 / 17.4", "0.301 / 14.3"),
    ("7.5", "0.303 / 18.8", "0.305 / 15.7"),
]


# Series of the steps-vs-quality curve (file-name prefix in <bundle>/eval/steps/): legend, UNet passes per step.
STEP_SERIES = {
    "onepass": ("one-pass student (guidance as input)", 1),
    "teacher": ("teacher, plain DDIM with CFG", 2),
    "student": ("SnapFusion student, CFG", 2),
}

BUNDLE_HELP = "folder whose eval/ holds the JSON files (default: bundle)"
# The files read instead of <bundle>/eval's: flag, metavar, help.
FILES_ARG = ("--eval-json", "FILE", "evaluation JSON written by training.evaluate (repeatable; default: found under "
             "<bundle>/eval)")  # fmt: skip


def parse_args(argv=None):
    return common.parse_reader_args(NAME, __doc__.split("\n\n")[0], argv, BUNDLE_HELP, *FILES_ARG)


def _number(v) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return None
    return float(v)


def _first(d: dict, *keys):
    return next((d[k] for k in keys if k in d), None)


def read_eval(path: str) -> dict:
    """One model's curve from an evaluation JSON; raises ValueError saying what is missing."""
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot read it ({e})") from None
    if isinstance(data, dict) and isinstance(data.get("results"), list):
        raw, top = data["results"], data
    elif isinstance(data, list):
        raw, top = data, {}
    elif isinstance(data, dict):  # {"2.5": {...}, ...} or {"per_guidance": {...}}
        table = data.get("per_guidance", data)
        raw = [dict(v, guidance=k) for k, v in table.items() if isinstance(v, dict)]
        top = data
    else:
        raise ValueError(f"expected a JSON object or list, got {type(data).__name__}")
    rows = []
    for r in raw:
        if not isinstance(r, dict):
            continue
        try:
            g = float(_first(r, "guidance", "guidance_scale", "cfg"))
        except (TypeError, ValueError):
            continue
        a, f = _number(_first(r, "alignment", "clip_score", "clip")), _number(r.get("fid"))
        if a is None or f is None:
            continue
        floor = _number(_first(r, "floor_fid", "fid_floor")) or _number(_first(top, "floor_fid", "fid_floor"))
        rows.append(
            {
                "guidance": g,
                "alignment": a,
                "fid": f,
                "fid_floor": floor,
                "seconds_per_image": _number(r.get("seconds_per_image")),
            }
        )
    if not rows:
        raise ValueError("no rows with a guidance scale, an 'alignment' and an 'fid' value")
    rows.sort(key=lambda r: r["guidance"])
    stem = os.path.splitext(os.path.basename(path))[0]
    if stem == "results":
        stem = os.path.basename(os.path.dirname(os.path.abspath(path)))
    label = top.get("label") or (os.path.basename(os.path.normpath(str(top["model"]))) if top.get("model") else stem)
    steps = _first(top, "steps", "num_inference_steps") or _first(raw[0], "steps", "num_inference_steps")
    return {"file": path, "label": str(label), "steps": steps, "num_images": top.get("num_images"), "rows": rows}


def run(args) -> dict:
    res = common.header(NAME, args)
    files = list(args.eval_json)
    if not files:
        files = sorted(glob.glob(os.path.join(args.bundle, "eval", "*.json")))
        files += sorted(glob.glob(os.path.join(args.bundle, "eval", "*", "results.json")))
    res["files"] = files
    res["models"], res["ignored"] = [], []
    for path in files:
        try:
            res["models"].append(read_eval(path))
        except ValueError as e:
            res["ignored"].append({"file": path, "reason": str(e)})
    res["steps_curve"] = read_steps_curve(os.path.join(args.bundle, "eval"), res["ignored"])
    res["skipped"] = not res["models"]
    if res["skipped"]:
        where = ", ".join(args.eval_json) or f"{args.bundle}/eval/*.json or {args.bundle}/eval/*/results.json"
        res["reason"] = f"no usable evaluation JSON ({where})."
    return res


def read_steps_curve(eval_dir: str, ignored: list) -> dict[str, list[dict]]:
    """Series name -> points (steps, UNet evaluations, best FID and alignment with their guidance), by steps: the
    files in ``<eval_dir>/steps/``, then each series' own ``<eval_dir>/<series>.json`` at a step count not yet seen."""
    series: dict[str, list[dict]] = {}
    paths = sorted(glob.glob(os.path.join(eval_dir, "steps", "*_*.json")))
    own = [os.path.join(eval_dir, f"{name}.json") for name in STEP_SERIES]
    for path in paths + [p for p in own if os.path.isfile(p)]:
        name, is_own = os.path.basename(path)[: -len(".json")], path in own
        if not is_own:
            name = name.rsplit("_", 1)[0]
        try:
            m = read_eval(path)
            steps = int(m["steps"])
        except (ValueError, TypeError) as e:
            ignored.append({"file": path, "reason": str(e) or "no step count"})
            continue
        if is_own and any(p["steps"] == steps for p in series.get(name, [])):
            continue
        passes = STEP_SERIES.get(name, (name, 1))[1]
        fid = min(m["rows"], key=lambda r: r["fid"])
        align = max(m["rows"], key=lambda r: r["alignment"])
        series.setdefault(name, []).append({
            "file": path, "steps": steps, "unet_evaluations": steps * passes, "fid": fid["fid"],
            "fid_guidance": fid["guidance"], "alignment": align["alignment"], "alignment_guidance": align["guidance"],
        })  # fmt: skip
    return {k: sorted(v, key=lambda p: p["steps"]) for k, v in series.items()}


def plot_steps(res: dict, path: str) -> None:
    """Best FID and best alignment against UNet evaluations per image, one line per series (points: steps)."""
    plt = common.pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), dpi=110)
    for name, points in res["steps_curve"].items():
        label = STEP_SERIES.get(name, (name, 1))[0]
        x = [p["unet_evaluations"] for p in points]
        for ax, key in zip(axes, ("fid", "alignment")):
            (line,) = ax.plot(x, [p[key] for p in points], "o-", label=label)
            for p in points:
                ax.annotate(f"{p['steps']} st", (p["unet_evaluations"], p[key]), textcoords="offset points",
                            xytext=(3, 3), fontsize=7, color=line.get_color())  # fmt: skip
    for ax, what in zip(axes, ("best FID (lower is better)", "best alignment (higher is better)")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("UNet evaluations per image (steps x passes)")
        ax.set_title(what, fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    common.save_figure(fig, path)


def plot(res: dict, paths: dict[str, str]) -> None:
    """The FID-vs-alignment curve (``curve``) and, with data, the steps-vs-quality curve (``steps``)."""
    if res.get("steps_curve"):
        plot_steps(res, paths["steps"])
    plot_curve(res, paths["curve"])


def plot_curve(res: dict, path: str) -> None:
    plt = common.pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.6), dpi=110)
    for m in res["models"]:
        rows = m["rows"]
        steps = f", {m['steps']} steps" if m["steps"] else ""
        (line,) = ax.plot([r["alignment"] for r in rows], [r["fid"] for r in rows], "o-", label=f"{m['label']}{steps}")
        for r in rows:
            ax.annotate(
                f"{r['guidance']:g}",
                (r["alignment"], r["fid"]),
                textcoords="offset points",
                xytext=(4, 4),
                fontsize=7,
                color=line.get_color(),
            )
        floors = [r["fid_floor"] for r in rows if r["fid_floor"] is not None]
        if floors:
            ax.axhline(floors[0], ls="--", lw=0.8, color=line.get_color())
    ax.set_xlabel("text alignment (higher is better)")
    ax.set_ylabel("FID (lower is better; dashed: true-vs-true floor)")
    ax.set_title("FID vs text alignment over guidance scales (points labelled by CFG)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    common.save_figure(fig, path)


def markdown(res: dict, out: common.Outputs) -> str:
    lines = ["## Quality: FID vs text alignment (the bundle's evaluation)", "", common.machine_paragraph(res), ""]
    if res["skipped"]:
        lines += [
            f"Skipped: {res['reason']} Write them with `python -m training.evaluate --model bundle/student "
            f"--out bundle/eval/student` (and the same for the teacher), then re-run this benchmark.",
            "",
        ]
    else:
        lines += [
            "Read from the evaluation files written by `training.evaluate` (toy-world metrics: alignment is "
            "the probe's fraction of prompted attributes found, FID is on the probe's features; see that "
            "module). Not MS-COCO numbers.",
            "",
        ]
        rows = []
        for m in res["models"]:
            best = min(m["rows"], key=lambda r: r["fid"])
            for r in m["rows"]:
                rows.append(
                    [
                        m["label"],
                        m["steps"],
                        f"{r['guidance']:g}",
                        f"{r['alignment']:.4f}",
                        f"{r['fid']:.3f}" + (" (best)" if r is best else ""),
                        None if r["fid_floor"] is None else f"{r['fid_floor']:.3f}",
                    ]
                )
        lines += [
            common.md_table(["model", "steps", "CFG", "alignment", "FID", "FID floor"], rows),
            "",
            f"![FID vs alignment]({out.png_link('curve')})",
            "",
        ]
        sources = ", ".join(f"`{m['file']}`" for m in res["models"])
        lines += [f"Sources: {sources}.", ""]
    if res.get("steps_curve"):
        rows = [[STEP_SERIES.get(name, (name, 1))[0], p["steps"], p["unet_evaluations"],
                 f"{p['fid']:.1f} (CFG {p['fid_guidance']:g})",
                 f"{p['alignment']:.4f} (CFG {p['alignment_guidance']:g})"]
                for name, points in res["steps_curve"].items() for p in points]  # fmt: skip
        lines += [
            "### Steps vs quality",
            "",
            "Each model at its best evaluated guidance scale (per metric), from `<bundle>/eval/steps/` and each "
            "series' own `<bundle>/eval/<series>.json`:",
            "",
            common.md_table(["model", "steps", "UNet evaluations", "best FID", "best alignment"], rows),
            "",
            f"![Steps vs quality]({out.png_link('steps')})",
            "",
        ]
    for ign in res["ignored"]:
        lines += [f"Ignored `{ign['file']}`: {ign['reason']}.", ""]
    lines += [
        "For reference, the paper's own MS-COCO numbers (CLIP score / FID, values read off its Fig. 4):",
        "",
        common.md_table(["CFG", "SD-v1.5 50 steps", "SnapFusion 8 steps"], [list(r) for r in PAPER_ROWS]),
    ]
    return "\n".join(lines)


def main(argv=None) -> int:
    """Read the evaluation files; write quality.json, .md and (with data) _curve.png."""
    return common.run_section(NAME, argv, parse_args, run, markdown, plot)


if __name__ == "__main__":
    raise SystemExit(main())
