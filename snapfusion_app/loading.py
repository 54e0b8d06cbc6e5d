"""The app's models: the bundle's teacher and student by default (and its one-pass student when ``bundle/onepass``
exists), or any folder / Hub id ``pipelines.loading`` loads. Light: ``ModelLoadError`` and ``load_pipeline`` (torch,
diffusers) are imported on first use."""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
BUNDLE_DIR = REPO_ROOT / "bundle"
DEFAULT_TEACHER = str(BUNDLE_DIR / "teacher")
DEFAULT_STUDENT = str(BUNDLE_DIR / "student")
DEFAULT_ONEPASS = str(BUNDLE_DIR / "onepass")  # the one-pass student (guidance as a UNet input); optional


def default_onepass() -> str | None:
    """The bundle's one-pass student when its folder exists, else None (the app then runs without it)."""
    return DEFAULT_ONEPASS if Path(DEFAULT_ONEPASS).is_dir() else None


def __getattr__(name: str):
    if name in ("ModelLoadError", "load_pipeline"):
        from pipelines import loading

        return getattr(loading, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["BUNDLE_DIR", "DEFAULT_ONEPASS", "DEFAULT_STUDENT", "DEFAULT_TEACHER", "ModelLoadError",  # noqa: F822
           "default_onepass", "load_pipeline"]  # fmt: skip  # noqa: F822 (lazy)
