"""The whole SnapFusion recipe from one config file: each stage writes a diffusers folder under --output.

Stages run in order; a stage whose folder is complete is skipped, a stage with checkpoints resumes from its
last one. Configs are JSON (training/configs/*.json): an ordered list of stages, each a module of training/
(dotted for one in a sub-package, e.g. ``toy.prompts``) and its command-line arguments, where "{name}" stands for
the output folder of stage "name", "{output}" for --output and "{var}" for a value given with --var var=value.

    python -m training.recipe --preset smoke --output runs/smoke        # every stage, tiny, < 3 min on CPU
    python -m training.recipe --preset mini --output runs/mini          # the shipped bundle
    python -m training.recipe --preset sd15-proof --output runs/sd15-proof  # every stage at SD-v1.5 size, on CPU
    python -m training.recipe --preset sd15 --output runs/sd15 --var sd15=/models/stable-diffusion-v1-5 \
        --var data=wds:/data/laion/{00000..09999}.tar --var clip=/models/clip --var coco_prompts=coco2k.txt \
        --var prompts=prompts.txt --var latency_table=iphone14pro.json

A config's "vars" describe the --var values it needs; a stage's "notes" say where each setting comes from.
Writes recipe_timings.json (each stage's kept seconds) and recipe_resources.json (each stage's wall time, peak
memory, seconds per optimizer step and device).
"""

from __future__ import annotations

import argparse
import importlib
import json
import re
import time
from pathlib import Path

from .common import (
    CHECKPOINT_DIR, DONE_FILE, StageError, claim_output, is_main_rank, live_holder, peak_memory_gb, release_output,
    reset_peak_memory, run_cli,
)  # fmt: skip

CONFIG_DIR = Path(__file__).parent / "configs"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--preset", help=f"a config in {CONFIG_DIR}: smoke | mini | sd15 | sd15-proof")
    src.add_argument("--config", help="path to a recipe JSON")
    parser.add_argument("--output", required=True)
    parser.add_argument("--var", action="append", default=[], help="name=value for {name} in the config")
    parser.add_argument("--only", default=None, help="comma-separated stage names to run (others must be done)")
    return parser.parse_args(argv)


def load_config(args) -> dict:
    path = Path(args.config) if args.config else CONFIG_DIR / f"{args.preset}.json"
    if not path.is_file():
        known = sorted(p.stem for p in CONFIG_DIR.glob("*.json"))
        raise StageError(f"recipe config {path} does not exist" + (f"; presets are {known}." if args.preset else "."))
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise StageError(f"{path} is not valid JSON: {e}") from None
    stages = config.get("stages")
    if not isinstance(stages, list) or not stages:
        raise StageError(f"{path} needs a non-empty 'stages' list.")
    names = set()
    for s in stages:
        if not isinstance(s, dict) or not s.get("name") or not is_stage_module(s.get("module")):
            raise StageError(f"{path}: every stage needs a 'name' and a 'module' of training/ with parse_args and "
                             f"main (e.g. train_teacher, distill, toy.prompts); got {s}.")  # fmt: skip
        if s["name"] in names:
            raise StageError(f"{path}: stage name {s['name']!r} is used twice.")
        names.add(s["name"])
    config["_path"] = str(path)
    return config


def is_stage_module(name) -> bool:
    """``name`` is a module of training/ (dotted inside it, e.g. ``toy.prompts``) with ``parse_args`` and ``main``."""
    if not isinstance(name, str) or not re.fullmatch(r"\w+(\.\w+)*", name):
        return False
    try:
        module = importlib.import_module(f"training.{name}")
    except ImportError:
        return False
    return callable(getattr(module, "parse_args", None)) and callable(getattr(module, "main", None))


def stage_argv(stage: dict, values: dict) -> list[str]:
    argv = []
    for key, value in stage.get("args", {}).items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            argv.append(flag)
        elif value is False or value is None:
            continue
        else:
            try:
                argv += [flag, str(value).format(**values)]
            except KeyError as e:
                raise StageError(f"stage {stage['name']}: {{{e.args[0]}}} is not a stage name or --var.") from None
    return argv


