"""ExecuTorch (.pte, XNNPACK CPU delegate) conversion of one wrapped component, checked and timed in the ExecuTorch
runtime itself (``executorch.runtime.Runtime``), the runtime that iOS and Android apps link.

    torch.export -> [int8: XNNPACKQuantizer, per-channel int8 weights, dynamically quantized activations]
                 -> to_edge_transform_and_lower(XnnpackPartitioner) -> .pte -> Runtime: PSNR vs eager, latency
"""

from __future__ import annotations

import os
import time
from collections import OrderedDict
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from .errors import ExportError

EXECUTORCH_VERSION = "1.5.1"  # the version requirements.txt pins
INSTALL_HINT = f"ExecuTorch is not installed; run `pip install executorch=={EXECUTORCH_VERSION}`."
INT8_METHOD = ("XNNPACKQuantizer: per-channel int8 weights of the linear layers, dynamically quantized int8 "
               "activations; convolutions and the cross-attention key/value projections stay fp32")
CHECK_EXECUTORCH = "ExecuTorch runtime (.pte, XNNPACK) vs eager PyTorch, float32"
RUNTIME_LABEL = "measured in the ExecuTorch {version} runtime (XNNPACK delegate, CPU) on {host}, {threads} threads"


def host_cpu() -> str:
    """CPU model and core count, e.g. "AMD EPYC 7B13, 2 cores". (Not ``pipelines.latency.host_description``: the
    runner must not import the repo's model packages, and torch's thread count says nothing about this runtime.)"""
    import platform

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, {platform.system()}"


def executorch_available() -> bool:
    try:
        import executorch.runtime  # noqa: F401
    except ImportError:
        return False
    return True


def require_executorch() -> None:
    """Raise ``ExportError`` with the one line that says what to install, when ExecuTorch is missing."""
    if not executorch_available():
        raise ExportError(INSTALL_HINT)


def executorch_version() -> str:
    try:
        from executorch.version import __version__
    except ImportError:
        return "unknown"
    return str(__version__)


def runtime_threads() -> int:
    """Threads of the ExecuTorch runtime's pool (XNNPACK runs on it)."""
    from executorch.extension.pybindings.portable_lib import _threadpool_get_thread_count

    return int(_threadpool_get_thread_count())


_programs_loaded = False  # resizing the pool after a program ran crashes the runtime (executorch 1.5.1)


def set_runtime_threads(n: int) -> None:
    """Resize the ExecuTorch runtime's thread pool (default: one thread per core); only before the process loads
    its first program."""
    from executorch.extension.pybindings.portable_lib import _unsafe_reset_threadpool

    if int(n) == runtime_threads():
        return
    if _programs_loaded:
        raise ExportError(f"the ExecuTorch thread pool can be resized only before the first program loads; it has "
                          f"{runtime_threads()} threads.")  # fmt: skip
    _unsafe_reset_threadpool(int(n))


def use_threads(n: int) -> None:
    """Run both runtimes, PyTorch and ExecuTorch, on ``n`` threads (benchmarks compare them at one setting)."""
    torch.set_num_threads(int(n))
    set_runtime_threads(n)


def runtime_label(threads: int | None = None) -> str:
    return RUNTIME_LABEL.format(version=executorch_version(), host=host_cpu(),
                                threads=runtime_threads() if threads is None else threads)  # fmt: skip


def int8_linears(module: nn.Module) -> list[str]:
    """Names of the linear layers the int8 option quantizes: all but the cross-attention key/value projections.
    Those all read one tensor, the text states; XNNPACK's partitioner in executorch 1.5.1 groups the linears that
    share one dynamically quantized input across layers into partitions with dependency cycles and refuses the graph
    ("Invalid partition, found dependency cycles"; pytorch/executorch#18397), so they stay fp32."""
    kv = {f"{name}.{proj}" for name, m in module.named_modules() if getattr(m, "is_cross_attention", False)
          for proj in ("to_k", "to_v")}  # fmt: skip
    return [name for name, m in module.named_modules() if isinstance(m, nn.Linear) and name not in kv]


