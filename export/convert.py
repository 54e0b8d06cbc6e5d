"""One converter per component (style of apple/ml-stable-diffusion ``torch2coreml.py``).

Each converter wraps its component in a small ``nn.Module`` with plain tensor inputs and outputs named as apple's
Swift ``StableDiffusion`` package expects them, captures it with ``torch.export``, checks the exported graph against
eager PyTorch (PSNR, hard threshold), converts it with ``coremltools.convert`` to an ML program, optionally
palettizes the weights, saves the ``.mlpackage`` and times the component.

    TextEncoder  input_ids (1, L) float32 token ids      -> last_hidden_state (1, L, D), pooled_outputs (1, D)
    Denoiser     one sampling step, schedule baked in (export/denoiser.py) -> next_latents (1, 4, h, w)
    Unet         sample (2, 4, h, w), timestep (2,),
                 encoder_hidden_states (2, D, 1, L)      -> noise_pred (2, 4, h, w)
    VAEDecoder   z (1, 4, h, w) = latents / scaling_factor -> image (1, 3, H, W) in [-1, 1]

Batch 2 for the UNet is classifier-free guidance (unconditional + text); a guidance-embedded UNet runs batch 1 with
a ``guidance_scale`` (B,) input. ``encoder_hidden_states`` uses apple's (B, D, 1, L) layout, which the Swift package
produces from the text encoder's (B, L, D) output. ``component_graph`` builds these wrappers for every format (the
ExecuTorch files take the same inputs, export/executorch.py).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import platform
import shutil
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from pipelines.guidance import guidance_scale_embedding, is_guidance_embedded
from pipelines.latency import host_description
from pipelines.psnr import psnr
from pipelines.timing import time_ms

from .attention import attention_variant
from .denoiser import DenoiserStep, denoiser_inputs, step_schedule
from .errors import ExportError
from .palettize import palettize

MIN_PSNR_DB = 35.0  # apple/ml-stable-diffusion's ABSOLUTE_MIN_PSNR
UNET_BATCH = 2  # classifier-free guidance: unconditional + text, as the Swift package runs it
DEPLOYMENT_TARGET = "iOS16"  # = macOS13, Core ML spec 7: ML programs with palettized (LUT) weights
CHECK_EXPORTED = "exported graph (torch.export program run in PyTorch) vs eager PyTorch, float32"
CHECK_COREML = "Core ML package (MLModel.predict) vs eager PyTorch"
LATENCY_MAX_RUNS = 10  # timed runs per component (at least 3) ...
LATENCY_BUDGET_S = 10.0  # ... while their total stays within this many seconds
HOST_LABEL = "measured on {host} (PyTorch exported graph, not Core ML)"
COREML_LABEL = "measured with Core ML on {host} (compute units ALL)"


# ---------------------------------------------------------------------------------------------- wrappers


class TextEncoderForCoreML(nn.Module):
    """input_ids (1, L) float32 (apple feeds token ids as floats) -> last_hidden_state (1, L, D), pooled (1, D)."""

    input_names = ("input_ids",)
    output_names = ("last_hidden_state", "pooled_outputs")

    def __init__(self, text_encoder: nn.Module):
        super().__init__()
        self.text_encoder = text_encoder

    def forward(self, input_ids: torch.Tensor):
        out = self.text_encoder(input_ids.to(torch.int64), return_dict=False)
        return out[0], out[1]


class UnetForCoreML(nn.Module):
    """sample (B, C, h, w), timestep (B,), encoder_hidden_states (B, D, 1, L) -> noise_pred (B, C, h, w)."""

    input_names = ("sample", "timestep", "encoder_hidden_states")
    output_names = ("noise_pred",)

    def __init__(self, unet: nn.Module):
        super().__init__()
        self.unet = unet

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor):
        context = encoder_hidden_states.squeeze(2).transpose(1, 2)  # (B, D, 1, L) -> (B, L, D)
        return self.unet(sample, timestep, encoder_hidden_states=context, return_dict=False)[0]


class GuidedUnetForCoreML(UnetForCoreML):
    """A guidance-embedded UNet (one pass per step): ``UnetForCoreML``'s inputs plus guidance_scale (B,)."""

    input_names = ("sample", "timestep", "encoder_hidden_states", "guidance_scale")

    def forward(self, sample, timestep, encoder_hidden_states, guidance_scale):
        context = encoder_hidden_states.squeeze(2).transpose(1, 2)  # (B, D, 1, L) -> (B, L, D)
        cond = guidance_scale_embedding(guidance_scale, self.unet.config.time_cond_proj_dim)  # (B, dim)
        return self.unet(sample, timestep, encoder_hidden_states=context, timestep_cond=cond, return_dict=False)[0]


