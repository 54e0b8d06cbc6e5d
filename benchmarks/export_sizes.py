"""Export: Core ML package and ExecuTorch file sizes and conversion times, read from the export folders.

Reads every export folder (a folder whose ``manifest.json`` has the format ``export.options.MANIFEST_FORMAT``, or an
older one of ``export.options.OLDER_MANIFEST_FORMATS``, as written by ``export.export_pipeline`` / ``python -m
export``) under each ``--export-dir`` (default ``<bundle>/coreml``, ``<bundle>/export`` and ``out/coreml``): its Core
ML packages (``.mlpackage``) and its ExecuTorch files (``.pte``). Sizes, conversion times and numeric checks are those
the export recorded; the files' sizes on disk are re-measured here. Nothing is converted here (a full-size conversion
takes longer than all the other benchmarks together). Skipped, with a note, while ``from export import
export_pipeline`` fails or no export folder exists.

    python -m benchmarks.export_sizes [--bundle bundle] [--export-dir DIR ...] [--out-dir docs] [--overwrite]
"""

from __future__ import annotations

import json
import os

from . import common

NAME = "export_sizes"
FORMAT_LABELS = {"coreml": "Core ML", "executorch": "ExecuTorch"}


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


def manifest_formats() -> tuple[str, ...]:
    """The manifest formats read: the export library's current one, then the older ones it still recognises."""
    from export.options import MANIFEST_FORMAT, OLDER_MANIFEST_FORMATS

    return (MANIFEST_FORMAT, *OLDER_MANIFEST_FORMATS)


def dir_size(path: str) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            fp = os.path.join(root, f)
            if not os.path.islink(fp):
                total += os.path.getsize(fp)
    return total


def size_on_disk(path: str | None) -> int | None:
    """Bytes of a package folder (every file in it) or of a single file (a .pte); None when it is not there."""
    if not path:
        return None
    if os.path.isdir(path):
        return dir_size(path)
    return os.path.getsize(path) if os.path.isfile(path) and not os.path.islink(path) else None


def _manifest(folder: str, formats: tuple[str, ...]) -> dict | None:
    try:
        with open(os.path.join(folder, "manifest.json")) as f:
            data = json.load(f)
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) and data.get("format") in formats else None


def find_exports(root: str) -> list[tuple[str, dict]]:
    """(folder, manifest) of every export folder at or under ``root`` (packages are not descended into)."""
    formats = manifest_formats()
    found = []
    for dirpath, dirs, _ in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.endswith((".mlpackage", ".mlmodelc")))
        m = _manifest(dirpath, formats)
        if m is not None:
            found.append((dirpath, m))
            dirs[:] = []
    return found


def _num(v) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _dict(v) -> dict:
    return v if isinstance(v, dict) else {}


def _components(folder: str, comps: dict, check_key: str) -> list[dict]:
    """One row per component of one format; ``check_key``: the numeric check reported as PSNR ("exported_graph" for
    Core ML, "executorch" for the .pte run in the ExecuTorch runtime)."""
    rows = []
    for name, c in _dict(comps).items():
        if not isinstance(c, dict):
            continue
        package = c.get("package")
        path = os.path.join(folder, package) if isinstance(package, str) else None
        rows.append(
            {
                "name": name,
                "package": package,
                "size_mb": _num(c.get("size_mb")),
                "size_mb_before_quantization": _num(c.get("size_mb_before_quantization")),
                "conversion_s": _num(c.get("conversion_s")),
                "psnr_db": _num(_dict(_dict(c.get("check")).get(check_key)).get("psnr_db")),
                "bytes_on_disk": size_on_disk(path),
            }
        )
    return rows


def summarise_export(folder: str, m: dict) -> list[dict]:
    """The fields this section reports for one export folder, one entry per format it holds (Core ML packages,
    ExecuTorch files), read defensively (a field the export did not write stays None)."""
    src = _dict(m.get("source"))
    image = _dict(m.get("image"))
    base = {
        "folder": folder,
        "manifest_format": m.get("format"),
        "model": src.get("model") or src.get("preset") or f"in-process pipeline ({src.get('unet', 'unknown UNet')})",
        "unet": src.get("unet"),
        "image": [image.get("height"), image.get("width")],
    }
    entries = []
    if m.get("components"):  # Core ML packages (a v1 manifest holds only these)
        bits = _dict(m.get("quantization")).get("bits")
        rows = _components(folder, m["components"], "exported_graph")
        entries.append(dict(base, format="coreml", precision=m.get("precision"), bits=bits, quantization=None,
                            components=rows))  # fmt: skip
    et = _dict(m.get("executorch"))
    if et.get("components"):
        scheme = _dict(et.get("quantization")).get("scheme")
        rows = _components(folder, et["components"], "executorch")
        entries.append(dict(base, format="executorch", precision=et.get("precision"), bits=None,
                            quantization=None if scheme in (None, "none") else scheme, components=rows))  # fmt: skip
    for e in entries:
        sizes = [c["size_mb"] for c in e["components"] if c["size_mb"] is not None]
        times = [c["conversion_s"] for c in e["components"] if c["conversion_s"] is not None]
        e["total_mb"] = sum(sizes) if sizes else None
        e["total_conversion_s"] = sum(times) if times else None
    return entries


