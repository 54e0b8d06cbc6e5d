"""The SnapFusion app: model loading defaults, the Gradio UI and the command line.

Importing the package is light (the CLI's ``--help`` must be fast): ``load_pipeline``, ``pick_device`` and
``ModelLoadError`` come from ``pipelines`` on first use."""

from .loading import DEFAULT_STUDENT, DEFAULT_TEACHER

_LAZY = {"ModelLoadError": "pipelines.loading", "load_pipeline": "pipelines.loading",
         "pick_device": "pipelines.devices"}  # fmt: skip


def __getattr__(name: str):
    if name in _LAZY:
        from importlib import import_module

        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["DEFAULT_STUDENT", "DEFAULT_TEACHER", "ModelLoadError", "load_pipeline", "pick_device"]