class VAEDecoderForCoreML(nn.Module):
    """z (1, C, h, w), latents already divided by the scaling factor -> image (1, 3, H, W) in [-1, 1]."""

    input_names = ("z",)
    output_names = ("image",)

    def __init__(self, decoder: nn.Module):
        super().__init__()
        self.decoder = decoder  # CompressedVAEDecoder or AutoencoderKL: decode() = post_quant_conv + decoder

    def forward(self, z: torch.Tensor):
        return self.decoder.decode(z, return_dict=False)[0]


DESCRIPTIONS = {
    "input_ids": "Token ids of the prompt (CLIP BPE, padded to the model's length), as float32",
    "last_hidden_state": "Token embeddings from the text encoder's last layer",
    "pooled_outputs": "Embedding of the end-of-text token (pooled output)",
    "sample": "Noisy latents being denoised (batch 2: unconditional, text)",
    "timestep": "Scheduler timestep, one per batch entry",
    "encoder_hidden_states": "Text embeddings in (B, D, 1, L) layout (transposed last_hidden_state)",
    "noise_pred": "The UNet's prediction (epsilon or v, see the manifest's scheduler config)",
    "z": "Denoised latents divided by the VAE scaling factor",
    "image": "Decoded image in [-1, 1], (1, 3, H, W)",
    "guidance_scale": "Guidance scale (the UNet embeds it; one pass per step, no CFG batch)",
    "latents": "Current latents (start: init_noise_sigma x Gaussian noise)",
    "step_index": "Index of the step, 0 .. steps-1 (the schedule is inside the model)",
    "text_states": "The text encoder's last_hidden_state for the prompt, (1, L, D)",
    "uncond_states": "The text encoder's last_hidden_state for the empty prompt, (1, L, D)",
    "next_latents": "Latents after this step; after the last step, divide by the scaling factor and decode",
}


# ---------------------------------------------------------------------------------------------- results


@dataclass
class ComponentReport:
    """What one converted component produced; JSON-able through ``to_dict``."""

    name: str
    package: str  # file name inside the export folder, e.g. "Unet.mlpackage"
    inputs: list[dict]  # [{"name", "shape", "dtype"}], read back from the saved package's spec
    outputs: list[dict]
    size_mb: float
    size_mb_before_quantization: float | None
    check: dict  # {"exported_graph": {...}, "coreml": {...}}
    latency: dict  # {"measured": {...}, "estimate": {...} (UNet with a latency table only)}
    conversion_s: float
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "name": self.name, "package": self.package, "inputs": self.inputs, "outputs": self.outputs,
            "size_mb": self.size_mb, "size_mb_before_quantization": self.size_mb_before_quantization,
            "check": self.check, "latency": self.latency, "conversion_s": self.conversion_s, "notes": self.notes,
        }  # fmt: skip


# ---------------------------------------------------------------------------------------------- coremltools


def import_coremltools():
    """Import coremltools quietly (it logs warnings about untested torch versions and, off macOS, its missing
    runtime) and teach its torch.export frontend ``aten.alias`` (an identity op it does not map yet)."""
    ct_logger = logging.getLogger("coremltools")
    level = ct_logger.level
    ct_logger.setLevel(logging.ERROR)
    try:
        import coremltools as ct
        from coremltools.converters.mil.frontend.torch.ops import _get_inputs
        from coremltools.converters.mil.frontend.torch.torch_op_registry import _TORCH_OPS_REGISTRY, register_torch_op
    finally:
        ct_logger.setLevel(level)
    if "alias" not in _TORCH_OPS_REGISTRY:  # CLIP's position_ids[:, :L] exports as aten.alias

        @register_torch_op
        def alias(context, node):
            context.add(_get_inputs(context, node)[0], torch_name=node.name)

    return ct


