"""The Gradio app's layout: a 50-step baseline next to the SnapFusion 8-step student (or, the visitor's choice, the
one-pass student when it is loaded).

Tabs: Compare (same prompt and seed on both sides, measured timings, the speed-up; handlers in ``session.py``),
Model (both architectures by paper stage; ``models_tab.py``), Export (Core ML / ExecuTorch of the left side or of
the right side's chosen model; ``exports.py``). ``build_demo`` wires the handlers to components. Models are chosen
at start-up only (``app.py``): a visitor picks a side, never a path.
"""

from __future__ import annotations

import functools
import html
import json
import threading
from collections.abc import Callable

import gradio as gr

from export.options import ATTENTION_VARIANTS, COMPONENTS, PRECISIONS, QUANTIZE_CHOICES
from pipelines import SnapFusionPipeline

from .errors import user_errors
from .exports import EXPORTS_KEPT, Exporter, model_choices
from .inputs import MAX_PROMPT_CHARS, MAX_SEED, STEPS_MIN
from .models_tab import architecture_plot, eval_files, model_summary, stage_headers, totals_headers
from .readouts import waiting_html
from .session import CompareApp, image_label
from .sides import ONEPASS, RIGHT_ROLES, STUDENT, Side, describe, model_card, model_display_name, warm_up
from .workdir import make_workdir

# The mini bundle is trained on a toy world of colored shapes on flat backgrounds: these prompts are in its grammar.
EXAMPLES = [
    "a big red circle in the center on a gray background",
    "a small blue square on the left, black background",
    "a big yellow triangle at the top on a white background",
    "a big green diamond left of a small purple square on a black background",
    "brown background with a small cyan ring above a big orange cross",
    "a big pink circle and a small blue triangle, the first below the second, gray background",
]
QUEUE_SIZE = 16
GROUP = "models"  # concurrency group: one pipeline call at a time, so measured timings are not shared-CPU timings

CSS = """
.sf-image img { image-rendering: pixelated; width: 100%; height: 100%; object-fit: contain; }
.sf-side-title h3 { margin-bottom: 0; }
"""


def on_gpu(fn: Callable) -> Callable:
    """``spaces.GPU`` (Hugging Face ZeroGPU) when the ``spaces`` package is installed, else ``fn`` unchanged."""
    try:
        import spaces  # type: ignore[import-not-found]
    except ImportError:
        return fn
    return spaces.GPU(fn)


