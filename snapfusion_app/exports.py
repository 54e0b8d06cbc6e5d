"""The Export tab's handler: Core ML and / or ExecuTorch export of one side through ``export.export_pipeline`` (the
right side: the model the visitor chose there, the one-pass student included), each export in its own folder of the
app's temporary folder (only the newest few kept), and a report that shows no server path."""

from __future__ import annotations

import collections
import html
import shutil
import tempfile
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gradio as gr

from export.errors import ExportError
from export.options import ATTENTION_VARIANTS, COMPONENTS, FORMATS, PRECISIONS, QUANTIZE_CHOICES, check_options

from .errors import bad_input
from .inputs import InputError, check_choice, show
from .sides import STUDENT, Side

if TYPE_CHECKING:
    from .session import CompareApp

EXPORTS_KEPT = 3  # finished exports whose files stay on disk; older ones are deleted
EXPORT_FOLDERS = {"coreml": "coreml", "executorch": "executorch", "both": "mobile"}  # the export's name in the zip
# and in the report, instead of the server's folder
FORMAT_LABELS = {"coreml": "Core ML", "executorch": "ExecuTorch (XNNPACK)", "both": "Core ML + ExecuTorch (XNNPACK)"}


class ExportStore:
    """Each export in its own temporary folder; only the newest ``keep`` stay on disk, the rest are deleted."""

    def __init__(self, root: Path, keep: int = EXPORTS_KEPT):
        self.keep = keep
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self._kept: collections.deque[Path] = collections.deque()
        self._lock = threading.Lock()

    def new_dir(self) -> Path:
        return Path(tempfile.mkdtemp(dir=self.root))

    def discard(self, folder: Path) -> None:
        shutil.rmtree(folder, ignore_errors=True)

    def commit(self, folder: Path) -> None:
        with self._lock:
            self._kept.append(folder)
            while len(self._kept) > self.keep:
                shutil.rmtree(self._kept.popleft(), ignore_errors=True)

    def folders(self) -> list[Path]:
        return sorted(p for p in self.root.iterdir() if p.is_dir())


def export_library():
    """``(export_pipeline, zip_export, ExportError, format_size)`` from the export library (imported on first use)."""
    from export import ExportError, export_pipeline, zip_export
    from export.report import format_size

    return export_pipeline, zip_export, ExportError, format_size


def check_export_options(model, components, precision, quantize, attention,
                         fmt="coreml") -> tuple[str, list[str], str, str, str, str]:  # fmt: skip
    """The Export tab's choices (those of ``export.options``), checked; components in pipeline order, each once;
    a quantization or attention variant the chosen runtime cannot run is refused."""
    key = check_choice(model, "model", ("left", "right"))
    if not isinstance(components, (list, tuple)) or not components:
        raise InputError(f"components must be a non-empty list drawn from {', '.join(COMPONENTS)}; "
                         f"got {show(components)}.")  # fmt: skip
    for c in components:
        check_choice(c, "component", COMPONENTS)
    components = [c for c in COMPONENTS if c in components]
    precision = check_choice(precision, "precision", PRECISIONS)
    quantize = check_choice(quantize, "quantization", QUANTIZE_CHOICES)
    attention = check_choice(attention, "attention", ATTENTION_VARIANTS)
    fmt = check_choice(fmt, "format", FORMATS)
    if fmt == "executorch":
        attention = "original"  # the tab's attention choice is a Core ML option (labelled so); ExecuTorch has one
    try:
        check_options(components, precision, quantize, attention, fmt)
    except ExportError as e:
        raise InputError(str(e)) from None
    return key, components, precision, quantize, attention, fmt


