"""Export: Core ML package sizes (fp16 vs palettized) and conversion times, read from the export folders.

Reads every export folder (a folder whose ``manifest.json`` has ``"format": "snapfusion-coreml-export/1"``, as
written by ``export.export_pipeline`` / ``python -m export``) under each ``--export-dir`` (default
``<bundle>/coreml``, ``<bundle>/export`` and ``out/coreml``). Sizes and conversion times are those the export
recorded; the packages' sizes on disk are re-measured here. Nothing is converted here (a full-size conversion takes
longer than all the other benchmarks together). Skipped, with a note, while ``from export import export_pipeline``
fails or no export folder exists.

    python -m benchmarks.export_sizes [--bundle bundle] [--export-dir DIR ...] [--out-dir docs] [--overwrite]
"""

from __future__ import annotations

import json
import os

from . import common

NAME = "export_sizes"
MANIFEST_FORMAT = "snapfusion-coreml-export/1"


BUNDLE_HELP = "default export folders: <bundle>/coreml, <bundle>/export"
# The folders read instead of the default ones: flag, metavar, help.
FILES_ARG = ("--export-dir", "DIR", "folder holding export folders, or an export folder itself (repeatable)")


def parse_args(argv=None):
    return common.parse_reader_args(NAME, __doc__.split("\n\n")[0], argv, BUNDLE_HELP, *FILES_ARG)


def export_available() -> tuple[bool, str]:
    try:
        import export
    except ImportError as e:
        return False, f"`import export` fails ({e})"
    if not hasattr(export, "export_pipeline"):
        return False, "the `export` package has no `export_pipeline`"
    return True, ""


def dir_size(path: str) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            fp = os.path.join(root, f)
            if not os.path.islink(fp):
                total += os.path.getsize(fp)
    return total


def _manifest(folder: str) -> dict | None:
    try:
        with open(os.path.join(folder, "manifest.json")) as f:
            data = json.load(f)
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) and data.get("format") == MANIFEST_FORMAT else None


def find_exports(root: str) -> list[tuple[str, dict]]:
    """(folder, manifest) of every export folder at or under ``root`` (packages are not descended into)."""
    found = []
    for dirpath, dirs, _ in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.endswith((".mlpackage", ".mlmodelc")))
        m = _manifest(dirpath)
        if m is not None:
            found.append((dirpath, m))
            dirs[:] = []
    return found


def _num(v) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def summarise_export(folder: str, m: dict) -> dict:
    """The fields this section reports, read defensively (a field the export did not write stays None)."""
    src = m.get("source") if isinstance(m.get("source"), dict) else {}
    quant = m.get("quantization") if isinstance(m.get("quantization"), dict) else {}
    image = m.get("image") if isinstance(m.get("image"), dict) else {}
    comps = []
    for name, c in (m.get("components") or {}).items():
        if not isinstance(c, dict):
            continue
        package = c.get("package")
        path = os.path.join(folder, package) if isinstance(package, str) else None
        graph = (c.get("check") or {}).get("exported_graph") or {}
        comps.append(
            {
                "name": name,
                "package": package,
                "size_mb": _num(c.get("size_mb")),
                "size_mb_before_quantization": _num(c.get("size_mb_before_quantization")),
                "conversion_s": _num(c.get("conversion_s")),
                "psnr_db": _num(graph.get("psnr_db")),
                "bytes_on_disk": dir_size(path) if path and os.path.isdir(path) else None,
            }
        )
    sizes = [c["size_mb"] for c in comps if c["size_mb"] is not None]
    times = [c["conversion_s"] for c in comps if c["conversion_s"] is not None]
    return {
        "folder": folder,
        "model": src.get("model") or src.get("preset") or f"in-process pipeline ({src.get('unet', 'unknown UNet')})",
        "unet": src.get("unet"),
        "precision": m.get("precision"),
        "bits": quant.get("bits"),
        "image": [image.get("height"), image.get("width")],
        "components": comps,
        "total_mb": sum(sizes) if sizes else None,
        "total_conversion_s": sum(times) if times else None,
    }


