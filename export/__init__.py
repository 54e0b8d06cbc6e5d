"""Core ML export of a SnapFusionPipeline for apple's Swift StableDiffusion package (see docs/export.md).

    from export import export_pipeline, zip_export, ExportError
    report = export_pipeline(pipe, "out/coreml", quantize="6")
    print(report.to_markdown()); zip_path = zip_export("out/coreml")

Importing the package is light: torch, diffusers and coremltools load on first use of the export functions.
"""

from importlib import import_module

from .errors import ExportError

_LAZY = {"export_pipeline": "exporter", "zip_export": "bundle", "ExportReport": "report",
         "ComponentReport": "convert", "MIN_PSNR_DB": "convert", "COMPONENTS": "options"}  # fmt: skip


def __getattr__(name):
    if name in _LAZY:
        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["COMPONENTS", "MIN_PSNR_DB", "ComponentReport", "ExportError", "ExportReport", "export_pipeline",
           "zip_export"]  # fmt: skip