def build_demo(teacher: SnapFusionPipeline, student: SnapFusionPipeline, teacher_name: str, student_name: str,
               teacher_source: str = "", student_source: str = "", warmup: bool = True,
               export_keep: int = EXPORTS_KEPT, onepass: SnapFusionPipeline | None = None, onepass_name: str = "",
               onepass_source: str = "") -> gr.Blocks:  # fmt: skip
    """The whole app for the loaded pipelines (left: the baseline, right: the SnapFusion student, or the one-pass
    student ``onepass`` when given and the visitor picks it), queue set up.

    ``*_name`` is what the UI calls each model; ``*_source`` its folder or Hub id (model card, eval results)."""
    left = Side("left", "Baseline", teacher_name, teacher_source, teacher)
    right = Side("right", RIGHT_ROLES[STUDENT], student_name, student_source, student)
    third = None if onepass is None else Side("right", RIGHT_ROLES[ONEPASS], onepass_name, onepass_source, onepass)
    if warmup and not gr.utils.is_zero_gpu_space():  # ZeroGPU attaches a GPU per call: no GPU at start-up
        for s in (left, right, third):
            if s is not None:
                warm_up(s.pipe, s.default_guidance)
    workdir = make_workdir()  # everything this app serves lives here; removed at exit and on SIGTERM
    lock = threading.RLock()
    app = CompareApp(left, right, workdir, lock, onepass=third)
    exporter = Exporter(app, workdir, lock, export_keep)

    with gr.Blocks(title="SnapFusion: 50 steps vs 8 steps", delete_cache=(1800, 3600)) as demo:
        gr.Markdown(
            f"# SnapFusion: {right.default_steps} steps vs {left.default_steps} steps. How much faster?\n"
            "Same prompt, same seed, two text-to-image models run live on this server, one after the other. "
            f"**Left: the baseline** `{teacher_name}` ({describe(teacher)}, {left.default_steps} steps). "
            f"**Right: the SnapFusion student** `{student_name}` ({describe(student)}, {right.default_steps} "
            "steps). Every time shown is measured; the banner says how much faster the right side is."
            + ("" if third is None else
               f" Or put **the one-pass student** `{onepass_name}` on the right ({describe(onepass)}, "
               f"{third.default_steps} steps, no CFG batch): choose it above the right image.")
        )  # fmt: skip
        with gr.Tab("Compare"):
            with gr.Row():
                prompt = gr.Textbox(label="Prompt", value=EXAMPLES[0], max_length=MAX_PROMPT_CHARS, scale=4,
                                    elem_id="prompt")  # fmt: skip
                negative = gr.Textbox(label="Negative prompt", value="", max_length=MAX_PROMPT_CHARS, scale=2,
                                      elem_id="negative")  # fmt: skip
            with gr.Row():
                seed = gr.Number(label="Seed", value=0, precision=0, minimum=0, maximum=MAX_SEED - 1, scale=1)
                randomize = gr.Checkbox(label="Randomize seed", value=False, scale=1)
                run_both = gr.Button("Generate both", variant="primary", scale=2, elem_id="generate")
                cancel = gr.Button("Cancel", variant="stop", scale=1, elem_id="cancel")
            banner = gr.HTML(waiting_html(), elem_id="speedup")
            outputs = {}
            with gr.Row(equal_height=False):
                for s in (left, right):
                    with gr.Column():
                        if s.key == "right":  # the visitor's choice of model for this side (hidden when only one)
                            right_model = gr.Radio(
                                [(f"{m.role} ({m.default_steps} steps, "
                                  f"{'guidance as input' if m.guidance_embedded else 'CFG'})", k)
                                 for k, m in app.right_models.items()],
                                value=STUDENT, label="Right side", visible=len(app.right_models) > 1,
                                elem_id="right-model",
                            )  # fmt: skip
                        header = gr.Markdown(app.header(s.key, s.default_steps, s.default_guidance),
                                             elem_classes="sf-side-title", elem_id=f"{s.key}-header")  # fmt: skip
                        image = gr.Image(label=image_label(s), type="pil", format="png", height=320,
                                         interactive=False, elem_id=f"{s.key}-image",
                                         elem_classes="sf-image")  # fmt: skip
                        readout = gr.Markdown(f"*{s.label}: latency readout appears here.*",
                                              elem_id=f"{s.key}-readout")  # fmt: skip
                        with gr.Row():
                            steps = gr.Slider(STEPS_MIN, s.max_steps, value=s.default_steps, step=1,
                                              label=f"Steps ({s.key})", elem_id=f"{s.key}-steps")  # fmt: skip
                            guidance = gr.Slider(*s.guidance_range, value=s.default_guidance, step=0.5,
                                                 label=f"Guidance ({s.key})", info=s.guidance_info,
                                                 elem_id=f"{s.key}-guidance")  # fmt: skip
                        run_side = gr.Button(f"Run the {s.key} side alone", size="sm")
                        outputs[s.key] = {"header": header, "image": image, "readout": readout, "steps": steps,
                                          "guidance": guidance, "button": run_side}  # fmt: skip
            with gr.Accordion("Raw timings (JSON, measured)", open=False):
                timings_json = gr.JSON(label="Timings", elem_id="timings")
            gr.Examples([[e] for e in EXAMPLES], inputs=[prompt], label="Prompts in the bundle's toy world",
                        cache_examples=False)  # fmt: skip
            gr.Markdown(
                f"Prompts longer than {MAX_PROMPT_CHARS:,} characters are refused; {app.limit_note}: a longer "
                "prompt is truncated and the readout says which words were ignored. The right side runs first, then "
                "the left; one generation runs at a time on this server, so the timings are not shared with another "
                "visitor's run."
            )

        L, R = outputs["left"], outputs["right"]
        common = [prompt, negative, seed, randomize]
        # preprocess=False everywhere: the handlers check every value themselves (gradio's own Slider / Number check
        # would answer a typed 500 with a bare error and a server traceback instead of the limits of this side).
        compare_event = run_both.click(
            on_gpu(user_errors(app.compare)),
            inputs=common + [L["steps"], L["guidance"], R["steps"], R["guidance"], right_model],
            outputs=[L["image"], L["readout"], R["image"], R["readout"], banner, seed, timings_json],
            api_name="compare", preprocess=False, concurrency_id=GROUP, concurrency_limit=1, show_progress_on=banner,
        )  # fmt: skip
        side_events = []
        for s, o in ((left, L), (right, R)):
            choice = [right_model] if s.key == "right" else []
            side_events.append(o["button"].click(
                on_gpu(user_errors(_one_side_handler(app, s.key))),
                inputs=common + [o["steps"], o["guidance"]] + choice,
                outputs=[o["image"], o["readout"], banner, seed, timings_json], api_name=s.key,
                preprocess=False, concurrency_id=GROUP, concurrency_limit=1, show_progress_on=banner,
            ))  # fmt: skip
            for comp in (o["steps"], o["guidance"]):
                comp.change(user_errors(functools.partial(app.header, s.key)),
                            inputs=[o["steps"], o["guidance"]] + choice, outputs=o["header"], preprocess=False,
                            concurrency_limit=None, show_progress="hidden", api_visibility="private")  # fmt: skip
        right_model.change(
            user_errors(app.choose_right), inputs=right_model,
            outputs=[R["header"], R["steps"], R["guidance"], R["image"], R["readout"], banner, negative],
            preprocess=False, concurrency_limit=None, show_progress="hidden", api_visibility="private",
        )  # fmt: skip
        # Cancel: the running run stops after its step and ends with Cancel's view (no error, no late progress);
        # once it has, gradio's cancel drops a queued run of this visitor's (a change of `stopped` triggers it).
        stopped = gr.Number(0, precision=0, visible="hidden", elem_id="stopped")  # Cancel presses whose run stopped
        cancel.click(app.cancel, None, [banner, L["readout"], R["readout"]], queue=False, api_visibility="private") \
            .then(app.wait_stopped, stopped, stopped, queue=False, api_visibility="private", show_progress="hidden")
        stopped.change(None, cancels=[compare_event, *side_events])  # fmt: skip

        with gr.Tab("Model"):
            _model_tab(app)

        with gr.Tab("Export"):
            gr.Markdown(
                "Convert one side to Core ML (one `.mlpackage` per component, for iPhone / Mac apps) and / or "
                "ExecuTorch (one `.pte` per component, XNNPACK CPU delegate, for iOS and Android). Each export is "
                "checked numerically against PyTorch (ExecuTorch files in the ExecuTorch runtime itself); the report "
                "shows the check and the latency readout of each format. The denoiser carries the sampler: run it "
                "with `python -m export.run FOLDER --prompt P`. The right side is the model chosen above the right "
                "image in Compare (the one-pass student too, when loaded). "
                f"Only the newest {export_keep} exports stay on the server."
            )
            with gr.Row():
                model = gr.Radio(model_choices(app), value="right", label="Model")
                comps = gr.CheckboxGroup(list(COMPONENTS), value=list(COMPONENTS), label="Components")
            with gr.Row():
                fmt = gr.Radio([("Core ML", "coreml"), ("ExecuTorch", "executorch"), ("Both", "both")],
                               value="coreml", label="Format")  # fmt: skip
                precision = gr.Radio(list(PRECISIONS), value="fp16", label="Precision (Core ML)")
                quantize = gr.Radio(list(QUANTIZE_CHOICES), value="none", label="Quantization",
                                    info="Core ML: palettization bits (6 is the lowest recommended without "
                                         "retraining); ExecuTorch: int8")  # fmt: skip
                attention = gr.Radio(list(ATTENTION_VARIANTS), value="split_einsum", label="Attention (Core ML)",
                                     info="split_einsum: Neural Engine; original: GPU")  # fmt: skip
            export_btn = gr.Button("Export", variant="primary")
            export_file = gr.File(label="Export zip", interactive=False)
            export_report = gr.Markdown()
            export_json = gr.JSON(label="Export report (JSON)", open=False)
            export_btn.click(
                user_errors(_export_handler(exporter)),
                inputs=[model, comps, precision, quantize, attention, fmt, right_model],
                outputs=[export_file, export_report, export_json], api_name="export", preprocess=False,
                concurrency_id=GROUP, concurrency_limit=1,
            )  # fmt: skip
            right_model.change(  # the right side's model, as chosen in Compare, is the one exported
                user_errors(lambda choice: gr.update(choices=model_choices(app, choice))), inputs=right_model,
                outputs=model, preprocess=False, concurrency_limit=None, show_progress="hidden",
                api_visibility="private",
            )  # fmt: skip

    demo.queue(default_concurrency_limit=1, max_size=QUEUE_SIZE)
    demo.snapfusion = app  # the handlers, for tests and for app.py
    demo.snapfusion_exporter = exporter
    return demo