def run(args) -> dict:
    res = common.header(NAME, args)
    ok, why = export_available()
    dirs = args.export_dir or [
        os.path.join(args.bundle, "coreml"),
        os.path.join(args.bundle, "export"),
        os.path.join("out", "coreml"),
    ]
    res["export_dirs"] = dirs
    if not ok:
        res.update(skipped=True, reason=f"the export library is not available: {why}.", exports=[])
        return res
    res["exports"] = [summarise_export(f, m) for d in dirs if os.path.isdir(d) for f, m in find_exports(d)]
    # fp16 vs palettized, per (model, image size, precision): palettized total / unquantized total
    res["comparisons"] = []
    for e in res["exports"]:
        if e["bits"] is None or e["total_mb"] is None:
            continue
        for base in res["exports"]:
            same = (base["model"], base["image"], base["precision"]) == (e["model"], e["image"], e["precision"])
            if same and base["bits"] is None and base["total_mb"]:
                res["comparisons"].append(
                    {
                        "model": e["model"],
                        "precision": e["precision"],
                        "bits": e["bits"],
                        "unquantized": base["folder"],
                        "palettized": e["folder"],
                        "size_ratio": e["total_mb"] / base["total_mb"],
                    }
                )
    res["skipped"] = not res["exports"]
    if res["skipped"]:
        res["reason"] = f"no export folder (manifest.json of format {MANIFEST_FORMAT}) under {', '.join(dirs)}."
    return res


def markdown(res: dict, out: common.Outputs | None = None) -> str:
    lines = ["## Export: Core ML package sizes and conversion times", "", common.machine_paragraph(res), ""]
    if res["skipped"]:
        lines += [
            f"Skipped: {res['reason']} Export first, e.g. `python -m export --model bundle/student --out "
            f"bundle/coreml/student-fp16` and the same with `--quantize 6 --out bundle/coreml/student-6bit` "
            f"(or `--preset snapfusion` for full-size random weights), then re-run this benchmark.",
            "",
        ]
        return "\n".join(lines)
    lines += [
        "Sizes, conversion times and numeric checks as recorded by the export (`manifest.json`); "
        '"on disk" is re-measured here. PSNR is the exported graph vs eager PyTorch (the Core ML runtime '
        "check needs macOS).",
        "",
    ]
    rows = []
    for e in res["exports"]:
        variant = f"{e['precision']}, " + (f"{e['bits']}-bit palettized" if e["bits"] else "not palettized")
        for c in e["components"]:
            before = c["size_mb_before_quantization"]
            rows.append(
                [
                    f"`{e['folder']}`",
                    e["model"],
                    variant,
                    c["name"],
                    None
                    if c["size_mb"] is None
                    else f"{c['size_mb']:,.2f}"
                    + (f" ({before:,.2f} before)" if before is not None and e["bits"] else ""),
                    None if c["bytes_on_disk"] is None else f"{c['bytes_on_disk'] / 1e6:,.2f}",
                    None if c["conversion_s"] is None else f"{c['conversion_s']:,.1f}",
                    None if c["psnr_db"] is None else f"{c['psnr_db']:.1f}",
                ]
            )
        rows.append(
            [
                f"`{e['folder']}`",
                e["model"],
                variant,
                "**total**",
                None if e["total_mb"] is None else f"**{e['total_mb']:,.2f}**",
                None,
                None if e["total_conversion_s"] is None else f"**{e['total_conversion_s']:,.1f}**",
                None,
            ]
        )
    lines += [
        common.md_table(
            ["export", "model", "variant", "component", "size MB", "on disk MB", "conversion s", "PSNR dB"], rows
        ),
        "",
    ]
    for c in res["comparisons"]:
        lines += [
            f"{c['model']} ({c['precision']}): {c['bits']}-bit palettized is {c['size_ratio']:.3f}x the size "
            f"of the unpalettized export (`{c['palettized']}` vs `{c['unquantized']}`).",
            "",
        ]
    return "\n".join(lines)


def main(argv=None) -> int:
    """Read the export folders; write export_sizes.json and .md under <out-dir>/benchmarks/."""
    return common.run_section(NAME, argv, parse_args, run, markdown)


if __name__ == "__main__":
    raise SystemExit(main())