def coreml_runtime_available() -> bool:
    """True where coremltools can run models (macOS with its compiled runtime); never on Linux."""
    if platform.system() != "Darwin":
        return False
    try:
        from coremltools.libcoremlpython import _MLModelProxy  # noqa: F401
    except ImportError:
        return False
    return True


def _runtime_missing_reason() -> str:
    if platform.system() != "Darwin":
        return f"not run: no Core ML runtime on {platform.system()} (coremltools converts here but cannot run models)"
    return "not run: coremltools' compiled runtime (libcoremlpython) is not available"


# ---------------------------------------------------------------------------------------------- numerics


def _check(component: str, what: str, references: list[np.ndarray], outputs: list[np.ndarray],
           names: tuple[str, ...], min_psnr: float) -> dict:  # fmt: skip
    per_output = {}
    for n, r, o in zip(names, references, outputs):
        if r.shape != o.shape:
            raise ExportError(f"{component}: output {n} has shape {o.shape}; the reference's is {r.shape}.")
        per_output[n] = round(psnr(r, o), 2)  # peak = max |reference| (apple's compute_psnr)
    worst = min(per_output.values())
    result = {"ran": True, "what": what, "psnr_db": worst, "per_output_psnr_db": per_output,
              "threshold_db": min_psnr, "passed": bool(worst >= min_psnr)}  # fmt: skip
    if not result["passed"]:
        raise ExportError(
            f"{component}: numeric check failed ({what}): PSNR {worst:.1f} dB is below the {min_psnr:.0f} dB "
            "threshold."
        )
    return result


def _to_numpy(outputs) -> list[np.ndarray]:
    if isinstance(outputs, torch.Tensor):
        outputs = (outputs,)
    return [o.detach().to(torch.float32).cpu().numpy() for o in outputs]


# ---------------------------------------------------------------------------------------------- timing


def median_ms(fn: Callable[[], object], warmup: int = 1, min_runs: int = 3, max_runs: int = 10,
              budget_s: float = 20.0) -> tuple[float, int]:  # fmt: skip
    """Median wall-clock milliseconds of ``fn()`` (``pipelines.timing.time_ms``, on the CPU) after ``warmup`` calls:
    at least ``min_runs`` runs, more (up to ``max_runs``) while the total stays within ``budget_s``. Returns
    (median ms, runs)."""
    for _ in range(warmup):
        fn()
    times = []
    start = time.perf_counter()
    while len(times) < max_runs and (len(times) < min_runs or time.perf_counter() - start < budget_s):
        times.append(time_ms(fn))
    return float(np.median(times)), len(times)


def _time_on_host(module: Callable, args: tuple[torch.Tensor, ...], host: str) -> dict:
    with torch.no_grad():
        ms, runs = median_ms(lambda: module(*args), max_runs=LATENCY_MAX_RUNS, budget_s=LATENCY_BUDGET_S)
    return {"ms": round(ms, 3), "runs": runs, "kind": "host-pytorch-exported-graph",
            "label": HOST_LABEL.format(host=host)}  # fmt: skip


# ---------------------------------------------------------------------------------------------- helpers


@contextlib.contextmanager
def _eval_cpu_fp32(module: nn.Module):
    """The module in eval mode on the CPU in float32: the module itself when it already is, else a copy."""
    params = list(module.parameters())
    on_cpu_fp32 = all(p.device.type == "cpu" and p.dtype == torch.float32 for p in params)
    target = module if on_cpu_fp32 else copy.deepcopy(module).to(device="cpu", dtype=torch.float32)
    was_training = target.training
    target.eval()
    try:
        yield target
    finally:
        if target is module:
            module.train(was_training)


def _export_program(wrapper: nn.Module, args: tuple[torch.Tensor, ...]):
    """torch.export -> ATen-dialect program, the form coremltools converts."""
    return torch.export.export(wrapper, args).run_decompositions({})


