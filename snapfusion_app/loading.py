"""The app's models: the bundle's teacher and student by default, or any folder / Hub id ``pipelines.loading``
loads. Light: ``ModelLoadError`` and ``load_pipeline`` (torch, diffusers) are imported on first use."""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
BUNDLE_DIR = REPO_ROOT / "bundle"
DEFAULT_TEACHER = str(BUNDLE_DIR / "teacher")
DEFAULT_STUDENT = str(BUNDLE_DIR / "student")


def __getattr__(name: str):
    if name in ("ModelLoadError", "load_pipeline"):
        from pipelines import loading

        return getattr(loading, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["BUNDLE_DIR", "DEFAULT_STUDENT", "DEFAULT_TEACHER", "ModelLoadError", "load_pipeline"]  # noqa: F822 (lazy)
