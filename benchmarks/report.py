"""Assemble ``<out>/benchmarks.md`` from the sections the benchmark scripts wrote under ``<out>/benchmarks/``.

python -m benchmarks.report [--out-dir docs] [--overwrite]
"""

from __future__ import annotations

import argparse
import json
import os

from . import common

TITLE = "# Benchmarks"


def _load(out_dir: str, name: str) -> dict | None:
    path = os.path.join(out_dir, "benchmarks", f"{name}.json")
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError):
        return None


def _verdict(met: bool | None, short: str) -> str:
    """Verdict cell: met, or missed and by how much (``short``)."""
    return "-" if met is None else ("met" if met else f"**missed** ({short})")


def headline_rows(out_dir: str) -> list[list]:
    rows = []
    u = _load(out_dir, "unet_step")
    if u:
        sf, most = u["models"]["snapfusion"], u["target"]["snapfusion_over_sd15_max"]
        rows.append(
            [
                f"UNet per step, SnapFusion preset / SD-v1.5 ({u['image'][0]}px, batch {u['batch']})",
                f"{sf['ratio_to_sd15']:.3f}x ({common.fmt_ms(sf['latency']['median_ms'])} vs "
                f"{common.fmt_ms(u['models']['sd15']['latency']['median_ms'])} ms)",
                f"<= {most:g}x",
                _verdict(u["target"]["met"], f"by {sf['ratio_to_sd15'] - most:.4f}"),
                "0.51x (A100, TensorRT); 0.135x (iPhone 14 Pro)",
                u["mode"],
            ]
        )
        for key, m in u["models"].items():
            if key.startswith("extra:"):
                rows.append(
                    [f"UNet per step, {m['label']} / SD-v1.5", f"{m['ratio_to_sd15']:.3f}x", "-", "-", "-", u["mode"]]
                )
    v = _load(out_dir, "vae_decoder")
    if v:
        least = v["target"]["speedup_min"]
        rows.append(
            [
                f"VAE decoder speed-up, pruned vs SD-v1.5 ({v['image'][0]}px)",
                f"{v['speedup']:.2f}x ({v['decoders']['pruned']['params'] / 1e6:.1f}M vs "
                f"{v['decoders']['sd15']['params'] / 1e6:.1f}M params)",
                f">= {least:g}x",
                _verdict(v["target"]["met"], f"{least - v['speedup']:.2f}x short"),
                "3.2x; 50M -> 13M params",
                v["mode"],
            ]
        )
    e = _load(out_dir, "end_to_end")
    if e:
        sd, sf, least = e["pipelines"]["sd15"], e["pipelines"]["snapfusion"], e["target"]["speedup_min"]
        rows.append(
            [
                f"End to end, SnapFusion {sf['steps']} steps vs SD-v1.5 {sd['steps']} steps ({e['image'][0]}px, CFG)",
                f"{e['speedup']:.1f}x ({sf['total_ms'] / 1000:,.1f} s vs {sd['total_ms'] / 1000:,.1f} s"
                f"{', SD total composed' if sd['total_kind'].startswith('composed') else ''})",
                f">= {least:g}x",
                _verdict(e["target"]["met"], f"{least - e['speedup']:.1f}x short"),
                "12.2x for the UNet part (A100); ~85 s vs 1.84 s (iPhone 14 Pro)",
                e["mode"],
            ]
        )
        if "onepass" in e:
            o, op = e["onepass"], e["pipelines"]["onepass"]
            rows.append(
                [
                    f"End to end, one pass per step {op['steps']} steps vs SD-v1.5 {sd['steps']} steps with CFG "
                    f"({e['image'][0]}px)",
                    f"{o['speedup']:.1f}x ({op['total_ms'] / 1000:,.1f} s vs {sd['total_ms'] / 1000:,.1f} s)",
                    f">= {o['target']['speedup_min']:g}x",
                    _verdict(o["target"]["met"], f"{o['target']['speedup_min'] - o['speedup']:.1f}x short"),
                    "-",
                    e["mode"],
                ]
            )
        b = e.get("bundle", {})
        if b and not b.get("skipped"):
            t, s = b["models"]["teacher"], b["models"]["student"]
            rows.append(
                [
                    f"Bundle, student {s['steps']} steps vs teacher {t['steps']} steps ({s['image'][0]}px)",
                    f"{b['speedup']:.1f}x ({s['total_ms']:,.0f} vs {t['total_ms']:,.0f} ms)",
                    "-",
                    "-",
                    "-",
                    e["mode"],
                ]
            )
            if "onepass_speedup" in b:
                o, least = b["models"]["onepass"], b["onepass_target"]["speedup_min"]
                rows.append(
                    [
                        f"Bundle, one-pass student {o['steps']} steps vs teacher {t['steps']} steps "
                        f"({o['image'][0]}px)",
                        f"{b['onepass_speedup']:.1f}x ({o['total_ms']:,.0f} vs {t['total_ms']:,.0f} ms)",
                        f">= {least:g}x",
                        _verdict(b["onepass_target"]["met"], f"{least - b['onepass_speedup']:.1f}x short"),
                        "-",
                        e["mode"],
                    ]
                )
    return rows


def assemble(out_dir: str) -> str:
    """Write ``<out_dir>/benchmarks.md``: headline table, then every section that exists, in order."""
    lines = [
        TITLE,
        "",
        "Generated by `python -m benchmarks.run_all` (each section also by its own script, "
        "`python -m benchmarks.<section>`); raw numbers are in `benchmarks/<section>.json`. Paper numbers are "
        "the paper's own (other hardware, trained weights), quoted for reference only.",
        "",
    ]
    rows = headline_rows(out_dir)
    if rows:
        lines += [
            "## Headline",
            "",
            common.md_table(
                ["measure", "this machine", "target (issue 7)", "verdict", "paper (its hardware)", "mode"], rows
            ),
            "",
        ]
        if any(r[-1] == "quick" for r in rows):
            lines += [common.QUICK_NOTE, ""]
    for name in common.SECTIONS:
        path = os.path.join(out_dir, "benchmarks", f"{name}.md")
        if os.path.isfile(path):
            with open(path) as f:
                lines += [f.read().rstrip(), ""]
        else:
            lines += [f"## {name}", "", f"Not run yet: `python -m benchmarks.{name}`.", ""]
    path = os.path.join(out_dir, "benchmarks.md")
    with open(path, "w") as f:
        f.write("\n".join(lines).rstrip() + "\n")
    return path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.report", description=__doc__.split("\n\n")[0])
    p.add_argument("--out-dir", default=common.DEFAULT_OUT)
    p.add_argument("--overwrite", action="store_true", help="replace an existing <out-dir>/benchmarks.md")
    args = p.parse_args(argv)
    target = os.path.join(args.out_dir, "benchmarks.md")
    if os.path.exists(target) and not args.overwrite:
        common.fail(f"{target} exists; pass --overwrite to replace it.")
    print(f"wrote {assemble(args.out_dir)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
