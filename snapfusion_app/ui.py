"""The Gradio app: a 50-step baseline next to the SnapFusion 8-step student.

Tabs: Compare (same prompt and seed on both sides, measured timings, the speed-up), Model (both architectures
by paper stage), Export (Core ML through ``export.export_pipeline``). The handlers live on ``CompareApp``, above
the layout; ``build_demo`` wires them to components. Models are chosen at start-up only (``app.py``): a visitor
picks a side, never a path.
"""

from __future__ import annotations

import atexit
import collections
import functools
import html
import inspect
import json
import logging
import math
import queue
import secrets
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
import torch

from pipelines import EfficientUNet2DConditionModel, SnapFusionPipeline
from pipelines.latency import host_description
from pipelines.unet_efficient import sd_layout

logger = logging.getLogger(__name__)

# The mini bundle is trained on a toy world of colored shapes on flat backgrounds: these prompts are in its grammar.
EXAMPLES = [
    "a big red circle in the center on a gray background",
    "a small blue square on the left, black background",
    "a big yellow triangle at the top on a white background",
    "a big green diamond left of a small purple square on a black background",
    "brown background with a small cyan ring above a big orange cross",
    "a big pink circle and a small blue triangle, the first below the second, gray background",
]
MAX_PROMPT_CHARS = 1000  # longer prompts are refused; a shorter one past the token limit is truncated with a note
MAX_SEED = 2**32
STEPS_MIN, STEPS_MAX = 1, 100
GUIDANCE_MIN, GUIDANCE_MAX = 1.0, 20.0  # <= 1 turns classifier-free guidance off
EXPORT_COMPONENTS = ("text_encoder", "unet", "vae_decoder")
EXPORT_PRECISIONS = ("fp16", "fp32")
EXPORT_QUANTIZE = ("none", "8", "6", "4")
EXPORT_ATTENTION = ("original", "split_einsum")
EXPORTS_KEPT = 3  # finished exports whose files stay on disk; older ones are deleted
QUEUE_SIZE = 16
GROUP = "models"  # concurrency group: one pipeline call at a time, so measured timings are not shared-CPU timings

CSS = """
.sf-image img { image-rendering: pixelated; width: 100%; height: 100%; object-fit: contain; }
.sf-side-title h3 { margin-bottom: 0; }
"""


# ---------------------------------------------------------------------------------------------- input checks


def _show(value: Any) -> str:
    """Short, HTML-safe rendering of a visitor's value for an error message."""
    text = repr(value)
    return html.escape(text if len(text) <= 60 else text[:57] + "...", quote=False)


def bad_input(message: str) -> gr.Error:
    """A ``gr.Error`` for a visitor's bad value: shown to the visitor, not logged as a server fault."""
    return gr.Error(message, print_exception=False)