def lower(wrapper: nn.Module, args: tuple[torch.Tensor, ...], quantize: str | None) -> bytes:
    """The .pte bytes of ``wrapper`` at ``args``: fp32, or ``quantize="int8"`` (the linear layers' weights in
    per-channel int8 with dynamically quantized int8 activations, XNNPACK's scheme; convolutions stay fp32)."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    with torch.no_grad():
        program = torch.export.export(wrapper, args)
        if quantize == "int8":
            from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
                XNNPACKQuantizer, get_symmetric_quantization_config,
            )  # fmt: skip
            from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

            # Linear layers only (XNNPACK's dynamically quantized conv failed in the runtime: pixel-shuffle decoder),
            # named one by one so that the cross-attention key/value projections can stay fp32
            config = get_symmetric_quantization_config(is_per_channel=True, is_dynamic=True)
            quantizer = XNNPACKQuantizer()
            for name in int8_linears(wrapper):
                quantizer.set_module_name(name, config)
            module = prepare_pt2e(program.module(), quantizer)
            module(*args)
            program = torch.export.export(convert_pt2e(module), args)
        elif quantize is not None:
            raise ExportError(f"ExecuTorch quantization must be none or int8; got {quantize!r}.")
        edge = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()])
        return edge.to_executorch().buffer


class PteModule:
    """A .pte file's ``forward`` in the ExecuTorch runtime, called with tensors in the file's input order."""

    def __init__(self, path_or_bytes: str | bytes):
        require_executorch()
        from executorch.runtime import Runtime

        global _programs_loaded
        _programs_loaded = True
        self.method = Runtime.get().load_program(path_or_bytes).load_method("forward")

    def __call__(self, *inputs: torch.Tensor) -> list[torch.Tensor]:
        return list(self.method.execute(list(inputs)))


def median_runtime_ms(fn: Callable[[], object], min_runs: int = 3, max_runs: int = 10,
                      budget_s: float = 10.0) -> tuple[float, int]:  # fmt: skip
    """Median wall-clock milliseconds of ``fn()`` after one warm-up call (within ``budget_s``, at least
    ``min_runs``). Returns (median ms, runs)."""
    fn()
    times = []
    start = time.perf_counter()
    while len(times) < max_runs and (len(times) < min_runs or time.perf_counter() - start < budget_s):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000.0)
    return float(np.median(times)), len(times)


def convert_executorch(name: str, wrapper: nn.Module, inputs: OrderedDict[str, torch.Tensor], path: str,
                       quantize: str | None, min_psnr: float, reference: list[np.ndarray],
                       check: Callable, progress: Callable[[float, str], None] | None = None) -> dict:  # fmt: skip
    """Lower ``wrapper`` to ``path`` (.pte), run it in the ExecuTorch runtime against ``reference`` (eager outputs)
    with ``check`` (the PSNR gate; raises below ``min_psnr``) and time it there. Returns the component's fields."""
    say = progress or (lambda f, m: None)
    t_start = time.perf_counter()
    args = tuple(inputs.values())
    say(0.1, f"{name}: torch.export + XNNPACK lowering ({quantize or 'fp32'})")
    try:
        data = lower(wrapper, args, quantize)
    except ExportError:
        raise
    except Exception as e:  # torch.export / lowering report unsupported graphs as many exception types
        first = (str(e).splitlines() or [""])[0][:300]
        raise ExportError(f"{name}: ExecuTorch lowering failed: {type(e).__name__}: {first}") from e
    with open(path, "wb") as f:
        f.write(data)
    say(0.8, f"{name}: ExecuTorch runtime check")
    module = PteModule(path)
    outputs = [o.detach().to(torch.float32).numpy() for o in module(*args)]
    result = check(name, CHECK_EXECUTORCH, reference, outputs, wrapper.output_names, min_psnr)
    ms, runs = median_runtime_ms(lambda: module(*args))
    fp32_size = None
    return {
        "check": result,
        "latency": {"ms": round(ms, 3), "runs": runs, "kind": "executorch-runtime", "runtime": "ExecuTorch",
                    "runtime_version": executorch_version(), "backend": "XNNPACK", "host": host_cpu(),
                    "threads": runtime_threads(), "label": runtime_label()},  # fmt: skip
        "size_mb": round(os.path.getsize(path) / 2**20, 3),
        "size_mb_fp32": fp32_size,
        "inputs": [{"name": n, "shape": list(v.shape), "dtype": str(v.dtype).removeprefix("torch.")}
                   for n, v in inputs.items()],
        "outputs": [{"name": n, "shape": list(o.shape), "dtype": "float32"} for n, o in zip(wrapper.output_names,
                                                                                              outputs)],
        "conversion_s": round(time.perf_counter() - t_start, 2),
    }


__all__ = ["INSTALL_HINT", "PteModule", "convert_executorch", "executorch_available", "lower", "require_executorch",
           "runtime_label", "set_runtime_threads", "use_threads"]  # fmt: skip