def _one_side_handler(app: CompareApp, key: str) -> Callable:
    if key == "right":

        def run(prompt, negative_prompt, seed, randomize_seed, steps, guidance, right_model=STUDENT,
                request: gr.Request = None, progress=gr.Progress()):  # fmt: skip
            yield from app.run_one(key, prompt, negative_prompt, seed, randomize_seed, steps, guidance, request,
                                   progress, right_model)  # fmt: skip

    else:

        def run(prompt, negative_prompt, seed, randomize_seed, steps, guidance, request: gr.Request = None,
                progress=gr.Progress()):  # fmt: skip
            yield from app.run_one(key, prompt, negative_prompt, seed, randomize_seed, steps, guidance, request,
                                   progress)  # fmt: skip

    run.__name__ = run.__qualname__ = f"run_{key}"
    run.__doc__ = f"Run the {key} side alone: (image, readout, speed-up banner, seed used, timings JSON)."
    return run


def _export_handler(exporter: Exporter) -> Callable:
    def export(model, components, precision, quantize, attention, fmt="coreml", right_model=STUDENT,
               request: gr.Request = None, progress=gr.Progress()):  # fmt: skip
        return exporter(model, components, precision, quantize, attention, fmt, right_model, request, progress)

    export.__doc__ = exporter.__call__.__doc__
    return export