def main(args):
    config = load_config(args)
    out = Path(args.output)
    values = {"output": str(out)}
    for item in args.var:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise StageError(f"--var must be name=value; got {item!r}.")
        values[key] = value
    for s in config["stages"]:
        values[s["name"]] = str(out / s["name"])
    only = set(args.only.split(",")) if args.only else None
    missing = sorted({m for s in config["stages"] for v in s.get("args", {}).values() if isinstance(v, str)
                      for m in re.findall(r"\{(\w+)\}", v)} - set(values))  # fmt: skip
    if missing:
        described = config.get("vars", {})
        raise StageError(f"{config['_path']} needs " + "; ".join(
            f"--var {m}=..." + (f" ({described[m]})" if m in described else "") for m in missing) + ".")  # fmt: skip
    # a second recipe (or a stage run by hand) on a folder that a live run is writing is refused, touching nothing
    main_rank = is_main_rank()  # under accelerate launch the main process holds the folder for all
    if main_rank:
        claim_output(out)
    try:
        for s in config["stages"]:
            holder = live_holder(out / s["name"]) if main_rank else None
            if holder:
                raise StageError(f"stage folder {out / s['name']} is being written by another live run ({holder}); "
                                 "wait for it to end or stop it.")  # fmt: skip
        return run_stages(config, out, values, only)
    finally:
        if main_rank:
            release_output(out)


def fresh_accelerator_state() -> None:
    """Forget the previous stage's accelerate settings (mixed precision, gradient accumulation), which accelerate
    keeps process-wide, so that each stage run in this process makes its own ``Accelerator``; the process group
    (``PartialState``) is kept."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state()
    GradientState._reset_state()


def run_stages(config: dict, out: Path, values: dict, only: set | None) -> Path:
    """Each stage of ``config`` in order into ``out/<name>``: complete ones skipped, interrupted ones resumed."""
    (out / "recipe.json").write_text(json.dumps({k: v for k, v in config.items() if k != "_path"}, indent=2))
    timings = {}
    timings_file = out / "recipe_timings.json"
    if timings_file.exists():
        timings = json.loads(timings_file.read_text())
    resources_file = out / "recipe_resources.json"  # per stage: peak memory, seconds per step, device
    resources = json.loads(resources_file.read_text()) if resources_file.exists() else {}
    for s in config["stages"]:
        folder = out / s["name"]
        if (folder / DONE_FILE).exists():
            print(f"[recipe] {s['name']}: complete, skipping")
            continue
        if only is not None and s["name"] not in only:
            raise StageError(f"stage {s['name']} is not complete and not in --only; run it first.")
        argv = stage_argv(s, values) + ["--output", str(folder)]
        if (folder / CHECKPOINT_DIR).is_dir() and any((folder / CHECKPOINT_DIR).glob("step-*")):
            argv += ["--resume", "latest"]
        elif folder.exists():
            argv += ["--overwrite"]  # an interrupted stage without checkpoints: start it over
        print(f"[recipe] {s['name']}: python -m training.{s['module']} {' '.join(argv)}", flush=True)
        t0 = time.time()
        module = importlib.import_module(f"training.{s['module']}")
        fresh_accelerator_state()
        reset_peak_memory()
        module.main(module.parse_args(argv))
        # the stage's own clock (its kept time across resumes) when it has one, else this process's wall time
        done = json.loads((folder / DONE_FILE).read_text()) if (folder / DONE_FILE).exists() else {}
        timings[s["name"]] = done.get("seconds", time.time() - t0)
        timings_file.write_text(json.dumps(timings, indent=2))
        resources[s["name"]] = {"seconds": round(time.time() - t0, 1), "peak_rss_gb": round(peak_memory_gb(), 2),
                                **{k: done[k] for k in ("steps", "seconds_per_step", "device") if k in done}}
        resources_file.write_text(json.dumps(resources, indent=2))
        print(f"[recipe] {s['name']}: done in {timings[s['name']]:.0f} s", flush=True)
    print(f"[recipe] all stages complete in {out} (stage seconds: {timings})")
    return out


if __name__ == "__main__":
    run_cli(main, parse_args)