def without_paths(value: Any, replacements: dict[str, str]) -> Any:
    """``value`` (a report's JSON) with every server path in ``replacements`` replaced by its public name."""
    if isinstance(value, str):
        for path, name in replacements.items():
            value = value.replace(path, name)
        return value
    if isinstance(value, dict):
        return {k: without_paths(v, replacements) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [without_paths(v, replacements) for v in value]
    return value


def server_paths(side: Side, out_dir: Path) -> dict[str, str]:
    """The server paths an export's report may name, longest first, each with what the visitor sees instead."""
    paths = {str(out_dir.resolve()): out_dir.name, str(out_dir): out_dir.name}
    for source in (side.source, getattr(side.pipe, "name_or_path", "") or ""):
        if source and Path(source).expanduser().exists():
            paths[str(Path(source).expanduser().resolve())] = side.name
            paths[source] = side.name
    return dict(sorted(paths.items(), key=lambda kv: -len(kv[0])))


def model_choices(app: CompareApp, right_model=STUDENT) -> list[tuple[str, str]]:
    """The Export tab's model choices: the right side's model as chosen there (by its role when it has a choice of
    models), then the left."""
    right, left = app.side("right", right_model), app.sides["left"]
    role = f" ({right.role})" if len(app.right_models) > 1 else ""
    return [(f"Right: {right.name}{role}", "right"), (f"Left: {left.name}", "left")]


class Exporter:
    """The /export endpoint: one side to Core ML and / or ExecuTorch, served as a zip with its report; the right
    side is the model chosen there (``right_model``: the SnapFusion student by default, or the one-pass student)."""

    def __init__(self, app: CompareApp, workdir: Path, lock: threading.RLock, keep: int = EXPORTS_KEPT):
        self.app = app
        self.lock = lock  # shared with generation: one pipeline call at a time
        self.store = ExportStore(workdir / "exports", keep)

    def __call__(self, model, components, precision, quantize, attention, fmt="coreml", right_model=STUDENT,
                 request: gr.Request = None, progress=gr.Progress()):  # fmt: skip
        """Export of one side (``fmt``: coreml, executorch or both; for the right side, ``right_model``: "student"
        or "onepass" when loaded). Returns (zip path, report markdown, report dict)."""
        key, components, precision, quantize, attention, fmt = check_export_options(
            model, components, precision, quantize, attention, fmt
        )
        right_model = self.app.check_right_model(right_model)
        try:
            export_pipeline, zip_export, export_error, format_size = export_library()
        except ImportError as e:
            raise bad_input(f"Export is not available on this server ({e}).") from None
        side = self.app.side(key, right_model)
        folder = self.store.new_dir()
        out_dir = folder / EXPORT_FOLDERS[fmt]
        progress(0.0, desc="starting the export")
        try:
            with self.lock:
                report = export_pipeline(
                    side.pipe, str(out_dir), components=tuple(components), precision=precision, quantize=quantize,
                    attention=attention, progress=lambda f, m: progress(float(f), desc=str(m)), format=fmt,
                )  # fmt: skip
                zip_path = Path(zip_export(str(out_dir)))
            if folder.resolve() not in zip_path.resolve().parents:  # serve only files inside this export's folder
                zip_path = Path(shutil.move(str(zip_path), str(folder / zip_path.name)))
        except export_error as e:
            self.store.discard(folder)
            raise bad_input(f"Export failed: {e}") from None
        except BaseException:
            self.store.discard(folder)
            raise
        self.store.commit(folder)
        zip_bytes = zip_path.stat().st_size
        settings = (f"{precision}, palettization {quantize}, attention {attention}" if fmt == "coreml" else
                    f"quantization {quantize}" if fmt == "executorch" else
                    f"Core ML {precision}, attention {attention}; ExecuTorch fp32")  # fmt: skip
        head = (f"**{html.escape(side.label)}** (`{html.escape(side.name)}`) → {FORMAT_LABELS[fmt]}: "
                f"{', '.join(components)}, {settings}. "
                f"Download: **{format_size(zip_bytes)}** zip (MB = 2^20 bytes, as the file box counts).\n\n"
                )  # fmt: skip
        paths = server_paths(side, out_dir)
        chosen = {"right_model": right_model} if key == "right" else {}
        data = without_paths(dict(report.to_dict(), zip_bytes=zip_bytes, model=key, **chosen), paths)
        return str(zip_path), head + without_paths(report.to_markdown(), paths), data
