"""The Compare tab's handlers: a visitor's runs, streamed from a worker thread, with per-session state (the run in
progress, for Cancel; the last timings of each side, for the banner of a side run alone). The right side's model
(the SnapFusion student, or the one-pass student when loaded) is an input of each call, never a server setting, so
one visitor's choice does not change another's view."""

from __future__ import annotations

import collections
import html
import queue
import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import gradio as gr
import torch

from pipelines.latency import host_description

from . import readouts
from .errors import Cancelled
from .inputs import (
    MAX_SEED,
    STEPS_MIN,
    InputError,
    check_bool,
    check_float,
    check_int,
    check_seed,
    check_text,
    dropped_text,
    show,
    token_limit_note,
)
from .sides import ONEPASS, RIGHT_ROLES, STUDENT, Side

SESSIONS_KEPT = 1024  # per-session state is dropped least-recently-used first past this many sessions
STOP_WAIT_S = 120.0  # Cancel waits this long at most for the running step to end (an SD-v1.5 512px step on a CPU)
STOP_GRACE_S = 0.5  # and then this long, for gradio to send the stopped run's completion to the page


@dataclass
class Run:
    """One visitor's run in progress: which sides it runs (in order), where it is, what finished."""

    order: tuple[str, ...]
    steps: dict[str, int]
    cancel: threading.Event = field(default_factory=threading.Event)
    current: str | None = None
    step: int = 0
    done: dict[str, dict] = field(default_factory=dict)
    finished: bool = False
    cancelled_view: tuple | None = None  # what Cancel put on the page: (banner, left readout, right readout)
    ended: threading.Event = field(default_factory=threading.Event)  # the handler's stream is over


def image_label(side: Side) -> str:
    return f"{side.label}: {side.name}"


def session_of(request: gr.Request | None) -> str:
    return getattr(request, "session_hash", None) or "anonymous"