def package_size_mb(path: str) -> float:
    total = 0
    for root, _, files in os.walk(path):
        total += sum(os.path.getsize(os.path.join(root, f)) for f in files)
    return total / 2**20


def _io_of(spec_features) -> list[dict]:
    from coremltools.proto import FeatureTypes_pb2

    names = FeatureTypes_pb2.ArrayFeatureType.ArrayDataType
    return [{"name": f.name, "shape": [int(s) for s in f.type.multiArrayType.shape],
             "dtype": names.Name(f.type.multiArrayType.dataType).lower()} for f in spec_features]  # fmt: skip


def _rename_features(ct, mlmodel, input_names, output_names):
    """Give the converted model our input/output names (torch.export names outputs after graph nodes)."""
    spec = mlmodel.get_spec()
    if len(spec.description.input) != len(input_names) or len(spec.description.output) != len(output_names):
        raise ExportError(
            f"converted model has {len(spec.description.input)} inputs / {len(spec.description.output)} outputs; "
            f"expected {len(input_names)} / {len(output_names)}."
        )
    for feature, name in zip(list(spec.description.input), input_names):
        if feature.name != name:
            ct.utils.rename_feature(spec, feature.name, name, rename_outputs=False)
    for feature, name in zip(list(spec.description.output), output_names):
        if feature.name != name:
            ct.utils.rename_feature(spec, feature.name, name, rename_inputs=False)
    return ct.models.MLModel(spec, weights_dir=mlmodel.weights_dir, skip_model_load=True)


# ---------------------------------------------------------------------------------------------- the conversion


@dataclass
class ConvertOptions:
    precision: str = "fp16"
    nbits: int | None = None  # palettization bits; None = no quantization
    min_psnr: float = MIN_PSNR_DB
    progress: Callable[[float, str], None] | None = None  # fraction within this component, message
    metadata: dict = field(default_factory=dict)


