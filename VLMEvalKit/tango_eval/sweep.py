"""The sweep behind ``run_eval_ov.sh``, ``run_eval_video.sh`` and ``run_eval_qwen.sh``.

For each retention ratio (and the vanilla model with ``--with-vanilla``) it runs ``VLMEvalKit/run.py``
with the family's config file (the paper's settings) into ``<work-dir>/<method>/ratio_<r>/``, one
process per visible GPU under torchrun (one process on CPU unless ``--nproc-per-node`` says
otherwise), then writes the summary (``python -m tango_eval.report``). Every run resumes what an
earlier, interrupted sweep finished.

``--demo`` builds a tiny random-weight model of the family and a small generated benchmark in the
four benchmarks' own formats (``tango_eval.demo_data``), and runs the same sweep on them offline,
on CPU, in a few minutes: it shows the machinery, not the paper's numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

from .benchmarks import PAPER_BENCHMARKS
from .models_registry import MODELS, resolve_model

HARNESS_DIR = Path(__file__).resolve().parents[1]  # VLMEvalKit/
REPO_DIR = HARNESS_DIR.parent
RUN_PY = HARNESS_DIR / "run.py"
DEFAULT_RATIOS = (0.1, 0.15, 0.2)
# run.py flags the sweep sets itself for every run.
CONTROLLED_FLAGS = ("--work-dir", "--method", "--retain-ratio", "--config", "--model")


def _ratio(text: str) -> List[float]:
    values = []
    for part in str(text).replace(",", " ").split():
        try:
            value = float(part)
        except ValueError as error:
            raise argparse.ArgumentTypeError(f"not a number: {part!r}") from error
        if not 0.0 < value <= 1.0:
            raise argparse.ArgumentTypeError(f"retention ratios must be in (0, 1], got {value:g}")
        values.append(value)
    return values


def build_parser(model: Optional[str] = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=f"run_eval ({model})" if model else "python -m tango_eval.sweep",
        description="Sweep Tango's retention ratio over the paper's video benchmarks; other flags go to VLMEvalKit/run.py.",
    )
    parser.add_argument("--model", default=model, required=model is None, help=f"one of {', '.join(MODELS)}")
    parser.add_argument("--ratios", type=_ratio, nargs="+", default=None,
                        help="retention ratios (default 0.1 0.15 0.2; '0.1,0.2' works too)")
    parser.add_argument("--with-vanilla", action="store_true", help="also run the unpruned model (the baseline of the table)")
    parser.add_argument("--data", nargs="+", default=None, help=f"benchmarks (default: {' '.join(PAPER_BENCHMARKS)})")
    parser.add_argument("--work-dir", default=None, help="sweep folder (default outputs/<model>)")
    parser.add_argument("--config", default=None, help="config file (default VLMEvalKit/configs/<model>.json)")
    parser.add_argument("--model-path", default=None, help="checkpoint folder instead of the hub name")
    parser.add_argument("--data-root", default=None, help="folder holding the benchmarks (VLMEvalKit's Hugging Face cache)")
    parser.add_argument("--nproc-per-node", type=int, default=None, help="processes (default: one per visible GPU, 1 on CPU)")
    parser.add_argument("--demo", action="store_true",
                        help="tiny random-weight model and a generated benchmark, offline, on CPU (NOT paper numbers)")
    parser.add_argument("--demo-samples", type=int, default=8, help="samples per generated benchmark with --demo (default 8)")
    return parser


def default_processes() -> int:
    """One process per visible GPU, one on a machine without GPUs."""
    import torch

    return max(torch.cuda.device_count(), 1) if torch.cuda.is_available() else 1


def settings_to_run(ratios: Sequence[float], with_vanilla: bool) -> List[Tuple[str, float]]:
    """(method, ratio) pairs in the order they run: vanilla first."""
    runs = [("vanilla", 1.0)] if with_vanilla else []
    return runs + [("tango", float(r)) for r in ratios]


def run_dir(work_dir: Path, method: str, ratio: float) -> Path:
    """``<work-dir>/<method>/ratio_<r>``."""
    return work_dir / method / f"ratio_{ratio:g}" if method == "tango" else work_dir / method / "ratio_1.0"


def prepare_demo(model: str, work_dir: Path, data_root: Optional[str], benchmarks: Sequence[str], samples: int) -> Tuple[str, str]:
    """(tiny checkpoint folder, data root) for ``--demo``; built once in ``<work-dir>/demo_assets``."""
    from tango_core.testing.tiny_llava import save_tiny_llava
    from tango_core.testing.tiny_qwen import build_tiny_qwen25vl

    from .demo_data import write_demo_benchmarks

    spec = resolve_model(model)
    assets = work_dir / "demo_assets"
    checkpoint = assets / f"tiny_{spec.family}"
    if not (checkpoint / "config.json").exists():
        print(f"[sweep] DEMO: building a tiny random-weight {spec.title} in {checkpoint}", flush=True)
        if spec.family == "qwen2_5_vl":
            build_tiny_qwen25vl(str(checkpoint), seed=0)
        else:
            save_tiny_llava(str(checkpoint), family=spec.family, seed=0)
    if data_root is None:
        data_root = str(assets / "data")
        print(f"[sweep] DEMO: generated benchmarks ({samples} clips each, the benchmarks' own formats) in {data_root}", flush=True)
        write_demo_benchmarks(data_root, benchmarks=list(benchmarks), samples_per_benchmark=samples, seed=0)
    return str(checkpoint), data_root


def run_arguments(args: argparse.Namespace, method: str, ratio: float, work_dir: Path, extra: Sequence[str]) -> List[str]:
    """run.py's arguments for one setting of the sweep."""
    arguments = ["--config", args.config, "--work-dir", str(run_dir(work_dir, method, ratio)), "--method", method]
    if method == "tango":
        arguments += ["--retain-ratio", f"{ratio:g}"]
    if args.data:
        arguments += ["--data", *args.data]
    if args.model_path:
        arguments += ["--model-path", args.model_path]
    if args.data_root:
        arguments += ["--data-root", args.data_root]
    if args.demo:
        arguments += ["--demo", "--offline", "--device", "cpu"]
    return arguments + list(extra)