class CompareApp:
    """The handlers behind the Compare tab and its API endpoints (/compare, /left, /right); holds both sides and the
    right side's other model (``onepass``, the one-pass student, when loaded)."""

    def __init__(self, left: Side, right: Side, workdir: Path, lock: threading.RLock | None = None,
                 onepass: Side | None = None):  # fmt: skip
        self.sides = {"left": left, "right": right}  # the default view: the baseline vs the SnapFusion student
        self.right_models = {STUDENT: right} | ({ONEPASS: onepass} if onepass is not None else {})
        self.workdir = workdir
        self.device_text = f"{left.pipe.device} ({host_description()})"
        # Gradio runs one event of the "models" group at a time; the lock also covers a cancelled event whose
        # thread is still finishing its current step (and the export, which shares it).
        self.lock = lock or threading.RLock()
        self._runs: collections.OrderedDict[str, Run] = collections.OrderedDict()  # session -> run in progress
        self._last: collections.OrderedDict[str, dict] = collections.OrderedDict()  # session -> last timings

    @property
    def models(self) -> dict[str, Side]:
        """Every loaded model: left, right (the SnapFusion student) and onepass when loaded (the Model tab's)."""
        return dict(self.sides) | {k: s for k, s in self.right_models.items() if k != STUDENT}

    @property
    def limit_note(self) -> str:
        limits = {"left": self.sides["left"].token_limit}
        for k, s in self.right_models.items():
            limits["right" if k == STUDENT else f"right, {s.role.lower()}"] = s.token_limit
        return token_limit_note(limits)

    def side(self, key: str, right_model=STUDENT) -> Side:
        """The model that runs on side ``key``; for the right side, the visitor's choice (checked)."""
        return self.sides["left"] if key == "left" else self.right_models[self.check_right_model(right_model)]

    # -- input checks

    def check_right_model(self, value) -> str:
        """The right side's model: "student" (the default, also for None) or "onepass" when it is loaded."""
        if value is None:
            return STUDENT
        if isinstance(value, str) and value in self.right_models:
            return value
        if value == ONEPASS:
            raise InputError(f"right model {ONEPASS!r} ({RIGHT_ROLES[ONEPASS].lower()}) is not loaded on this "
                             f"server; choose {STUDENT!r}.")  # fmt: skip
        raise InputError(f"right model must be one of {', '.join(self.right_models)}; got {show(value)}.")

    def check_common(self, prompt, negative_prompt, seed, randomize_seed) -> tuple[str, str, int]:
        prompt = check_text(prompt, "prompt", self.limit_note)
        negative_prompt = check_text(negative_prompt, "negative prompt", self.limit_note)
        randomize = check_bool(randomize_seed, "randomize seed")
        seed = secrets.randbelow(MAX_SEED) if randomize else check_seed(seed)
        return prompt, negative_prompt, seed

    def check_side(self, key: str, steps, guidance, right_model=STUDENT) -> tuple[int, float]:
        """Steps and guidance of one side, in the ranges of the model that runs there (a guidance-embedded model:
        the guidance scales it was trained on)."""
        side = self.side(key, right_model)
        low, high = side.guidance_range
        why = f" (the range the {side.role.lower()} was trained on)" if side.trained_guidance_range else ""
        return (check_int(steps, f"steps ({key})", STEPS_MIN, side.max_steps),
                check_float(guidance, f"guidance ({key})", low, high, why))  # fmt: skip

    @staticmethod
    def check_negative(side: Side, negative_prompt: str) -> None:
        """A negative prompt is refused for a guidance-embedded model (no unconditional branch: it has no effect)."""
        if side.guidance_embedded and negative_prompt.strip():
            raise InputError(
                f"negative prompt: the {side.role.lower()} on the {side.key} takes the guidance scale as an input "
                "and runs one UNet pass per step, with no unconditional branch, so a negative prompt has no effect on "
                "it. Leave the negative prompt empty."
            )

    def header(self, key: str, steps, guidance, right_model=STUDENT) -> str:
        """A side's heading for the values in its sliders; a value out of range is a ``gr.Error`` naming the limits
        (raised by ``check_side``), not gradio's bare "Value 500 is greater than maximum value 50"."""
        steps, guidance = self.check_side(key, steps, guidance, right_model)
        side = self.side(key, right_model)
        return readouts.side_header(side.arrow, side.label, side.name, steps, guidance)

    def choose_right(self, right_model):
        """The right side's controls for the visitor's choice of model: (header, steps slider, guidance slider,
        image, readout, banner, negative prompt box). The right image is cleared (it came from the other model)."""
        side = self.side("right", right_model)
        low, high = side.guidance_range
        negative_info = (f"Not used by the {side.role.lower()} (no unconditional pass): leave it empty."
                         if side.guidance_embedded else "")  # fmt: skip
        return (
            readouts.side_header(side.arrow, side.label, side.name, side.default_steps, side.default_guidance),
            gr.update(value=side.default_steps, maximum=side.max_steps),
            gr.update(value=side.default_guidance, minimum=low, maximum=high, info=side.guidance_info),
            gr.update(value=None, label=image_label(side)),
            f"*{side.label}: latency readout appears here.*",
            readouts.waiting_html(
                f"Right side: the {html.escape(side.role.lower())} <code>{html.escape(side.name)}"
                "</code>. Press <b>Generate both</b> to see its speed-up."
            ),  # fmt: skip
            gr.update(info=negative_info),
        )

    # -- per-session state

    def _start(self, request, order: tuple[str, ...], steps: dict[str, int]) -> tuple[str, Run]:
        session = session_of(request)
        run = Run(order, steps)
        self._runs[session] = run
        self._runs.move_to_end(session)
        while len(self._runs) > SESSIONS_KEPT:
            self._runs.popitem(last=False)
        return session, run

    def _remember(self, session: str, key: str, run_id: tuple, timings: dict) -> dict:
        memory = self._last.setdefault(session, {})
        self._last.move_to_end(session)
        while len(self._last) > SESSIONS_KEPT:
            self._last.popitem(last=False)
        memory[key] = (run_id, timings)
        return memory

    # -- streaming one side

    @staticmethod
    def _notes(side: Side, prompt: str, negative_prompt: str) -> list[str]:
        notes = []
        if not prompt.strip():
            notes.append("Empty prompt: this image is unconditional (no text to follow).")
        for text, what in ((prompt, "Prompt"), (negative_prompt, "Negative prompt")):
            dropped = dropped_text(side.pipe.tokenizer, text) if text else None
            if dropped:
                notes.append(readouts.truncation_note(what, side.token_limit, *dropped))
        return notes

    def _stream(self, side: Side, prompt, negative_prompt, seed, steps, guidance, run: Run):
        """Run one side in a worker thread. Yields ``("step", i, seconds so far)`` as steps finish (at most every
        0.2 s, and the last one), then ``("done", image, readout, timings)``. Closing the generator early (the
        visitor cancelled or left) stops the pipeline after its current step; so does ``run.cancel``."""
        key = side.key
        cancel = run.cancel
        events: queue.Queue = queue.Queue()
        run.current, run.step = key, 0

        def on_step(pipe, i, t, callback_kwargs):
            if cancel.is_set():
                pipe._interrupt = True  # diffusers' stop: the pipeline ends after this step
            events.put(("step", i + 1))
            return {}

        def work():
            try:
                with self.lock:
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
                run.step = value
                now = time.perf_counter()
                if not cancel.is_set() and (value == steps or now - last >= 0.2):  # no progress after Cancel
                    last = now
                    yield "step", value, now - start
        finally:
            if not finished:
                cancel.set()
        if out.timings.get("interrupted") or cancel.is_set():
            raise Cancelled()
        readout = readouts.readout_markdown(out.timings, guidance, self.device_text,
                                            self._notes(side, prompt, negative_prompt), side.role)  # fmt: skip
        timings = dict(out.timings, guidance=guidance, seed=seed, model=side.name, role=side.role,
                       unet_evaluations=readouts.unet_evaluations(out.timings))  # fmt: skip
        run.done[key] = timings
        yield "done", out.images[0], readout, timings

    # -- handlers

    def compare(self, prompt, negative_prompt, seed, randomize_seed, left_steps, left_guidance, right_steps,
                right_guidance, right_model=STUDENT, request: gr.Request = None,
                progress=gr.Progress()):  # fmt: skip
        """Run the right side (fast), then the left side (baseline), with the same prompt and seed.

        ``right_model``: "student" (the SnapFusion student, default) or "onepass" (the one-pass student, when
        loaded). Streams (left image, left readout, right image, right readout, speed-up banner, seed used, timings
        JSON); the readouts show live progress, the last update holds the results."""
        prompt, negative_prompt, seed = self.check_common(prompt, negative_prompt, seed, randomize_seed)
        left, right = self.side("left"), self.side("right", right_model)
        left_steps, left_guidance = self.check_side("left", left_steps, left_guidance)
        right_steps, right_guidance = self.check_side("right", right_steps, right_guidance, right_model)
        for side in (left, right):
            self.check_negative(side, negative_prompt)
        session, run = self._start(request, ("right", "left"), {"left": left_steps, "right": right_steps})
        skip = gr.skip()
        total = left_steps + right_steps
        try:
            banner = readouts.waiting_html("Running the right side first, then the left side...")
            progress((0, total), desc="Right side")
            running = readouts.running_markdown(0, right_steps, 0.0)
            yield None, "*Waiting: the right side runs first.*", None, running, banner, seed, skip
            for ev in self._stream(right, prompt, negative_prompt, seed, right_steps, right_guidance, run):
                if ev[0] == "step":
                    progress((ev[1], total), desc=f"Right side: step {ev[1]}/{right_steps}")
                    yield skip, skip, skip, readouts.running_markdown(ev[1], right_steps, ev[2]), skip, skip, skip
                else:
                    _, r_img, r_text, r_t = ev
            waiting = (f"Right side done in <b>{r_t['total_ms']:,.0f} ms</b>; the baseline on the left is still "
                       "running...")  # fmt: skip
            yield skip, readouts.running_markdown(0, left_steps, 0.0), r_img, r_text, readouts.waiting_html(waiting), \
                skip, {"seed": seed, "right": r_t}  # fmt: skip
            for ev in self._stream(left, prompt, negative_prompt, seed, left_steps, left_guidance, run):
                if ev[0] == "step":
                    progress((right_steps + ev[1], total), desc=f"Left side: step {ev[1]}/{left_steps}")
                    yield skip, readouts.running_markdown(ev[1], left_steps, ev[2]), skip, skip, skip, skip, skip
                else:
                    _, l_img, l_text, l_t = ev
        except Cancelled:
            banner, left_text, right_text = self._cancelled_view(run)
            yield skip, left_text, skip, right_text, banner, skip, skip
            return
        except Exception:
            run.finished = True
            raise
        else:
            run.finished = True  # a run closed early (the visitor left) is not finished: a Cancel would report it
            run_id = (prompt, negative_prompt, seed)
            self._remember(session, "right", run_id, r_t)
            self._remember(session, "left", run_id, l_t)
            data = {"seed": seed, "left": l_t, "right": r_t, "speedup": readouts.speedup_ratios(l_t, r_t)}
            yield l_img, l_text, r_img, r_text, readouts.speedup_html(l_t, r_t), seed, data
        finally:
            run.ended.set()  # after the run's last update (Cancel's wait_stopped waits for it)

    def run_one(self, key, prompt, negative_prompt, seed, randomize_seed, steps, guidance, request=None,
                progress=None, right_model=STUDENT):  # fmt: skip
        """One side alone (the right side: the model ``right_model`` names). Streams (image, readout, speed-up
        banner, seed used, timings JSON); the banner compares with this session's last run of the other side when
        it had the same prompt and seed."""
        prompt, negative_prompt, seed = self.check_common(prompt, negative_prompt, seed, randomize_seed)
        side = self.side(key, right_model)
        steps, guidance = self.check_side(key, steps, guidance, right_model)
        self.check_negative(side, negative_prompt)
        session, run = self._start(request, (key,), {key: steps})
        skip = gr.skip()
        progress = progress or (lambda *args, **kwargs: None)
        try:
            yield None, readouts.running_markdown(0, steps, 0.0), skip, seed, skip
            for ev in self._stream(side, prompt, negative_prompt, seed, steps, guidance, run):
                if ev[0] == "step":
                    progress((ev[1], steps), desc=f"{key.capitalize()} side: step {ev[1]}/{steps}")
                    yield skip, readouts.running_markdown(ev[1], steps, ev[2]), skip, skip, skip
                else:
                    _, img, text, t = ev
        except Cancelled:
            banner, left_text, right_text = self._cancelled_view(run)
            yield skip, left_text if key == "left" else right_text, banner, skip, skip
            return
        except Exception:
            run.finished = True
            raise
        else:
            run.finished = True
            run_id = (prompt, negative_prompt, seed)
            memory = self._remember(session, key, run_id, t)
            other = "right" if key == "left" else "left"
            data = {"seed": seed, key: t}
            if other in memory and memory[other][0] == run_id:
                pair = {key: t, other: memory[other][1]}
                banner = readouts.speedup_html(pair["left"], pair["right"], note="The two sides were run separately.")
                data["speedup"] = readouts.speedup_ratios(pair["left"], pair["right"])
            else:
                banner = readouts.waiting_html(f"Run the {other} side with the same prompt and seed (or press "
                                               "<b>Generate both</b>) to see the speed-up.")  # fmt: skip
            yield img, text, banner, seed, data
        finally:
            run.ended.set()  # after the run's last update (Cancel's wait_stopped waits for it)

    def cancel(self, request: gr.Request = None):
        """Stop this visitor's run after its current step (never another visitor's) and say so on the page.

        Returns (banner, left readout, right readout): the side that was running says where it stopped, a side
        that had not started says it did not run, a finished side keeps its result."""
        skip = gr.skip()
        run = self._runs.get(session_of(request))
        if run is None or run.finished:
            return skip, skip, skip
        out, parts = {"left": skip, "right": skip}, []
        for key in run.order:
            if key in run.done:
                parts.append(f"the {key} side had finished ({run.done[key]['total_ms']:,.0f} ms)")
            elif key == run.current:
                out[key] = readouts.cancelled_markdown(run.step, run.steps[key])
                parts.append(f"the {key} side stopped at step {run.step}/{run.steps[key]}")
            else:
                out[key] = readouts.cancelled_markdown(None, run.steps[key])
                parts.append(f"the {key} side did not run")
        message = "; ".join(parts) + ". Nothing was compared: press <b>Generate both</b> to run again."
        run.cancelled_view = readouts.cancelled_html(message[0].upper() + message[1:]), out["left"], out["right"]
        run.finished = True  # reported once
        run.cancel.set()  # after the view is set: the run's own last update repeats it (_cancelled_view)
        return run.cancelled_view

    def wait_stopped(self, presses: int, request: gr.Request = None) -> int:
        """Wait (at most ``STOP_WAIT_S``) until this visitor's run has sent its last update, then count the Cancel
        press (``presses + 1``): the page's gradio cancel, triggered by that count, then finds only queued events.
        Gradio's cancel of a running event can reach the page as an error (its empty completion message arrives
        while the page still reads the event's stream)."""
        run = self._runs.get(session_of(request))
        if run is not None and not run.ended.is_set():
            run.ended.wait(STOP_WAIT_S)
            time.sleep(STOP_GRACE_S)  # the run's completion message, sent by gradio after the stream's end
        return presses + 1

    @staticmethod
    def _cancelled_view(run: Run) -> tuple:
        """The stopped run's last update: what Cancel put on the page, sent again by the run itself. Gradio ends a
        stream by sending its last values once more, so the run must not end on a progress update (which would
        overwrite Cancel's readout) nor with an error (shown as one). Raises ``Cancelled`` when nobody pressed
        Cancel (the stream was closed: the visitor left)."""
        if run.cancelled_view is None:
            raise Cancelled()
        return run.cancelled_view