def _convert(name: str, wrapper: nn.Module, inputs: OrderedDict[str, torch.Tensor], package_path: str,
             opts: ConvertOptions, reference_fn: Callable[[], object] | None = None) -> ComponentReport:  # fmt: skip
    """Export, check, convert, (palettize,) save and time one wrapped component; returns its report."""
    say = opts.progress or (lambda f, m: None)
    t_start = time.perf_counter()
    args = tuple(inputs.values())
    output_names = wrapper.output_names

    # 1. eager reference (float32 PyTorch); reference_fn lets the UNet use the original attention
    with torch.no_grad():
        reference = _to_numpy(reference_fn() if reference_fn is not None else wrapper(*args))

    # 2. torch.export, then the numeric check of the exported graph against the eager reference
    say(0.05, f"{name}: torch.export")
    try:
        with torch.no_grad():
            program = _export_program(wrapper, args)
    except Exception as e:  # torch.export reports unsupported Python as many exception types
        first = (str(e).splitlines() or [""])[0][:300]
        raise ExportError(f"{name}: torch.export failed: {type(e).__name__}: {first}") from e
    exported = program.module()
    with torch.no_grad():
        outputs = _to_numpy(exported(*args))
    check = {"exported_graph": _check(name, CHECK_EXPORTED, reference, outputs, output_names, opts.min_psnr)}
    host = host_description()
    runtime = coreml_runtime_available()
    if not runtime:  # time the exported graph now, so it can be freed before the memory-hungry conversion
        say(0.15, f"{name}: timing the exported graph on this host")
        measured = _time_on_host(exported, args, host)
    del exported

    # 3. coremltools.convert (ML program), our feature names and descriptions
    say(0.25, f"{name}: coremltools.convert ({opts.precision})")
    ct = import_coremltools()
    precision = ct.precision.FLOAT16 if opts.precision == "fp16" else ct.precision.FLOAT32
    try:
        mlmodel = ct.convert(
            program, convert_to="mlprogram", minimum_deployment_target=getattr(ct.target, DEPLOYMENT_TARGET),
            compute_precision=precision, skip_model_load=True,
        )  # fmt: skip
    except Exception as e:  # an op coremltools cannot translate, etc.
        first = (str(e).splitlines() or [""])[0][:300]
        raise ExportError(f"{name}: coremltools.convert failed: {type(e).__name__}: {first}") from e
    del program
    mlmodel = _rename_features(ct, mlmodel, wrapper.input_names, output_names)
    mlmodel.short_description = f"SnapFusion {name} exported by snapfusion/export (torch.export + coremltools)"
    for n in wrapper.input_names:
        mlmodel.input_description[n] = DESCRIPTIONS[n]
    for n in output_names:
        mlmodel.output_description[n] = DESCRIPTIONS[n]
    mlmodel.user_defined_metadata.update({k: str(v) for k, v in opts.metadata.items()})
    mlmodel.save(package_path)
    size_before = package_size_mb(package_path)

    # 4. palettization (k-means LUT), replacing the saved float package
    size_before_q = None
    if opts.nbits is not None:
        say(0.6, f"{name}: {opts.nbits}-bit k-means palettization")
        mlmodel = palettize(mlmodel, opts.nbits)
        shutil.rmtree(package_path)
        mlmodel.save(package_path)
        size_before_q = round(size_before, 3)
    size = package_size_mb(package_path)

    # 5. the package itself, where Core ML can run it
    if runtime:
        say(0.8, f"{name}: Core ML check")
        loaded = ct.models.MLModel(package_path, compute_units=ct.ComputeUnit.ALL)
        feed = {k: v.numpy() for k, v in inputs.items()}
        predicted = loaded.predict(feed)
        check["coreml"] = _check(name, CHECK_COREML, reference, [predicted[n] for n in output_names], output_names,
                                 opts.min_psnr)  # fmt: skip
        ms, runs = median_ms(lambda: loaded.predict(feed), max_runs=LATENCY_MAX_RUNS, budget_s=LATENCY_BUDGET_S)
        measured = {"ms": round(ms, 3), "runs": runs, "kind": "coreml", "label": COREML_LABEL.format(host=host)}
    else:
        check["coreml"] = {"ran": False, "what": CHECK_COREML, "reason": _runtime_missing_reason()}
    spec = ct.models.MLModel(package_path, skip_model_load=True).get_spec()
    say(1.0, f"{name}: done ({size:.2f} MB)")
    return ComponentReport(
        name=name, package=os.path.basename(package_path), inputs=_io_of(spec.description.input),
        outputs=_io_of(spec.description.output), size_mb=round(size, 3), size_mb_before_quantization=size_before_q,
        check=check, latency={"measured": measured}, conversion_s=round(time.perf_counter() - t_start, 2),
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------- converters


def text_length(pipe) -> int:
    """Token sequence length L the text encoder runs at (tokenizer length, capped by its position table)."""
    length = 77
    if getattr(pipe, "tokenizer", None) is not None:
        length = int(min(pipe.tokenizer.model_max_length, 4096))
    if getattr(pipe, "text_encoder", None) is not None:
        length = min(length, int(pipe.text_encoder.config.max_position_embeddings))
    return length


def decoder_of(pipe) -> nn.Module:
    """The module that decodes latents: ``vae_decoder`` when the pipeline has one, else ``vae``."""
    return pipe.vae_decoder if getattr(pipe, "vae_decoder", None) is not None else pipe.vae


@dataclass
class ComponentGraph:
    """A component wrapped for export: the wrapper, its example inputs (in input order), the eager float32
    reference outputs (the UNet's with the original attention) and notes for the report."""

    wrapper: nn.Module
    inputs: OrderedDict
    reference: tuple[torch.Tensor, ...]
    notes: list[str] = field(default_factory=list)


def unet_batch(pipe) -> int:
    """The per-step UNet package's batch: 1 for a guidance-embedded UNet (one pass per step), else 2 (CFG)."""
    return 1 if is_guidance_embedded(pipe.unet) else UNET_BATCH


@contextlib.contextmanager
def component_graph(pipe, name: str, height: int, width: int, attention: str = "original", steps: int | None = None):
    """The ``ComponentGraph`` of ``name`` (a component of ``COMPONENTS``), its modules in eval mode on the CPU in
    float32 and the UNet's attention variant applied while the context is open."""
    f = pipe.vae_scale_factor
    gen = torch.Generator().manual_seed(0)
    if name == "text_encoder":
        length = text_length(pipe)
        ids = pipe.tokenizer(["a photo of a red circle"], padding="max_length", max_length=length, truncation=True,
                             return_tensors="pt").input_ids  # fmt: skip
        with _eval_cpu_fp32(pipe.text_encoder) as te:
            wrapper = TextEncoderForCoreML(te)
            yield _graph(wrapper, OrderedDict(input_ids=ids.to(torch.float32)))  # (1, L)
    elif name == "unet":
        cfg = pipe.unet.config
        b = unet_batch(pipe)
        inputs = OrderedDict(
            sample=torch.randn(b, cfg.in_channels, height // f, width // f, generator=gen),  # (B, C, h, w)
            timestep=torch.full((b,), float(pipe.scheduler.config.num_train_timesteps - 1)),  # (B,)
            # (B, D, 1, L): apple's layout of the text features
            encoder_hidden_states=torch.randn(b, cfg.cross_attention_dim, 1, text_length(pipe), generator=gen),
        )
        with _eval_cpu_fp32(pipe.unet) as unet:
            if is_guidance_embedded(unet):
                inputs["guidance_scale"] = torch.full((b,), float(pipe.config.default_guidance_scale))  # (B,)
                wrapper = GuidedUnetForCoreML(unet)
            else:
                wrapper = UnetForCoreML(unet)
            graph = _graph(wrapper, inputs)  # reference: the original attention
            try:
                with attention_variant(unet, attention):
                    yield graph
            except ValueError as e:
                if isinstance(e, ExportError):
                    raise
                raise ExportError(f"unet: {e}") from e
        graph.notes.append(f"attention: {attention}")
    elif name == "denoiser":
        schedule = step_schedule(pipe.scheduler, int(steps or pipe.config.default_num_inference_steps))
        inputs = OrderedDict(denoiser_inputs(pipe.unet, height // f, width // f, text_length(pipe),
                                             float(pipe.config.default_guidance_scale)))  # fmt: skip
        with _eval_cpu_fp32(pipe.unet) as unet:
            graph = _graph(DenoiserStep(unet, schedule).eval(), inputs)
            graph.notes.append(f"{schedule['timesteps'].shape[0]} steps of {type(pipe.scheduler).__name__} baked in")
            yield graph
    elif name == "vae_decoder":
        decoder = decoder_of(pipe)
        # z = latents / scaling_factor; denoised latents have about unit variance
        z = torch.randn(1, decoder.config.latent_channels, height // f, width // f, generator=gen)
        z = z / decoder.config.scaling_factor
        with _eval_cpu_fp32(decoder) as dec:
            graph = _graph(VAEDecoderForCoreML(dec), OrderedDict(z=z))
            source = "vae_decoder" if decoder is getattr(pipe, "vae_decoder", None) else "vae"
            graph.notes.append(f"decoder: {source} ({type(decoder).__name__}); input z = latents / "
                               f"{decoder.config.scaling_factor}")  # fmt: skip
            yield graph
    else:
        raise ExportError(f"unknown component {name!r}.")


def _graph(wrapper: nn.Module, inputs: OrderedDict) -> ComponentGraph:
    with torch.no_grad():
        out = wrapper(*inputs.values())
    return ComponentGraph(wrapper, inputs, out if isinstance(out, tuple) else (out,))


def convert_component(pipe, name: str, package_path: str, opts: ConvertOptions, height: int, width: int,
                      attention: str = "original") -> ComponentReport:  # fmt: skip
    """``name``'s Core ML package (see the module docstring), checked against eager PyTorch."""
    with component_graph(pipe, name, height, width, attention if name == "unet" else "original") as g:
        report = _convert(name, g.wrapper, g.inputs, package_path, opts, reference_fn=lambda: g.reference)
    report.notes.extend(g.notes)
    return report


__all__ = [
    "MIN_PSNR_DB", "UNET_BATCH", "ComponentGraph", "ComponentReport", "ConvertOptions", "component_graph",
    "convert_component", "coreml_runtime_available", "import_coremltools", "median_ms", "unet_batch",
]  # fmt: skip