def comparisons(exports: list[dict]) -> list[dict]:
    """Quantized vs unquantized total size, per format and (model, image size, precision): Core ML palettized vs
    not palettized, ExecuTorch int8 vs fp32."""
    found = []
    for e in exports:
        quantized = e["bits"] if e["format"] == "coreml" else e["quantization"]
        if quantized is None or e["total_mb"] is None:
            continue
        key = (e["format"], e["model"], e["image"], e["precision"])
        for base in exports:
            same = (base["format"], base["model"], base["image"], base["precision"]) == key
            if same and base["bits"] is None and base["quantization"] is None and base["total_mb"]:
                found.append(
                    {
                        "format": e["format"],
                        "model": e["model"],
                        "precision": e["precision"],
                        "bits": e["bits"],
                        "quantization": e["quantization"],
                        "unquantized": base["folder"],
                        "quantized": e["folder"],
                        "size_ratio": e["total_mb"] / base["total_mb"],
                    }
                )
    return found


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
    res["manifest_formats"] = list(manifest_formats())
    res["exports"] = [e for d in dirs if os.path.isdir(d) for f, m in find_exports(d) for e in summarise_export(f, m)]
    res["comparisons"] = comparisons(res["exports"])
    res["skipped"] = not res["exports"]
    if res["skipped"]:
        res["reason"] = (f"no export folder (manifest.json of format {' or '.join(res['manifest_formats'])}) "
                         f"under {', '.join(dirs)}.")  # fmt: skip
    return res


def _variant(e: dict) -> str:
    if e.get("format", "coreml") == "executorch":
        return f"{e['precision'] or 'fp32'}, " + (f"{e['quantization']} weights" if e["quantization"] else
                                                  "not quantized")  # fmt: skip
    return f"{e['precision']}, " + (f"{e['bits']}-bit palettized" if e["bits"] else "not palettized")


def markdown(res: dict, out: common.Outputs | None = None) -> str:
    lines = ["## Export: Core ML and ExecuTorch sizes and conversion times", "", common.machine_paragraph(res), ""]
    if res["skipped"]:
        lines += [
            f"Skipped: {res['reason']} Export first, e.g. `python -m export --model bundle/student --out "
            f"bundle/export/student-fp16` and the same with `--quantize 6 --out bundle/export/student-6bit` "
            f"(Core ML), `--format executorch --out bundle/export/student-et` and `--format executorch --quantize "
            f"int8 --out bundle/export/student-et-int8` (ExecuTorch), or `--preset snapfusion` for full-size random "
            f"weights, then re-run this benchmark.",
            "",
        ]
        return "\n".join(lines)
    from export.report import MB  # the unit of every size an export records; the sizes on disk too

    lines += [
        "Sizes (MB = 2^20 bytes), conversion times and numeric checks as recorded by the export (`manifest.json`); "
        '"on disk" is re-measured here (a Core ML package folder, or a `.pte` file). PSNR: for Core ML, the '
        "exported graph vs eager PyTorch (the Core ML runtime check needs macOS); for ExecuTorch, the `.pte` run in "
        "the ExecuTorch runtime vs eager PyTorch.",
        "",
    ]
    rows = []
    for e in res["exports"]:
        fmt = FORMAT_LABELS.get(e.get("format", "coreml"), e.get("format"))
        head = [f"`{e['folder']}`", e["model"], fmt, _variant(e)]
        quantized = e["bits"] or e.get("quantization")
        for c in e["components"]:
            before = c["size_mb_before_quantization"]
            size = None if c["size_mb"] is None else f"{c['size_mb']:,.2f}"
            if size is not None and before is not None and quantized:
                size += f" ({before:,.2f} before)"
            rows.append(
                head
                + [
                    c["name"],
                    size,
                    None if c["bytes_on_disk"] is None else f"{c['bytes_on_disk'] / MB:,.2f}",
                    None if c["conversion_s"] is None else f"{c['conversion_s']:,.1f}",
                    None if c["psnr_db"] is None else f"{c['psnr_db']:.1f}",
                ]
            )
        rows.append(
            head
            + [
                "**total**",
                None if e["total_mb"] is None else f"**{e['total_mb']:,.2f}**",
                None,
                None if e["total_conversion_s"] is None else f"**{e['total_conversion_s']:,.1f}**",
                None,
            ]
        )
    headers = ["export", "model", "format", "variant", "component", "size MB", "on disk MB", "conversion s",
               "PSNR dB"]  # fmt: skip
    lines += [common.md_table(headers, rows), ""]
    for c in res["comparisons"]:
        if c.get("format", "coreml") == "executorch":
            what = f"ExecuTorch: {c['quantization']} weights are {c['size_ratio']:.3f}x the size of the fp32 export"
        else:
            what = (f"Core ML ({c['precision']}): {c['bits']}-bit palettized is {c['size_ratio']:.3f}x the size of "
                    "the unpalettized export")  # fmt: skip
        lines += [f"{c['model']} {what} (`{c['quantized']}` vs `{c['unquantized']}`).", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    """Read the export folders; write export_sizes.json and .md under <out-dir>/benchmarks/."""
    return common.run_section(NAME, argv, parse_args, run, markdown)


if __name__ == "__main__":
    raise SystemExit(main())