def check_text(value: Any, name: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise bad_input(f"{name} must be text; got {type(value).__name__} {_show(value)}.")
    if len(value) > MAX_PROMPT_CHARS:
        raise bad_input(
            f"{name} is {len(value):,} characters long; the limit is {MAX_PROMPT_CHARS:,} characters "
            "(the text encoder reads only the first 77 tokens, about 300 characters, of a prompt)."
        )
    return value


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_int(value: Any, name: str, low: int, high: int) -> int:
    """An integer in [low, high]; 8.0 is accepted as 8 (JSON clients send sliders as floats)."""
    if not (_is_number(value) and float(value).is_integer() and low <= value <= high):
        raise bad_input(f"{name} must be an integer in [{low}, {high}]; got {_show(value)}.")
    return int(value)


def check_float(value: Any, name: str, low: float, high: float) -> float:
    if not (_is_number(value) and low <= value <= high):
        raise bad_input(f"{name} must be a number in [{low:g}, {high:g}]; got {_show(value)}.")
    return float(value)


def check_seed(value: Any) -> int:
    if not (_is_number(value) and float(value).is_integer() and 0 <= value < MAX_SEED):
        raise bad_input(f"seed must be an integer in [0, 2^32) = [0, {MAX_SEED - 1}]; got {_show(value)}.")
    return int(value)


def check_bool(value: Any, name: str) -> bool:
    if value is None:
        return False
    if not isinstance(value, bool):
        raise bad_input(f"{name} must be true or false; got {_show(value)}.")
    return value


def check_choice(value: Any, name: str, allowed) -> str:
    if value not in allowed:
        raise bad_input(f"{name} must be one of {', '.join(map(str, allowed))}; got {_show(value)}.")
    return value


def truncation_note(pipe: SnapFusionPipeline, text: str) -> str | None:
    """A visible note when ``text`` is longer than the tokenizer's limit (the pipeline keeps only the first tokens)."""
    tok = pipe.tokenizer
    ids = tok(text, truncation=False, verbose=False).input_ids  # with start and end tokens
    limit = tok.model_max_length
    if len(ids) <= limit:
        return None
    kept = tok.decode(ids[1 : limit - 1]).strip()
    tail = kept if len(kept) <= 40 else "..." + kept[-40:]
    return (
        f"Prompt truncated: this text encoder reads {limit} tokens; the last {len(ids) - limit} tokens were ignored "
        f"(it stopped after “{html.escape(tail)}”)."
    )


# ---------------------------------------------------------------------------------------------- errors


class Cancelled(Exception):
    """The visitor pressed Cancel; the pipeline stopped after its current step."""


def _user_error(e: BaseException) -> gr.Error:
    """Turn any exception into a short message for the visitor; the traceback goes to the server log only."""
    if isinstance(e, gr.Error):
        return e
    if isinstance(e, Cancelled):
        return gr.Error("Cancelled.", print_exception=False)
    if isinstance(e, ValueError):  # our libraries write ValueErrors for people (bad value + what is allowed)
        text = str(e)
        return bad_input(html.escape(text if len(text) <= 400 else text[:397] + "...", quote=False))
    logger.exception("unexpected error in a handler")
    message = f"Unexpected error ({type(e).__name__}); the details are in the server log."
    return gr.Error(message, print_exception=False)


def user_errors(fn: Callable) -> Callable:
    """Decorator: every exception a handler raises reaches the visitor as a short ``gr.Error``, never a traceback.
    Keeps ``fn``'s signature (gradio injects ``gr.Request`` / ``gr.Progress`` by it) and generator-ness."""
    if inspect.isgeneratorfunction(fn):

        @functools.wraps(fn)
        def gen_wrapper(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except Exception as e:
                raise _user_error(e) from None

        return gen_wrapper

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as e:
            raise _user_error(e) from None

    return wrapper


def on_gpu(fn: Callable) -> Callable:
    """``spaces.GPU`` (Hugging Face ZeroGPU) when the ``spaces`` package is installed, else ``fn`` unchanged."""
    try:
        import spaces  # type: ignore[import-not-found]
    except ImportError:
        return fn
    return spaces.GPU(fn)


# ---------------------------------------------------------------------------------------------- models


def model_display_name(source: str) -> str:
    """What the UI calls a model: its model card's title (README.md front matter ``model_name`` or first ``#``
    heading) and its folder, or the Hub id as given."""
    path = Path(source).expanduser()
    if not path.is_dir():
        return source
    try:
        rel = str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        rel = "/".join(path.resolve().parts[-2:])
    title = _card_title(path / "README.md")
    return f"{title} ({rel})" if title and title != rel else rel


def _card_title(readme: Path) -> str | None:
    if not readme.is_file():
        return None
    text = readme.read_text(errors="replace")
    front, _ = split_front_matter(text)
    for line in front.splitlines():
        if line.startswith("model_name:"):
            return line.split(":", 1)[1].strip().strip("'\"") or None
    for line in text.splitlines():
        if line.startswith("# "):
            return line[2:].strip() or None
    return None


def split_front_matter(text: str) -> tuple[str, str]:
    """(YAML front matter, body) of a model card; front matter is empty when there is none."""
    if text.startswith("---\n"):
        end = text.find("\n---", 4)
        if end != -1:
            return text[4:end], text[end + 4 :].lstrip("\n")
    return "", text


@dataclass
class Side:
    """One side of the comparison: a loaded pipeline, what the UI calls it, its recommended settings."""

    key: str  # "left" | "right"
    role: str  # "Baseline" | "SnapFusion student"
    name: str
    source: str
    pipe: SnapFusionPipeline

    @property
    def default_steps(self) -> int:
        return int(self.pipe.config.default_num_inference_steps)

    @property
    def default_guidance(self) -> float:
        return float(self.pipe.config.default_guidance_scale)

    @property
    def max_steps(self) -> int:
        return min(STEPS_MAX, int(self.pipe.scheduler.config.num_train_timesteps))

    @property
    def image_size(self) -> tuple[int, int]:
        size = self.pipe.unet.config.sample_size * self.pipe.vae_scale_factor
        return size, size

    @property
    def label(self) -> str:
        return f"{'Left' if self.key == 'left' else 'Right'} · {self.role}"


def describe(pipe: SnapFusionPipeline) -> str:
    """What a pipeline is made of, in words, from its modules (never from its name)."""
    unet = pipe.unet
    if isinstance(unet, EfficientUNet2DConditionModel):
        as_lists = lambda layout: json.loads(json.dumps(layout))  # noqa: E731 - tuples and lists compare equal
        cfg = unet.config
        sd = sd_layout(num_stages=len(cfg.block_out_channels))
        same = as_lists([cfg.down_layout, cfg.mid_layout, cfg.up_layout]) == as_lists(list(sd))
        kind = "UNet with SD-v1.5's block layout" if same else "efficient UNet"
    else:
        kind = f"diffusers {type(unet).__name__}"
    decoder = "compressed decoder" if pipe.vae_decoder is not None else "full VAE decoder"
    return f"{kind}, {decoder}"


def warm_up(pipe: SnapFusionPipeline) -> None:
    """One 1-step call, so the first visitor's timings do not include one-off start-up costs."""
    pipe("", num_inference_steps=1, output_type="np", generator=torch.Generator("cpu").manual_seed(0))


# ---------------------------------------------------------------------------------------------- readouts


def readout_markdown(side: Side, timings: dict, guidance: float, device_text: str, notes: list[str]) -> str:
    """Measured timings of one run as a small table (``timings`` from ``SnapFusionPipeline``)."""
    n = timings["steps_run"]
    cfg = " (CFG: batch 2)" if timings.get("cfg") else " (no CFG)"
    lines = [
        f"**{n} steps · guidance {guidance:g}** · {timings['total_ms']:,.0f} ms in total",
        "",
        "| part | measured |",
        "|---|---|",
        f"| text encoder | {timings['text_encoder_ms']:,.1f} ms |",
        f"| UNet | {timings['unet_ms_mean']:,.1f} ms/step × {n} steps = {timings['unet_ms_total']:,.0f} ms{cfg} |",
        f"| decoder | {timings['decoder_ms']:,.1f} ms |",
        f"| **total** | **{timings['total_ms']:,.0f} ms** |",
        "",
        f"Measured on {html.escape(device_text)}, this run.",
    ]
    lines += [f"\n> {note}" for note in notes]
    return "\n".join(lines)


def speedup_ratios(left: dict, right: dict) -> dict[str, float]:
    """Right side's speed-up over the left: total time ratio and UNet-part ratio (left / right)."""
    return {
        "total": left["total_ms"] / right["total_ms"],
        "unet": left["unet_ms_total"] / right["unet_ms_total"] if right["unet_ms_total"] > 0 else float("nan"),
    }


def _times(x: float) -> str:
    return f"{x:.1f}×" if x < 10 else f"{x:.0f}×"


def _ratio_text(ratio: float) -> str:
    """left / right time ratio as words: "7.9× faster" or "1.3× slower"."""
    if not math.isfinite(ratio) or ratio <= 0:
        return "not comparable"
    return f"{_times(ratio)} faster" if ratio >= 1 else f"{_times(1 / ratio)} slower"


def speedup_html(left: dict | None, right: dict | None, note: str = "", waiting: str | None = None) -> str:
    """The banner above the images: the right side's measured speed-up, or what to do to get one."""
    green, amber = ("#16a34a", "22,163,74", "#15803d"), ("#d97706", "217,119,6", "#b45309")
    r = speedup_ratios(left, right) if left is not None and right is not None else None
    border, rgb, text = green if r is None or r["total"] >= 1 else amber
    box = (f"<div style='border:2px solid {border};border-radius:10px;padding:10px 16px;text-align:center;"
           f"background:rgba({rgb},0.08)'>{{}}</div>")  # fmt: skip
    if r is None:
        waiting = waiting or "Press <b>Generate both</b>: the measured speed-up of the right side appears here."
        return box.format(f"<div style='font-size:1.1em'>{waiting}</div>")
    detail = (
        f"total {left['total_ms']:,.0f} ms → {right['total_ms']:,.0f} ms · "
        f"UNet part {_ratio_text(r['unet'])} ({left['steps_run']} steps: {left['unet_ms_total']:,.0f} ms → "
        f"{right['steps_run']} steps: {right['unet_ms_total']:,.0f} ms) · measured on {html.escape(right['device'])}"
    )
    if note:
        detail += f"<br>{html.escape(note)}"
    head = f"Right side is {_ratio_text(r['total'])}"
    return box.format(f"<div style='font-size:2em;font-weight:700;color:{text}'>{head}</div><div>{detail}</div>")


def running_markdown(step: int, steps: int, seconds: float) -> str:
    """Live progress of one side, shown in its readout while it runs."""
    filled = round(20 * step / steps) if steps else 0
    return f"**Running: step {step}/{steps}** · {seconds:.1f} s so far\n\n`{'█' * filled}{'░' * (20 - filled)}`"


def side_header(side: Side, steps: Any, guidance: Any) -> str:
    arrow = "⬅" if side.key == "left" else "➡"
    try:
        settings = f"{int(steps)} steps · guidance {float(guidance):g}"
    except (TypeError, ValueError):
        settings = ""
    name = side.name.replace("`", "'")  # shown as inline code
    return f"### {arrow} {side.label}: {settings}\n`{name}`"


# ---------------------------------------------------------------------------------------------- exports


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
    """``(export_pipeline, zip_export, ExportError)`` from the project's export library (imported on first use)."""
    from export import ExportError, export_pipeline, zip_export

    return export_pipeline, zip_export, ExportError


# ---------------------------------------------------------------------------------------------- handlers


class CompareApp:
    """The handlers behind the UI and the API endpoints; holds both pipelines."""

    def __init__(self, left: Side, right: Side, export_keep: int = EXPORTS_KEPT):
        self.sides = {"left": left, "right": right}
        self.device_text = f"{left.pipe.device} ({host_description()})"
        # Gradio runs one event of the "models" group at a time; the lock also covers a cancelled event whose
        # thread is still finishing its current step.
        self._lock = threading.RLock()
        self._cancel: collections.OrderedDict[str, threading.Event] = collections.OrderedDict()  # session -> run
        self._last: collections.OrderedDict[str, dict] = collections.OrderedDict()  # session -> last timings
        self.workdir = Path(tempfile.mkdtemp(prefix="snapfusion_app_"))  # everything this app serves lives here
        atexit.register(shutil.rmtree, self.workdir, True)
        self.exports = ExportStore(self.workdir / "exports", export_keep)

    # -- generation

    def _check_common(self, prompt, negative_prompt, seed, randomize_seed):
        prompt = check_text(prompt, "prompt")
        negative_prompt = check_text(negative_prompt, "negative prompt")
        randomize = check_bool(randomize_seed, "randomize seed")
        seed = secrets.randbelow(MAX_SEED) if randomize else check_seed(seed)
        return prompt, negative_prompt, seed

    def _check_side(self, key, steps, guidance) -> tuple[int, float]:
        side = self.sides[key]
        where = "left" if key == "left" else "right"
        return (check_int(steps, f"steps ({where})", STEPS_MIN, side.max_steps),
                check_float(guidance, f"guidance ({where})", GUIDANCE_MIN, GUIDANCE_MAX))  # fmt: skip

    def _session_event(self, request: gr.Request | None) -> tuple[str, threading.Event]:
        session = getattr(request, "session_hash", None) or "anonymous"
        event = threading.Event()
        self._cancel[session] = event
        self._cancel.move_to_end(session)
        while len(self._cancel) > 1024:
            self._cancel.popitem(last=False)
        return session, event

    def _stream(self, key, prompt, negative_prompt, seed, steps, guidance, cancel: threading.Event):
        """Run one side in a worker thread. Yields ``("step", i, seconds so far)`` as steps finish (at most every
        0.2 s, and the last one), then ``("done", image, readout, timings)``. Closing the generator early (the
        visitor cancelled or left) stops the pipeline after its current step."""
        side = self.sides[key]
        events: queue.Queue = queue.Queue()

        def on_step(pipe, i, t, callback_kwargs):
            if cancel.is_set():
                pipe.interrupt()
            events.put(("step", i + 1))
            return {}

        def work():
            try:
                with self._lock:
                    if cancel.is_set():
                        raise Cancelled()
                    out = side.pipe(
                        prompt, negative_prompt=negative_prompt or None, num_inference_steps=steps,
                        guidance_scale=guidance, generator=torch.Generator("cpu").manual_seed(seed),
                        callback_on_step_end=on_step,
                    )  # fmt: skip
                events.put(("out", out))
            except BaseException as e:  # handed to the generator, which raises it in the handler's thread
                events.put(("error", e))

        start = time.perf_counter()
        last = 0.0
        finished = False
        threading.Thread(target=work, name=f"snapfusion-{key}", daemon=True).start()
        try:
            while True:
                kind, value = events.get()
                if kind == "error":
                    finished = True
                    raise value
                if kind == "out":
                    finished = True
                    out = value
                    break
                now = time.perf_counter()
                if value == steps or now - last >= 0.2:
                    last = now
                    yield "step", value, now - start
        finally:
            if not finished:
                cancel.set()
        if out.timings.get("interrupted") or cancel.is_set():
            raise Cancelled()
        notes = []
        if not prompt.strip():
            notes.append("Empty prompt: this image is unconditional (no text to follow).")
        for text, what in ((prompt, "Prompt"), (negative_prompt, "Negative prompt")):
            note = truncation_note(side.pipe, text) if text else None
            if note:
                notes.append(note.replace("Prompt", what, 1))
        readout = readout_markdown(side, out.timings, guidance, self.device_text, notes)
        yield "done", out.images[0], readout, dict(out.timings, guidance=guidance, seed=seed)

    def _remember(self, session: str, key: str, run_id: tuple, timings: dict) -> dict:
        memory = self._last.setdefault(session, {})
        self._last.move_to_end(session)
        while len(self._last) > 256:
            self._last.popitem(last=False)
        memory[key] = (run_id, timings)
        return memory

    def compare(self, prompt, negative_prompt, seed, randomize_seed, left_steps, left_guidance, right_steps,
                right_guidance, request: gr.Request = None, progress=gr.Progress()):  # fmt: skip
        """Run the right side (fast), then the left side (baseline), with the same prompt and seed.

        Streams (left image, left readout, right image, right readout, speed-up banner, seed used, timings JSON);
        the readouts show live progress, the last update holds the results."""
        prompt, negative_prompt, seed = self._check_common(prompt, negative_prompt, seed, randomize_seed)
        left_steps, left_guidance = self._check_side("left", left_steps, left_guidance)
        right_steps, right_guidance = self._check_side("right", right_steps, right_guidance)
        session, cancel = self._session_event(request)
        skip = gr.skip()
        total = left_steps + right_steps
        banner = speedup_html(None, None, waiting="Running the right side first, then the left side...")
        progress((0, total), desc="Right side")
        yield None, "*Waiting: the right side runs first.*", None, running_markdown(0, right_steps, 0.0), banner, \
            seed, skip  # fmt: skip
        for ev in self._stream("right", prompt, negative_prompt, seed, right_steps, right_guidance, cancel):
            if ev[0] == "step":
                progress((ev[1], total), desc=f"Right side: step {ev[1]}/{right_steps}")
                yield skip, skip, skip, running_markdown(ev[1], right_steps, ev[2]), skip, skip, skip
            else:
                _, r_img, r_text, r_t = ev
        waiting = f"Right side done in <b>{r_t['total_ms']:,.0f} ms</b>; the baseline on the left is still running..."
        yield skip, running_markdown(0, left_steps, 0.0), r_img, r_text, speedup_html(None, None, waiting=waiting), \
            skip, {"seed": seed, "right": r_t}  # fmt: skip
        for ev in self._stream("left", prompt, negative_prompt, seed, left_steps, left_guidance, cancel):
            if ev[0] == "step":
                progress((right_steps + ev[1], total), desc=f"Left side: step {ev[1]}/{left_steps}")
                yield skip, running_markdown(ev[1], left_steps, ev[2]), skip, skip, skip, skip, skip
            else:
                _, l_img, l_text, l_t = ev
        run_id = (prompt, negative_prompt, seed)
        self._remember(session, "right", run_id, r_t)
        self._remember(session, "left", run_id, l_t)
        data = {"seed": seed, "left": l_t, "right": r_t, "speedup": speedup_ratios(l_t, r_t)}
        yield l_img, l_text, r_img, r_text, speedup_html(l_t, r_t), seed, data

    def run_one(self, key, prompt, negative_prompt, seed, randomize_seed, steps, guidance, request=None,
                progress=None):  # fmt: skip
        """One side alone. Streams (image, readout, speed-up banner, seed used, timings JSON); the banner compares
        with this session's last run of the other side when it had the same prompt and seed."""
        prompt, negative_prompt, seed = self._check_common(prompt, negative_prompt, seed, randomize_seed)
        steps, guidance = self._check_side(key, steps, guidance)
        session, cancel = self._session_event(request)
        skip = gr.skip()
        progress = progress or (lambda *args, **kwargs: None)
        yield None, running_markdown(0, steps, 0.0), skip, seed, skip
        for ev in self._stream(key, prompt, negative_prompt, seed, steps, guidance, cancel):
            if ev[0] == "step":
                progress((ev[1], steps), desc=f"{key.capitalize()} side: step {ev[1]}/{steps}")
                yield skip, running_markdown(ev[1], steps, ev[2]), skip, skip, skip
            else:
                _, img, text, t = ev
        run_id = (prompt, negative_prompt, seed)
        memory = self._remember(session, key, run_id, t)
        other = "right" if key == "left" else "left"
        data = {"seed": seed, key: t}
        if other in memory and memory[other][0] == run_id:
            pair = {key: t, other: memory[other][1]}
            banner = speedup_html(pair["left"], pair["right"], note="The two sides were run separately.")
            data["speedup"] = speedup_ratios(pair["left"], pair["right"])
        else:
            banner = speedup_html(None, None, waiting=f"Run the {other} side with the same prompt and seed (or press "
                                  "<b>Generate both</b>) to see the speed-up.")  # fmt: skip
        yield img, text, banner, seed, data

    def cancel(self, request: gr.Request = None) -> None:
        """Stop this visitor's running generation after its current step (never another visitor's)."""
        event = self._cancel.get(getattr(request, "session_hash", None) or "anonymous")
        if event is not None:
            event.set()

    # -- export

    def export(self, model, components, precision, quantize, attention, request: gr.Request = None,
               progress=gr.Progress()):  # fmt: skip
        """Core ML export of one side. Returns (zip path, report markdown, report dict)."""
        key = check_choice(model, "model", ("left", "right"))
        if not isinstance(components, (list, tuple)) or not components:
            raise bad_input(f"components must be a non-empty list drawn from {', '.join(EXPORT_COMPONENTS)}; "
                           f"got {_show(components)}.")  # fmt: skip
        for c in components:
            check_choice(c, "component", EXPORT_COMPONENTS)
        components = [c for c in EXPORT_COMPONENTS if c in components]  # pipeline order, each once
        precision = check_choice(precision, "precision", EXPORT_PRECISIONS)
        quantize = check_choice(quantize, "palettization bits", EXPORT_QUANTIZE)
        attention = check_choice(attention, "attention", EXPORT_ATTENTION)
        try:
            export_pipeline, zip_export, export_error = export_library()
        except ImportError as e:
            raise gr.Error(f"Core ML export is not available on this server ({html.escape(str(e))}).") from None
        side = self.sides[key]
        folder = self.exports.new_dir()
        progress(0.0, desc="starting the export")
        try:
            with self._lock:
                report = export_pipeline(
                    side.pipe, str(folder / "coreml"), components=tuple(components), precision=precision,
                    quantize=quantize, attention=attention, progress=lambda f, m: progress(float(f), desc=str(m)),
                )  # fmt: skip
                zip_path = Path(zip_export(str(folder / "coreml")))
            if folder.resolve() not in zip_path.resolve().parents:  # serve only files inside this export's folder
                zip_path = Path(shutil.move(str(zip_path), str(folder / zip_path.name)))
        except export_error as e:
            self.exports.discard(folder)
            raise bad_input(f"Export failed: {html.escape(str(e), quote=False)}") from None
        except BaseException:
            self.exports.discard(folder)
            raise
        self.exports.commit(folder)
        size_mb = zip_path.stat().st_size / 1e6
        head = (f"**{html.escape(side.label)}** (`{html.escape(side.name)}`) → Core ML: "
                f"{', '.join(components)}, {precision}, palettization {quantize}, attention {attention}. "
                f"Download: **{size_mb:,.1f} MB** zip.\n\n")  # fmt: skip
        # the report names the server's temporary folder; the visitor knows it as the zip's top folder
        out_dir = str((folder / "coreml").resolve())
        data = dict(report.to_dict(), out_dir="coreml", zip_bytes=zip_path.stat().st_size, model=key)
        return str(zip_path), head + report.to_markdown().replace(out_dir, "coreml"), data


# ---------------------------------------------------------------------------------------------- model tab


def _params(module) -> int:
    from pipelines.profiling import count_params

    return int(count_params(module)) if module is not None else 0


def model_summary(sides: dict[str, Side]) -> tuple[list[list], list[list]]:
    """(rows by paper stage, rows of totals) for both sides; counts, not measurements."""
    from pipelines.profiling import architecture_table, count_decoder_macs, count_decoder_params, count_macs

    tables = {k: architecture_table(s.pipe.unet) for k, s in sides.items()}
    stages = [row["stage"] for row in tables["left"]]
    stages += [row["stage"] for row in tables["right"] if row["stage"] not in stages]
    by_stage = {k: {row["stage"]: row for row in rows} for k, rows in tables.items()}
    stage_rows = []
    for stage in stages:
        row = [stage, (by_stage["left"].get(stage) or by_stage["right"][stage])["resolution"]]
        for k in ("left", "right"):
            r = by_stage[k].get(stage, {})
            row += [r.get("CA", 0), r.get("RB", 0)]
        for k in ("left", "right"):
            row.append(round(by_stage[k].get(stage, {}).get("params", 0) / 1e6, 3))
        stage_rows.append(row)
    totals = {}
    for k, s in sides.items():
        pipe, (h, w) = s.pipe, s.image_size
        decoder = pipe.vae_decoder if pipe.vae_decoder is not None else pipe.vae  # what decodes latents
        lh, lw = h // pipe.vae_scale_factor, w // pipe.vae_scale_factor  # latent size
        macs = count_macs(pipe.unet, lh, lw, batch=2, context_len=pipe.tokenizer.model_max_length)  # CFG: batch 2
        dec_macs = count_decoder_macs(decoder, lh, lw)
        totals[k] = {
            "image size": f"{h}×{w}",
            "text encoder params (M)": _params(pipe.text_encoder) / 1e6,
            "UNet params (M)": _params(pipe.unet) / 1e6,
            "decoder params (M)": count_decoder_params(decoder) / 1e6,
            "UNet GFLOPs per step (CFG, batch 2)": 2 * macs / 1e9,
            "default steps": s.default_steps,
            "default guidance": s.default_guidance,
            "UNet GFLOPs per image (× default steps)": 2 * macs * s.default_steps / 1e9,
            "decoder GFLOPs per image": 2 * dec_macs / 1e9,
        }
    total_rows = [[name, _fmt(totals["left"][name]), _fmt(totals["right"][name])] for name in totals["left"]]
    return stage_rows, total_rows


def _fmt(v):
    return float(f"{v:.4g}") if isinstance(v, float) else v


def architecture_plot(stage_rows: list[list], left_name: str, right_name: str, path: Path) -> Path:
    """Grouped bars of CA and RB blocks per paper stage, left vs right, as a PNG."""
    from matplotlib.figure import Figure

    stage_rows = [r for r in stage_rows if r[0] != "Other"]  # conv_in, time embedding, output head: no blocks
    stages = [r[0] for r in stage_rows]
    x = list(range(len(stages)))
    fig = Figure(figsize=(9, 3.4), dpi=110, layout="constrained")
    kinds = (("CA (cross-attention)", 2), ("RB (ResNet)", 3))  # columns of the left counts in stage_rows
    for ax, (kind, col) in zip(fig.subplots(1, 2, sharey=True), kinds, strict=True):
        ax.bar([i - 0.2 for i in x], [r[col] for r in stage_rows], 0.4, label=f"left: {left_name}", color="#9ca3af")
        ax.bar([i + 0.2 for i in x], [r[col + 2] for r in stage_rows], 0.4, label=f"right: {right_name}",
               color="#16a34a")  # fmt: skip
        ax.set_xticks(x, stages, rotation=30)
        ax.set_title(f"{kind} blocks per stage")
        ax.grid(axis="y", alpha=0.3)
    fig.axes[0].set_ylabel("blocks")
    fig.axes[0].legend(fontsize=7, loc="upper left")
    fig.savefig(path)
    return path


def eval_files(sides: dict[str, Side]) -> tuple[list[Path], list[Path]]:
    """The bundle's evaluation results (``eval/*.png``, ``eval/*.json`` next to a local model folder)."""
    pngs, jsons = [], []
    seen = set()
    for s in sides.values():
        folder = Path(s.source).expanduser()
        if not folder.is_dir():
            continue
        ev = folder.resolve().parent / "eval"
        if ev.is_dir() and ev not in seen:
            seen.add(ev)
            pngs += sorted(ev.glob("*.png"))
            jsons += sorted(ev.glob("*.json"))
    return pngs, jsons


def model_card(side: Side) -> str:
    readme = Path(side.source).expanduser() / "README.md"
    if not readme.is_file():
        return f"**{side.label}** `{side.name}`: no model card (README.md) in this model's folder."
    _, body = split_front_matter(readme.read_text(errors="replace"))
    return f"**{side.label}** `{side.name}`\n\n{body}"


# ---------------------------------------------------------------------------------------------- layout


def build_demo(teacher: SnapFusionPipeline, student: SnapFusionPipeline, teacher_name: str, student_name: str,
               teacher_source: str = "", student_source: str = "", warmup: bool = True,
               export_keep: int = EXPORTS_KEPT) -> gr.Blocks:  # fmt: skip
    """The whole app for two loaded pipelines (left: the baseline, right: the SnapFusion student), queue set up.

    ``*_name`` is what the UI calls each model; ``*_source`` its folder or Hub id (model card, eval results)."""
    left = Side("left", "Baseline", teacher_name, teacher_source, teacher)
    right = Side("right", "SnapFusion student", student_name, student_source, student)
    if warmup and not gr.utils.is_zero_gpu_space():  # ZeroGPU attaches a GPU per call: no GPU at start-up
        for s in (left, right):
            warm_up(s.pipe)
    app = CompareApp(left, right, export_keep)

    with gr.Blocks(title="SnapFusion: 50 steps vs 8 steps", delete_cache=(1800, 3600)) as demo:
        gr.Markdown(
            f"# SnapFusion: {right.default_steps} steps vs {left.default_steps} steps. How much faster?\n"
            "Same prompt, same seed, two text-to-image models run live on this server, one after the other. "
            f"**Left: the baseline** `{teacher_name}` ({describe(teacher)}, {left.default_steps} steps). "
            f"**Right: the SnapFusion student** `{student_name}` ({describe(student)}, {right.default_steps} "
            "steps). Every time shown is measured; the banner says how much faster the right side is."
        )
        with gr.Tab("Compare"):
            with gr.Row():
                prompt = gr.Textbox(label="Prompt", value=EXAMPLES[0], max_length=MAX_PROMPT_CHARS, scale=4,
                                    elem_id="prompt")  # fmt: skip
                negative = gr.Textbox(label="Negative prompt", value="", max_length=MAX_PROMPT_CHARS, scale=2)
            with gr.Row():
                seed = gr.Number(label="Seed", value=0, precision=0, minimum=0, maximum=MAX_SEED - 1, scale=1)
                randomize = gr.Checkbox(label="Randomize seed", value=False, scale=1)
                run_both = gr.Button("Generate both", variant="primary", scale=2, elem_id="generate")
                cancel = gr.Button("Cancel", variant="stop", scale=1)
            banner = gr.HTML(speedup_html(None, None), elem_id="speedup")
            outputs = {}
            with gr.Row(equal_height=False):
                for s in (left, right):
                    with gr.Column():
                        header = gr.Markdown(side_header(s, s.default_steps, s.default_guidance),
                                             elem_classes="sf-side-title")  # fmt: skip
                        image = gr.Image(label=f"{s.label}: {s.name}", type="pil", format="png", height=320,
                                         interactive=False, elem_id=f"{s.key}-image",
                                         elem_classes="sf-image")  # fmt: skip
                        readout = gr.Markdown(f"*{s.label}: latency readout appears here.*",
                                              elem_id=f"{s.key}-readout")  # fmt: skip
                        with gr.Row():
                            steps = gr.Slider(STEPS_MIN, s.max_steps, value=s.default_steps, step=1,
                                              label=f"Steps ({s.key})")  # fmt: skip
                            guidance = gr.Slider(GUIDANCE_MIN, GUIDANCE_MAX, value=s.default_guidance, step=0.5,
                                                 label=f"Guidance ({s.key})", info="≤ 1 turns CFG off")  # fmt: skip
                        run_side = gr.Button(f"Run the {s.key} side alone", size="sm")
                        outputs[s.key] = {"header": header, "image": image, "readout": readout, "steps": steps,
                                      "guidance": guidance, "button": run_side}  # fmt: skip
            with gr.Accordion("Raw timings (JSON, measured)", open=False):
                timings_json = gr.JSON(label="Timings", elem_id="timings")
            gr.Examples([[e] for e in EXAMPLES], inputs=[prompt], label="Prompts in the bundle's toy world",
                        cache_examples=False)  # fmt: skip
            gr.Markdown(
                f"Prompts longer than {MAX_PROMPT_CHARS:,} characters are refused; a shorter prompt past the text "
                "encoder's token limit is truncated and the readout says so. The right side runs first, then the "
                "left; one generation runs at a time on this server, so the timings are not shared with another "
                "visitor's run."
            )

        L, R = outputs["left"], outputs["right"]
        common = [prompt, negative, seed, randomize]
        compare_fn = on_gpu(user_errors(app.compare))
        compare_event = run_both.click(
            compare_fn, inputs=common + [L["steps"], L["guidance"], R["steps"], R["guidance"]],
            outputs=[L["image"], L["readout"], R["image"], R["readout"], banner, seed, timings_json],
            api_name="compare", preprocess=False, concurrency_id=GROUP, concurrency_limit=1, show_progress_on=banner,
        )  # fmt: skip
        side_events = []
        for s, o in ((left, L), (right, R)):
            side_events.append(o["button"].click(
                on_gpu(user_errors(_one_side_handler(app, s.key))), inputs=common + [o["steps"], o["guidance"]],
                outputs=[o["image"], o["readout"], banner, seed, timings_json], api_name=s.key,
                preprocess=False, concurrency_id=GROUP, concurrency_limit=1, show_progress_on=banner,
            ))  # fmt: skip
            for comp in (o["steps"], o["guidance"]):
                comp.change(functools.partial(side_header, s), inputs=[o["steps"], o["guidance"]],
                            outputs=o["header"], queue=False, api_visibility="private")  # fmt: skip
        cancel.click(app.cancel, None, None, cancels=[compare_event, *side_events], queue=False,
                     api_visibility="private")  # fmt: skip

        with gr.Tab("Model"):
            _model_tab(app, left, right)

        with gr.Tab("Export"):
            gr.Markdown(
                "Convert one side to Core ML (one `.mlpackage` per component, for iPhone / Mac apps). Each export is "
                "checked numerically against PyTorch; the report shows the check and the latency readout. "
                f"Only the newest {export_keep} exports stay on the server."
            )
            with gr.Row():
                model = gr.Radio([(f"Right: {right.name}", "right"), (f"Left: {left.name}", "left")],
                                 value="right", label="Model")  # fmt: skip
                comps = gr.CheckboxGroup(list(EXPORT_COMPONENTS), value=list(EXPORT_COMPONENTS), label="Components")
            with gr.Row():
                precision = gr.Radio(list(EXPORT_PRECISIONS), value="fp16", label="Precision")
                quantize = gr.Radio(list(EXPORT_QUANTIZE), value="none", label="Palettization (bits)",
                                    info="6 bits is the lowest recommended without retraining")  # fmt: skip
                attention = gr.Radio(list(EXPORT_ATTENTION), value="split_einsum", label="Attention",
                                     info="split_einsum: Neural Engine; original: GPU")  # fmt: skip
            export_btn = gr.Button("Export to Core ML", variant="primary")
            export_file = gr.File(label="Core ML zip", interactive=False)
            export_report = gr.Markdown()
            export_json = gr.JSON(label="Export report (JSON)", open=False)
            export_btn.click(
                user_errors(app.export), inputs=[model, comps, precision, quantize, attention],
                outputs=[export_file, export_report, export_json], api_name="export", preprocess=False,
                concurrency_id=GROUP, concurrency_limit=1,
            )  # fmt: skip

    demo.queue(default_concurrency_limit=1, max_size=QUEUE_SIZE)
    demo.snapfusion = app  # the handlers, for tests and for app.py
    return demo


def _one_side_handler(app: CompareApp, key: str) -> Callable:
    def run(prompt, negative_prompt, seed, randomize_seed, steps, guidance, request: gr.Request = None,
            progress=gr.Progress()):  # fmt: skip
        yield from app.run_one(key, prompt, negative_prompt, seed, randomize_seed, steps, guidance, request, progress)

    run.__name__ = run.__qualname__ = f"run_{key}"
    run.__doc__ = f"Run the {key} side alone: (image, readout, speed-up banner, seed used, timings JSON)."
    return run


def _model_tab(app: CompareApp, left: Side, right: Side) -> None:
    try:
        stage_rows, total_rows = model_summary(app.sides)
    except ImportError as e:  # pipelines.profiling not importable: say so instead of showing made-up numbers
        gr.Markdown(f"Architecture summary unavailable: {html.escape(str(e))}")
        return
    gr.Markdown(
        "Both UNets by stage of the SnapFusion paper (Table 3 grouping). **CA**: cross-attention (transformer) "
        "block, **RB**: ResNet block; *Other* holds conv_in, the time embedding and the output head. Parameters "
        "and FLOPs are counted from the loaded models (FLOPs = 2 × multiply-accumulates, at each model's image "
        "size and text length; see `pipelines/profiling.py` for what is counted). Counts, not timings."
    )
    gr.Dataframe(
        value=stage_rows, label="Blocks per stage", interactive=False,
        headers=["stage", "resolution", "left CA", "left RB", "right CA", "right RB", "left params (M)",
                 "right params (M)"],
    )  # fmt: skip
    gr.Dataframe(value=total_rows, headers=["", f"left: {left.name}", f"right: {right.name}"], label="Totals",
                 interactive=False)  # fmt: skip
    plot = architecture_plot(stage_rows, left.name, right.name, app.workdir / "architecture.png")
    gr.Image(str(plot), label="CA / RB blocks per stage", type="filepath", interactive=False, format="png")
    pngs, jsons = eval_files(app.sides)
    if pngs or jsons:
        gr.Markdown("### Evaluation results from the bundle")
        for png in pngs:
            gr.Image(str(png), label=png.name, type="filepath", format="png", height=480, interactive=False)
        if jsons:
            with gr.Accordion("Evaluation results (JSON)", open=False):
                for j in jsons:
                    try:
                        data = json.loads(j.read_text())
                    except (OSError, json.JSONDecodeError) as e:
                        gr.Markdown(f"`{j.name}`: unreadable ({html.escape(str(e))})")
                        continue
                    gr.JSON(data, label=j.name)
    with gr.Accordion("Model cards", open=False), gr.Row():
        for s in (left, right):
            gr.Markdown(model_card(s))


def launch_kwargs() -> dict:
    """``demo.launch`` options shared by app.py and the tests (server name and port come from gradio's
    ``GRADIO_SERVER_NAME`` / ``GRADIO_SERVER_PORT``, which Spaces sets)."""
    return {"css": CSS, "show_error": True}


__all__ = ["EXAMPLES", "CompareApp", "build_demo", "launch_kwargs", "model_display_name"]
