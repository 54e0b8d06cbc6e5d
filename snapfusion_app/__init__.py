"""The SnapFusion app: model loading defaults, the Gradio UI and the command line."""

from pipelines.devices import pick_device
from pipelines.loading import ModelLoadError, load_pipeline

from .loading import DEFAULT_STUDENT, DEFAULT_TEACHER

__all__ = ["DEFAULT_STUDENT", "DEFAULT_TEACHER", "ModelLoadError", "load_pipeline", "pick_device"]
