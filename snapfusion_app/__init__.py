"""The app's logic: model loading, generation with timings, the CLI (and the Gradio UI helpers)."""

from .loading import DEFAULT_STUDENT, DEFAULT_TEACHER, ModelLoadError, load_pipeline, pick_device

__all__ = ["DEFAULT_STUDENT", "DEFAULT_TEACHER", "ModelLoadError", "load_pipeline", "pick_device"]