def log_run(work_dir: Path, **fields) -> None:
    """Append one line to ``<work-dir>/sweep_runs.jsonl``: which run, when, how long, how it ended."""
    fields["wall_s"] = round(fields["end"] - fields["start"], 3)
    with (work_dir / "sweep_runs.jsonl").open("a") as handle:
        handle.write(json.dumps(fields) + "\n")


def launch_command(nproc: int) -> List[str]:
    """The interpreter (and torchrun for several processes) in front of run.py."""
    if nproc > 1:
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", str(RUN_PY)]
    return [sys.executable, str(RUN_PY)]


def child_environment(demo: bool) -> dict:
    """The runs' environment: the project importable from anywhere; offline for the demo."""
    env = dict(os.environ)
    paths = [str(HARNESS_DIR), str(REPO_DIR)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    if demo:
        env["HF_HUB_OFFLINE"] = "1"
        env["TRANSFORMERS_OFFLINE"] = "1"
    return env


def main(argv: Optional[Sequence[str]] = None, model: Optional[str] = None) -> int:
    parser = build_parser(model)
    args, extra = parser.parse_known_args(argv)
    from .cli import UsageError, build_parser as run_parser, make_plan, parse_dataset_name

    try:
        spec = resolve_model(args.model)
        benchmarks = [parse_dataset_name(name)[0].name for name in args.data] if args.data else list(PAPER_BENCHMARKS)
    except ValueError as error:
        parser.exit(2, f"{parser.prog}: error: {error}\n")
    for flag in extra:
        if flag.split("=")[0] in CONTROLLED_FLAGS:
            parser.exit(2, f"{parser.prog}: error: {flag} is set by the sweep for every run; use --ratios, --work-dir, --config.\n")
    ratios = [r for group in (args.ratios or [DEFAULT_RATIOS]) for r in group]
    work_dir = Path(args.work_dir or os.path.join("outputs", spec.name)).expanduser()
    args.config = args.config or str(HARNESS_DIR / "configs" / f"{spec.name}.json")
    nproc = args.nproc_per_node or (1 if args.demo else default_processes())
    if nproc < 1:
        parser.exit(2, f"{parser.prog}: error: --nproc-per-node must be at least 1.\n")

    if args.demo:
        work_dir.mkdir(parents=True, exist_ok=True)
        model_path, data_root = prepare_demo(spec.name, work_dir, args.data_root, benchmarks, args.demo_samples)
        args.model_path, args.data_root = model_path, data_root
        print("[sweep] DEMO: random weights, so the accuracies below say nothing about Tango or the model; "
              "they show the evaluation path end to end.", flush=True)
    runs = settings_to_run(ratios, args.with_vanilla or args.demo)  # the demo shows the whole table
    try:  # every input checked before any model is loaded
        for method, ratio in runs:
            make_plan(run_parser().parse_args(run_arguments(args, method, ratio, work_dir, extra)))
    except UsageError as error:
        parser.exit(2, f"{parser.prog}: error: {error}\n")
    except SystemExit as error:  # argparse rejected a passed-through flag
        return int(error.code or 2)

    failed = []
    env = child_environment(args.demo)
    for method, ratio in runs:
        label = "vanilla" if method == "vanilla" else f"tango r={ratio:g}"
        print(f"\n[sweep] {spec.title}, {label} -> {run_dir(work_dir, method, ratio)} ({nproc} process{'es' if nproc > 1 else ''})", flush=True)
        started = time.time()
        status = subprocess.run(launch_command(nproc) + run_arguments(args, method, ratio, work_dir, extra), env=env).returncode
        log_run(work_dir, method=method, ratio=ratio, folder=str(run_dir(work_dir, method, ratio)), start=started,
                end=time.time(), status=status, processes=nproc)
        if status != 0:
            failed.append(f"{label} (exit status {status})")
            print(f"[sweep] {label} failed with exit status {status}; going on (run the sweep again to resume)", flush=True)

    from .report import NoResults, ResultFileError, write_report

    try:
        paths = write_report(work_dir)
    except (NoResults, ResultFileError) as error:
        print(f"[sweep] no summary: {error}", flush=True)
        return 1
    print("\n" + paths["markdown"].read_text())
    print(f"[sweep] summary: {paths['csv']}, {paths['markdown']}, {paths['plot']}")
    if failed:
        print(f"[sweep] FAILED runs: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