def _model_tab(app: CompareApp) -> None:
    models = app.models  # left, right and the one-pass student when loaded
    try:
        stage_rows, total_rows = model_summary(models)
    except ImportError as e:  # pipelines.profiling not importable: say so instead of showing made-up numbers
        gr.Markdown(f"Architecture summary unavailable: {html.escape(str(e))}")
        return
    gr.Markdown(
        f"{'Both' if len(models) == 2 else 'The'} UNets by stage of the SnapFusion paper (Table 3 grouping). **CA**: "
        "cross-attention (transformer) block, **RB**: ResNet block; *Other* holds conv_in, the time embedding and "
        "the output head. Parameters and FLOPs are counted from the loaded models (FLOPs = 2 × multiply-accumulates, "
        "at each model's image size and text length; see `pipelines/profiling.py` for what is counted). A step is "
        "2 UNet passes with CFG (one batch of 2) and 1 for a UNet that takes the guidance scale as an input. "
        "Counts, not timings."
    )
    gr.Dataframe(value=stage_rows, label="Blocks per stage", interactive=False, headers=stage_headers(models))
    gr.Dataframe(value=total_rows, headers=totals_headers(models), label="Totals", interactive=False, wrap=True,
                 elem_id="totals")  # fmt: skip
    plot = architecture_plot(stage_rows, models, app.workdir / "architecture.png")
    gr.Image(str(plot), label="CA / RB blocks per stage", type="filepath", interactive=False, format="png")
    pngs, jsons = eval_files(models)
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
        for s in models.values():
            gr.Markdown(model_card(s))


def launch_kwargs() -> dict:
    """``demo.launch`` options shared by app.py and the tests (server name and port come from gradio's
    ``GRADIO_SERVER_NAME`` / ``GRADIO_SERVER_PORT``, which Spaces sets)."""
    return {"css": CSS, "show_error": True}


__all__ = ["EXAMPLES", "CompareApp", "build_demo", "launch_kwargs", "model_display_name"]
