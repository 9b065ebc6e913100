"""``VLMEvalKit/run.py``: VLMEvalKit's command line plus Tango's flags, on a resumable runner.

Everything a user can get wrong (names, ratios, paths, missing benchmark data, an unwritable work
directory) is checked before VLMEvalKit is imported or a model is loaded, and reported in one line
that says what to do. The process then joins torchrun's process group (gloo), imports VLMEvalKit
quietly, registers Tango's model classes into it and runs :class:`~tango_eval.runner.DatasetRunner`
over every (model, dataset) pair. It exits 0 only when every dataset was evaluated (single failed
samples are recorded and counted, not fatal), 1 when a dataset failed, 2 on bad input.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .benchmarks import BENCHMARKS, Benchmark, UnknownBenchmark, dataset_entry, missing_data, resolve_benchmark
from .models_registry import MODELS, UnknownModel, check_checkpoint, resolve_model, spec_of_class
from .runner import DatasetRequest, RunOptions
from .settings import DECODING, DTYPES, METHODS, SEGMENT_TYPES, ModelSettings

LOG = logging.getLogger("tango_eval")


class UsageError(ValueError):
    """Bad input: reported as one line, exit status 2, before anything is loaded."""


# VLMEvalKit 0.0.20 flags that concern API models, judges or sampling. Those that would change
# what is computed are refused; the rest are accepted and have no effect on local models.
REFUSED_FLAGS: Dict[str, str] = {
    "--base-url": "it serves API models",
    "--key": "it serves API models",
    "--api-mode": "it serves API models",
    "--use-vllm": "vLLM cannot run Tango's pruning",
    "--judge-args": "scoring is by exact matching only (no judge model)",
    "--judge-base-url": "scoring is by exact matching only (no judge model)",
    "--judge-key": "scoring is by exact matching only (no judge model)",
    "--use-verifier": "scoring is by exact matching only (no judge model)",
    "--temperature": "decoding is greedy",
    "--top-k": "decoding is greedy",
    "--top-p": "decoding is greedy",
    "--repetition-penalty": "decoding is greedy",
    "--thinker": "it serves API models",
    "--max-tokens": "it sets API models' budget; use --max-new-tokens",
    "--custom-prompt": "prompts are VLMEvalKit's own build_prompt texts",
    "--extra-body": "it serves API models",
}
NO_EFFECT_FLAGS: Dict[str, int] = {  # flag -> number of values
    "--api-nproc": 1, "--nproc": 1, "--retry": 1, "--ignore": 0, "--reuse-aux": 1, "--debug": 0,
    "--monitor-interval": 1, "--video-llm": 0, "--local-media": 0, "--judge-api-nproc": 1,
    "--judge-retry": 1, "--judge-timeout": 1, "--timeout": 1,
}
TANGO_FIELDS = ("method", "retain_ratio", "pre_retain_ratio", "pruned_layer", "llm_retain_ratio", "segment_type",
                "similarity_threshold", "context_ratio", "num_neighbors", "nframe", "fps", "max_new_tokens",
                "dtype", "device", "attn_implementation", "decoding", "siglip_path", "model_path", "demo")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="run.py",
        description="Evaluate Tango (or the vanilla model) on video benchmarks through VLMEvalKit, resumably.",
        epilog="Scores are computed by VLMEvalKit's own evaluation code, by exact matching only (no API key).",
    )
    vlm = parser.add_argument_group("VLMEvalKit's flags")
    vlm.add_argument("--data", nargs="+", help="benchmarks: Video-MME MVBench MLVU LongVideoBench, or VLMEvalKit names "
                     "(MVBench_MP4, Video-MME_8frame, ...); with --config, a selection of its entries")
    vlm.add_argument("--model", nargs="+", help=f"models: {', '.join(MODELS)}; with --config, a selection of its entries")
    vlm.add_argument("--config", help="VLMEvalKit config JSON with 'model' and 'data' entries (see VLMEvalKit/configs/)")
    vlm.add_argument("--work-dir", default="./outputs", help="output folder (default ./outputs)")
    vlm.add_argument("--mode", default="all", choices=["all", "infer", "eval"])
    vlm.add_argument("--reuse", action="store_true", help="accepted for compatibility: finished answers are always reused")
    vlm.add_argument("--verbose", action="store_true", help="log every answer")
    vlm.add_argument("--limit", type=int, help="evaluate the first N samples of each dataset only")
    vlm.add_argument("--judge", help="only 'exact_matching' (the default)")
    vlm.add_argument("--keep-failed", action="store_true", help="do not retry samples that failed in an earlier run")
    for flag, count in NO_EFFECT_FLAGS.items():
        if count:
            vlm.add_argument(flag, default=None, help=argparse.SUPPRESS)
        else:
            vlm.add_argument(flag, action="store_true", default=None, help=argparse.SUPPRESS)
    for flag in REFUSED_FLAGS:
        vlm.add_argument(flag, nargs="?", const=True, default=None, help=argparse.SUPPRESS)

    tango = parser.add_argument_group("Tango's flags")
    tango.add_argument("--method", choices=METHODS, help="tango (default) or vanilla (the unmodified model)")
    tango.add_argument("--retain-ratio", type=float, help="retention ratio r in (0, 1] (LLaVA-Video: the average over its layers); default 0.1")
    tango.add_argument("--pre-retain-ratio", type=float, help="LLaVA-Video: pre-LLM ratio (default from r, K, p: 0.121739 at r = 0.1)")
    tango.add_argument("--pruned-layer", type=int, help="LLaVA-Video: intra-LLM layer K (default 18 of 28)")
    tango.add_argument("--llm-retain-ratio", type=float, help="LLaVA-Video: share p of visual tokens kept at layer K (default 0.5)")
    tango.add_argument("--segment-type", choices=SEGMENT_TYPES, help="temporal segmenter (default holitom)")
    tango.add_argument("--similarity-threshold", type=float, help="segmentation threshold tau (default 0.65 at r = 0.1, else 0.8)")
    tango.add_argument("--context-ratio", type=float, help="share of each frame's budget for merged context tokens (default 0.4)")
    tango.add_argument("--num-neighbors", type=int, help="neighbours of DPC-KNN (default 7)")

    harness = parser.add_argument_group("harness")
    harness.add_argument("--model-path", help="checkpoint folder to load instead of the hub name")
    harness.add_argument("--data-root", help="folder holding the benchmarks (the Hugging Face cache VLMEvalKit reads; "
                         "default: VLMEvalKit's own, ~/.cache/huggingface/hub or $HF_HOME/hub)")
    harness.add_argument("--nframe", type=int, help="frames per video for every dataset (default: the paper's)")
    harness.add_argument("--fps", type=float, help="frames per second for every dataset instead of a frame count")
    harness.add_argument("--max-new-tokens", type=int, help="greedy answer budget (default 16)")
    harness.add_argument("--dtype", choices=DTYPES, help="model dtype (default: fp16 LLaVA / bf16 Qwen on CUDA, fp32 on CPU)")
    harness.add_argument("--device", help="device (default: this process's GPU, else CPU)")
    harness.add_argument("--attn-implementation", help="transformers attention (default: flash_attention_2 if installed, else sdpa)")
    harness.add_argument("--decoding", choices=DECODING,
                         help="auto (default: static cache + CUDA graphs on CUDA), compiled (also torch.compile: faster "
                              "steps, about a minute of compiling once per process), graphs, static, dynamic")
    harness.add_argument("--siglip-path", help="LLaVA: SigLIP checkpoint with the attention-pooling head")
    harness.add_argument("--fresh", action="store_true", help="discard earlier answers in the work dir and start over")
    harness.add_argument("--profile", action="store_true",
                         help="record time to first token, ViT / other / prefill times, decoding throughput, GPU time "
                              "and peak memory per sample (<model>_<dataset>_profile_rank<k>.json/.csv, a table in the log)")
    harness.add_argument("--prefetch", type=int, default=2,
                         help="samples whose prompt and video are prepared ahead in background threads (default 2; 0: none)")
    harness.add_argument("--demo", action="store_true", help="label results as those of a tiny random-weight demo model")
    harness.add_argument("--offline", action="store_true", help="never reach the network (HF_HUB_OFFLINE=1)")
    return parser


@dataclass
class ModelPlan:
    """One model to evaluate: its name in file names, its VLMEvalKit class and settings, its datasets."""

    name: str
    vlm_class: str
    settings: ModelSettings
    datasets: List[DatasetRequest] = field(default_factory=list)


@dataclass
class Plan:
    """Everything run.py will do, checked."""

    models: List[ModelPlan]
    work_dir: Path
    options: RunOptions
    hub_cache: Path
    data_root: Optional[str]
    offline: bool


_FRAME_SUFFIX = re.compile(r"^(?P<base>.+?)_(?:(?P<nframe>\d+)frame|(?P<fps>\d+(?:\.\d+)?)fps)(?P<subs>_subs)?$")


def parse_dataset_name(name: str) -> Tuple[Benchmark, Dict[str, Any]]:
    """(benchmark, overrides) of a plain or VLMEvalKit name; ``Video-MME_8frame`` -> nframe 8,
    ``MVBench_MP4_1fps`` -> fps 1, ``_subs`` -> subtitles (Video-MME)."""
    match = _FRAME_SUFFIX.match(name)
    overrides: Dict[str, Any] = {}
    base = name
    if match:
        base = match.group("base")
        if match.group("nframe"):
            overrides["nframe"] = int(match.group("nframe"))
        else:
            overrides["fps"] = float(match.group("fps"))
        if match.group("subs"):
            overrides["use_subtitle"] = True
    return resolve_benchmark(base), overrides


def _has_one_frame_setting(entry: Dict[str, Any]) -> bool:
    by_count = (entry.get("nframe") or 0) > 0
    by_rate = (entry.get("fps") or -1) > 0
    return by_count != by_rate


def _flag_overrides(args: argparse.Namespace) -> Dict[str, Any]:
    """Model settings given on the command line (they override config entries)."""
    given = {}
    for name in TANGO_FIELDS:
        value = getattr(args, name, None)
        if value is not None and value is not False:  # store_true flags count only when given
            given[name] = value
    if "nframe" in given:
        given["fps"] = None
    elif "fps" in given:
        given["nframe"] = None
    return given


def _check_flags(args: argparse.Namespace) -> None:
    for flag, reason in REFUSED_FLAGS.items():
        if getattr(args, flag[2:].replace("-", "_")) is not None:
            raise UsageError(f"{flag} is not supported here: {reason}.")
    for flag in NO_EFFECT_FLAGS:
        if getattr(args, flag[2:].replace("-", "_")) not in (None, False):
            LOG.warning("%s has no effect on Tango's local models; ignored.", flag)
    if args.judge not in (None, "exact_matching"):
        raise UsageError(f"--judge {args.judge}: scoring is by exact matching only; drop --judge or pass --judge exact_matching.")
    if args.limit is not None and args.limit < 1:
        raise UsageError(f"--limit must be a positive number of samples, got {args.limit}.")
    if args.nframe is not None and args.fps is not None:
        raise UsageError("Give --nframe or --fps, not both.")


def _config_plans(args: argparse.Namespace) -> List[ModelPlan]:
    """Model plans from a VLMEvalKit config file."""
    path = Path(args.config)
    if not path.is_file():
        raise UsageError(f"--config {args.config}: no such file.")
    try:
        config = json.loads(path.read_text())
    except ValueError as error:
        raise UsageError(f"--config {args.config} is not valid JSON: {error}.") from error
    if not isinstance(config, dict) or not isinstance(config.get("model"), dict) or not isinstance(config.get("data"), dict):
        raise UsageError(f"--config {args.config} must hold an object with 'model' and 'data' objects (VLMEvalKit's format).")
    data_entries: List[Tuple[str, Benchmark, Dict[str, Any]]] = []
    for key, entry in config["data"].items():
        if not isinstance(entry, dict) or "class" not in entry:
            raise UsageError(f"--config data entry {key!r} needs a 'class' (VLMEvalKit runs every rank on the whole dataset otherwise).")
        benchmark = next((b for b in BENCHMARKS.values() if b.cls == entry["class"]), None)
        if benchmark is None:
            raise UsageError(f"--config data entry {key!r}: class {entry['class']!r} is not one of {', '.join(b.cls for b in BENCHMARKS.values())}.")
        entry = {"dataset": benchmark.dataset, **benchmark.options, **entry}
        if not _has_one_frame_setting(entry):
            raise UsageError(f"--config data entry {key!r} needs exactly one of 'nframe' or 'fps'.")
        data_entries.append((key, benchmark, entry))
    if args.data:
        wanted = [parse_dataset_name(name)[0].name for name in args.data]
        data_entries = [d for d in data_entries if d[1].name in wanted or d[0] in args.data]
        if not data_entries:
            raise UsageError(f"--data {' '.join(args.data)} matches no data entry of {args.config}.")
    plans = []
    overrides = _flag_overrides(args)
    for name, entry in config["model"].items():
        if args.model and name not in args.model:
            continue
        if not isinstance(entry, dict) or "class" not in entry:
            raise UsageError(f"--config model entry {name!r} needs a 'class' ({', '.join(s.vlm_class for s in MODELS.values())}).")
        spec = spec_of_class(entry["class"])
        if spec is None:
            raise UsageError(
                f"--config model entry {name!r}: class {entry['class']!r} is not a Tango model class; use one of "
                f"{', '.join(s.vlm_class for s in MODELS.values())}."
            )
        known = {f.name for f in fields(ModelSettings)} - {"model"}
        unknown = sorted(set(entry) - known - {"class"})
        if unknown:
            raise UsageError(f"--config model entry {name!r} has unknown keys {unknown}; known: {sorted(known)}.")
        values = {k: v for k, v in entry.items() if k != "class"}
        values.update(overrides)
        settings = _settings(spec.name, values)
        datasets = [DatasetRequest(key, benchmark, _frames_for(entry_, args)) for key, benchmark, entry_ in data_entries]
        plans.append(ModelPlan(name, spec.vlm_class, settings, datasets))
    if not plans:
        raise UsageError(f"--model {' '.join(args.model or [])} matches no model entry of {args.config}.")
    return plans


def _frames_for(entry: Dict[str, Any], args: argparse.Namespace) -> Dict[str, Any]:
    """A config data entry with its frame setting replaced by --nframe (or else --fps), when given."""
    if args.nframe is None and args.fps is None:
        return entry
    entry = {k: v for k, v in entry.items() if k not in ("nframe", "fps")}
    if args.nframe is not None:
        entry["nframe"] = int(args.nframe)
    else:
        entry["fps"] = float(args.fps)
    return entry


def _settings(model: str, values: Dict[str, Any]) -> ModelSettings:
    try:
        return ModelSettings(model=model, **values)
    except (ValueError, TypeError) as error:
        raise UsageError(str(error)) from error


def _flag_plans(args: argparse.Namespace) -> List[ModelPlan]:
    """Model plans from --model and --data (the paper's settings per family)."""
    if not args.model or not args.data:
        raise UsageError("Give --model and --data (or --config); e.g. --model llava_onevision --data Video-MME MVBench.")
    requested = [(name, *parse_dataset_name(name)) for name in args.data]
    plans = []
    overrides = _flag_overrides(args)
    for model_name in args.model:
        spec = resolve_model(model_name)
        settings = _settings(spec.name, overrides)
        datasets = []
        for name, benchmark, dataset_overrides in requested:
            # The frames: --nframe / --fps, else the name's own (Video-MME_8frame), else the paper's.
            nframe, fps = settings.nframe, settings.fps
            if args.nframe is None and args.fps is None and ("nframe" in dataset_overrides or "fps" in dataset_overrides):
                nframe, fps = dataset_overrides.get("nframe"), dataset_overrides.get("fps")
            entry = dataset_entry(benchmark, nframe=nframe, fps=fps)
            if "use_subtitle" in dataset_overrides:
                entry["use_subtitle"] = dataset_overrides["use_subtitle"]
            key = name if _FRAME_SUFFIX.match(name) else benchmark.dataset
            datasets.append(DatasetRequest(key, benchmark, entry))
        plans.append(ModelPlan(spec.name, spec.vlm_class, settings, datasets))
    return plans


def check_work_dir(path: Path) -> None:
    """Raise UsageError unless ``path`` can be created and written."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write_test_{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as error:
        raise UsageError(f"Cannot write to --work-dir {path}: {error.strerror or error}; choose a writable folder.") from error


def make_plan(args: argparse.Namespace) -> Plan:
    """Check every input and resolve what to run, without loading anything heavy."""
    from .vlmeval_env import default_hub_cache_dir, hub_cache_dir

    _check_flags(args)
    try:
        plans = _config_plans(args) if args.config else _flag_plans(args)
    except (UnknownBenchmark, UnknownModel) as error:
        raise UsageError(str(error)) from error
    for plan in plans:
        problem = check_checkpoint(plan.settings.model_path, plan.settings.spec, local_only=bool(args.model_path))
        if problem:
            raise UsageError(problem)
    if args.data_root is not None and not Path(args.data_root).expanduser().is_dir():
        raise UsageError(f"--data-root {args.data_root} is not a folder; pass the folder that holds the benchmarks.")
    hub_cache = hub_cache_dir(args.data_root) if args.data_root else default_hub_cache_dir()
    if args.mode != "eval":
        for benchmark in {d.benchmark.name: d.benchmark for plan in plans for d in plan.datasets}.values():
            problem = missing_data(benchmark, hub_cache)
            if problem:
                raise UsageError(problem)
    work_dir = Path(args.work_dir).expanduser()
    check_work_dir(work_dir)
    if args.prefetch < 0:
        raise UsageError(f"--prefetch must be 0 or more samples, got {args.prefetch}.")
    options = RunOptions(mode=args.mode, limit=args.limit, keep_failed=args.keep_failed, fresh=args.fresh,
                         verbose=args.verbose, prefetch=args.prefetch, profile=args.profile)
    offline = bool(args.offline or os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0"))
    return Plan(plans, work_dir, options, hub_cache, args.data_root, offline)


def setup_logging(work_dir: Path, rank: int) -> Path:
    """A DEBUG log file per process in ``<work-dir>/logs``; INFO on rank 0's terminal, warnings elsewhere."""
    log_dir = work_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    path = log_dir / f"run-{time.strftime('%Y%m%d-%H%M%S')}-rank{rank}.log"
    logger = logging.getLogger("tango_eval")
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    file_handler = logging.FileHandler(path)
    file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    file_handler.setLevel(logging.DEBUG)
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(logging.Formatter("[tango] %(message)s" if rank == 0 else f"[tango rank {rank}] %(message)s"))
    console.setLevel(logging.INFO if rank == 0 else logging.WARNING)
    logger.addHandler(file_handler)
    logger.addHandler(console)
    return path


def _describe(plan: ModelPlan) -> str:
    s = plan.settings
    method = "vanilla (no pruning)" if s.method == "vanilla" else f"tango r={s.retain_ratio:g}"
    frames = f"{s.nframe} frames" if s.nframe else f"{s.fps:g} fps"
    label = " [DEMO: tiny random-weight model]" if s.demo else ""
    return f"{plan.name}: {method}, {frames} by default, {s.model_path}{label}"


def execute(plan: Plan) -> int:
    """Run the plan in this process (one of torchrun's, or alone). Returns the exit status."""
    from . import distributed
    from .runner import DatasetFailed, DatasetRunner
    from .vlmeval_env import configure_environment

    configure_environment(plan.data_root, plan.offline)
    processes = distributed.start()
    log_file = setup_logging(plan.work_dir, processes.rank)
    LOG.info("log: %s (world size %d)", log_file, processes.world_size)
    from .vlm import MODEL_CLASSES, register_models

    register_models()
    failures: List[str] = []
    try:
        for model_plan in plan.models:
            LOG.info("%s", _describe(model_plan))
            settings = model_plan.settings
            if settings.device is None:
                settings = settings.replace(device=processes.device())
            model = MODEL_CLASSES[model_plan.vlm_class](**{k: v for k, v in settings.to_dict().items() if k != "model"})
            if model.tango_config is not None:
                LOG.info("Tango: %s", model.tango_config)
            runner = DatasetRunner(model, model_plan.name, plan.work_dir, processes, plan.options)
            for request in model_plan.datasets:
                try:
                    outcome = runner.run(request)
                except Exception as error:  # noqa: BLE001 - every process raises at the same point
                    if not isinstance(error, DatasetFailed):
                        LOG.debug("%s x %s", model_plan.name, request.key, exc_info=True)
                    failures.append(f"{model_plan.name} x {request.key}: {type(error).__name__}: {error}")
                    LOG.error("%s x %s failed: %s (details in the log)", model_plan.name, request.key, error)
                    continue
                if processes.is_main:
                    print(outcome.line(), flush=True)
                    if outcome.accuracy is not None:
                        LOG.info("%s: accuracy %.2f%% over %d samples (exact matching)%s", request.key, outcome.accuracy,
                                 outcome.samples, "  [DEMO: random weights, says nothing about Tango]" if settings.demo else "")
    finally:
        distributed.stop()
    if failures:
        for failure in failures:
            LOG.error("FAILED %s", failure)
        return 1
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not LOG.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("[tango] %(message)s"))
        LOG.addHandler(handler)
        LOG.setLevel(logging.INFO)
    try:
        plan = make_plan(args)
    except UsageError as error:
        print(f"run.py: error: {error}", file=sys.stderr)
        return 2
    try:
        return execute(plan)
    except Exception as error:  # noqa: BLE001 - one readable line; the traceback is in the log
        LOG.debug("fatal error", exc_info=True)
        print(f"run.py: error: {type(error).__name__}: {error}", file=sys.stderr)
        return 1
