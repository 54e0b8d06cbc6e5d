"""The app's models: the bundle's teacher and student by default, or any folder / Hub id ``pipelines.loading``
loads."""

from __future__ import annotations

from pathlib import Path

from pipelines.loading import ModelLoadError, load_pipeline

REPO_ROOT = Path(__file__).resolve().parent.parent
BUNDLE_DIR = REPO_ROOT / "bundle"
DEFAULT_TEACHER = str(BUNDLE_DIR / "teacher")
DEFAULT_STUDENT = str(BUNDLE_DIR / "student")

__all__ = ["BUNDLE_DIR", "DEFAULT_STUDENT", "DEFAULT_TEACHER", "ModelLoadError", "load_pipeline"]
