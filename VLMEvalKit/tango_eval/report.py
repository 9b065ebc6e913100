"""The paper-style summary of a sweep: ``python -m tango_eval.report <work-dir>``.

A sweep folder holds ``<method>/ratio_<r>/<model_name>/<model_name>_<dataset>_tango.json`` per run
and dataset (written by the runner) beside VLMEvalKit's prediction and score files.
:func:`collect_results` reads one row per ``_tango.json``, with the accuracy read from VLMEvalKit's
score files (:mod:`tango_eval.scores`); :func:`write_report` writes ``summary.csv``, ``summary.md``
(tables laid out like the paper's: vanilla first, then Tango by retention ratio; each Tango score
also as a percentage of vanilla's) and ``accuracy_vs_ratio.png``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import pandas as pd

from .benchmarks import PAPER_BENCHMARKS, UnknownBenchmark, resolve_benchmark
from .scores import ScoreFileError, benchmark_accuracy, chance_accuracy, option_counts

SUMMARY_CSV = "summary.csv"
SUMMARY_MD = "summary.md"
PLOT_PNG = "accuracy_vs_ratio.png"
METHOD_ORDER = {"vanilla": 0, "tango": 1}
COLUMNS = [
    "model", "method", "retention_ratio", "pre_retain_ratio", "benchmark", "dataset", "accuracy",
    "chance", "samples", "answered", "reused", "failed", "avg_visual_tokens", "avg_visual_tokens_before",
    "demo", "prediction_file", "result_file", "error",
]
REQUIRED = ("model", "method", "retention_ratio", "benchmark", "dataset", "samples", "prediction_file")


class NoResults(RuntimeError):
    """The work folder holds no ``*_tango.json`` result."""


class ResultFileError(ValueError):
    """A ``*_tango.json`` file is unreadable or lacks a field."""


def _result_files(work_dir: Path) -> List[Path]:
    """Every ``*_tango.json`` below ``work_dir``, outside per-sample ``records/`` folders."""
    return sorted(p for p in Path(work_dir).rglob("*_tango.json") if "records" not in p.relative_to(work_dir).parts)


def _float(value: object) -> float:
    return float("nan") if value is None else float(value)  # type: ignore[arg-type]


def _row(path: Path) -> Dict[str, object]:
    """One result row from a ``_tango.json``, with the accuracy from VLMEvalKit's files beside it."""
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ResultFileError(f"{path}: not readable JSON ({error}).") from error
    missing = [key for key in REQUIRED if key not in summary]
    if missing:
        raise ResultFileError(f"{path}: missing field(s) {', '.join(missing)}.")
    try:
        benchmark = resolve_benchmark(str(summary["benchmark"])).name
    except UnknownBenchmark as error:
        raise ResultFileError(f"{path}: {error}") from error
    model_dir = path.parent
    prediction_file = str(summary["prediction_file"])
    accuracy, error_text = float("nan"), ""
    try:
        accuracy = benchmark_accuracy(benchmark, model_dir, prediction_file)
    except ScoreFileError as error:
        error_text = str(error)
    chance: Optional[float] = None
    if (model_dir / prediction_file).is_file():
        try:
            chance = chance_accuracy(model_dir, prediction_file)
        except Exception:  # a damaged prediction file already shows up as a score error
            chance = None
    return {
        "model": str(summary["model"]),
        "method": str(summary["method"]).lower(),
        "retention_ratio": float(summary["retention_ratio"]),
        "pre_retain_ratio": _float(summary.get("pre_retain_ratio")),
        "benchmark": benchmark,
        "dataset": str(summary["dataset"]),
        "accuracy": accuracy,
        "chance": _float(chance),
        "samples": int(summary["samples"]),
        "answered": int(summary.get("answered", 0)),
        "reused": int(summary.get("reused", 0)),
        "failed": int(summary.get("failed", 0)),
        "avg_visual_tokens": _float(summary.get("avg_visual_tokens")),
        "avg_visual_tokens_before": _float(summary.get("avg_visual_tokens_before")),
        "demo": bool(summary.get("demo", False)),
        "prediction_file": prediction_file,
        "result_file": str(path.resolve()),
        "error": error_text,
    }


def collect_results(work_dir: str | Path) -> pd.DataFrame:
    """One row per ``*_tango.json`` under ``work_dir`` (columns :data:`COLUMNS`), sorted by model,
    method (vanilla first), retention ratio and benchmark. ``accuracy`` is NaN, and ``error`` says
    why, when VLMEvalKit's score files are missing or malformed."""
    work = Path(work_dir)
    rows = [_row(path) for path in _result_files(work)] if work.is_dir() else []
    frame = pd.DataFrame(rows, columns=COLUMNS)
    if frame.empty:
        return frame
    order = {name: i for i, name in enumerate(PAPER_BENCHMARKS)}
    frame = frame.assign(
        _method=frame["method"].map(lambda m: METHOD_ORDER.get(m, len(METHOD_ORDER))),
        _bench=frame["benchmark"].map(order),
        _pre=frame["pre_retain_ratio"].fillna(-1.0),
    )
    frame = frame.sort_values(["model", "_method", "method", "retention_ratio", "_pre", "_bench"], kind="stable")
    return frame.drop(columns=["_method", "_bench", "_pre"]).reset_index(drop=True)


# ----------------------------------------------------------------------------------------------
# Tables


def _run_label(method: str, ratio: float, pre_retain_ratio: float) -> str:
    """``Tango``; ``Tango (pre-LLM 0.121739)`` where the pre-LLM ratio is not the nominal one (LLaVA-Video)."""
    label = {"vanilla": "Vanilla", "tango": "Tango"}.get(method, method)
    if math.isnan(pre_retain_ratio) or math.isclose(pre_retain_ratio, ratio):
        return label
    return f"{label} (pre-LLM {pre_retain_ratio:g})"


def _ratio_label(ratio: float) -> str:
    """``0.1``, ``0.15``, ``1.0`` (always a decimal point, as the paper writes them)."""
    text = f"{ratio:g}"
    return text if ("." in text or "e" in text) else f"{text}.0"


def _runs(frame: pd.DataFrame) -> List[tuple]:
    """(method, retention_ratio, pre_retain_ratio) of each run of one model, in table order."""
    keys = frame[["method", "retention_ratio", "pre_retain_ratio"]].drop_duplicates()
    return [tuple(k) for k in keys.itertuples(index=False)]


def _select(frame: pd.DataFrame, run: tuple) -> pd.DataFrame:
    method, ratio, pre = run
    same_pre = frame["pre_retain_ratio"].isna() if math.isnan(pre) else frame["pre_retain_ratio"] == pre
    return frame[(frame["method"] == method) & (frame["retention_ratio"] == ratio) & same_pre]


def _accuracies(frame: pd.DataFrame, run: tuple, benchmarks: Sequence[str]) -> Dict[str, float]:
    """Accuracy per benchmark of one run, plus "Avg" (NaN unless every benchmark has a number)."""
    rows = _select(frame, run)
    duplicated = rows["benchmark"][rows["benchmark"].duplicated()].tolist()
    if duplicated:
        files = rows[rows["benchmark"].isin(duplicated)]["result_file"].tolist()
        raise ResultFileError(f"More than one result for the same run and benchmark: {', '.join(files)}.")
    values = {b: float(rows.loc[rows["benchmark"] == b, "accuracy"].iloc[0]) if (rows["benchmark"] == b).any() else float("nan")
              for b in benchmarks}
    numbers = [values[b] for b in benchmarks]
    values["Avg"] = sum(numbers) / len(numbers) if numbers and not any(math.isnan(v) for v in numbers) else float("nan")
    return values


def _cell(value: float, reference: Optional[float]) -> str:
    if math.isnan(value):
        return "–"
    if reference is None or math.isnan(reference) or reference <= 0:
        return f"{value:.1f}"
    return f"{value:.1f} ({100.0 * value / reference:.1f}%)"


def _markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> List[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def accuracy_table(frame: pd.DataFrame) -> List[str]:
    """Markdown lines of one model's accuracy table (Tango cells also as % of vanilla)."""
    benchmarks = [b for b in PAPER_BENCHMARKS if b in set(frame["benchmark"])]
    runs = _runs(frame)
    vanilla_runs = [run for run in runs if run[0] == "vanilla"]
    vanilla = _accuracies(frame, vanilla_runs[0], benchmarks) if vanilla_runs else None
    rows = []
    for run in runs:
        values = _accuracies(frame, run, benchmarks)
        reference = vanilla if (vanilla is not None and run[0] != "vanilla") else None
        cells = [_cell(values[b], None if reference is None else reference[b]) for b in [*benchmarks, "Avg"]]
        rows.append([_run_label(*run), _ratio_label(run[1]), *cells])
    return _markdown_table(["Method", "Retention ratio", *benchmarks, "Avg"], rows)


def _tokens(rows: pd.DataFrame) -> str:
    if rows.empty or rows["avg_visual_tokens"].isna().all():
        return "–"
    kept, before = float(rows["avg_visual_tokens"].iloc[0]), float(rows["avg_visual_tokens_before"].iloc[0])
    return f"{kept:,.0f} / {before:,.0f}" if not math.isnan(before) else f"{kept:,.0f}"


def cost_table(frame: pd.DataFrame) -> List[str]:
    """Markdown lines of one model's visual-token (kept / before, mean per sample) and failure table."""
    benchmarks = [b for b in PAPER_BENCHMARKS if b in set(frame["benchmark"])]
    rows = []
    for run in _runs(frame):
        selected = _select(frame, run)
        cells = [_tokens(selected[selected["benchmark"] == b]) for b in benchmarks]
        failed = f"{int(selected['failed'].sum())} / {int(selected['samples'].sum())}"
        rows.append([_run_label(*run), _ratio_label(run[1]), *cells, failed])
    return _markdown_table(["Method", "Retention ratio", *[f"{b} tokens" for b in benchmarks], "Failed / samples"], rows)


def _chance_sentence(frame: pd.DataFrame) -> str:
    parts = []
    for benchmark in PAPER_BENCHMARKS:
        rows = frame[(frame["benchmark"] == benchmark) & frame["chance"].notna()]
        if rows.empty:
            continue
        row = rows.iloc[0]
        counts = sorted(set(option_counts(Path(row["result_file"]).parent, row["prediction_file"])))
        options = "-".join(str(c) for c in (counts[0], counts[-1])) if len(counts) > 1 else (str(counts[0]) if counts else "?")
        parts.append(f"{benchmark} {float(row['chance']):.1f}% ({options} options)")
    return ", ".join(parts)


def summary_markdown(frame: pd.DataFrame, title: str) -> str:
    """The whole ``summary.md`` text for the rows of :func:`collect_results`."""
    lines = [f"# Tango evaluation: {title}", ""]
    if frame["demo"].any():
        chance = _chance_sentence(frame)
        lines += [
            "**Demo run: the model has random weights, so these accuracies say nothing about Tango** "
            "(they only show that the pipeline runs end to end). Chance level, guessing uniformly among "
            f"each question's options, is: {chance or 'unknown'}. A random model seldom writes an option "
            "letter at all, so it usually scores below chance; the visual-token counts below are real.",
            "",
        ]
    for model, rows in frame.groupby("model", sort=True):
        lines += [f"## {model}: accuracy (%)", ""]
        lines += accuracy_table(rows)
        lines += [
            "",
            "Tango cells: accuracy (percentage of vanilla's). MLVU is M-Avg, the mean over its "
            "multiple-choice tasks; Avg is the mean over the benchmarks shown.",
            "",
            f"## {model}: visual tokens and failures",
            "",
        ]
        lines += cost_table(rows)
        lines += ["", "Tokens: mean visual tokens per sample that the LLM's first layer saw (kept / before pruning).", ""]
    problems = frame[frame["error"].astype(bool)]
    if not problems.empty:
        lines += ["## Missing scores", ""]
        lines += [f"* {row.model} {row.method} r={row.retention_ratio:g} {row.benchmark}: {row.error}" for row in problems.itertuples()]
        lines.append("")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# Plot


def plot_accuracy(frame: pd.DataFrame, path: Path) -> Path:
    """Accuracy vs retention ratio per benchmark and their average; vanilla as dashed lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = sorted(set(frame["model"]))
    figure, axes = plt.subplots(1, len(models), figsize=(6.4 * len(models), 4.4), squeeze=False)
    benchmarks = [b for b in PAPER_BENCHMARKS if b in set(frame["benchmark"])]
    colours = plt.get_cmap("tab10")
    for axis, model in zip(axes[0], models):
        rows = frame[frame["model"] == model]
        runs = _runs(rows)
        tango = [run for run in runs if run[0] != "vanilla"]
        vanilla = [run for run in runs if run[0] == "vanilla"]
        series = [*benchmarks, "Avg"]
        for k, name in enumerate(series):
            colour = "black" if name == "Avg" else colours(k)
            width = 2.4 if name == "Avg" else 1.5
            if tango:
                xs = [run[1] for run in tango]
                ys = [_accuracies(rows, run, benchmarks)[name] for run in tango]
                axis.plot(xs, ys, marker="o", color=colour, linewidth=width, label=name)
            if vanilla:
                level = _accuracies(rows, vanilla[0], benchmarks)[name]
                if not math.isnan(level):
                    axis.axhline(level, color=colour, linestyle="--", linewidth=1.0,
                                 label=None if tango else f"{name} (vanilla)")
        demo = bool(rows["demo"].any())
        axis.set_title(f"{model}" + (" (demo: random weights)" if demo else ""))
        if tango:
            axis.set_xticks(sorted({run[1] for run in tango}))
        axis.set_xlabel("Retention ratio")
        axis.set_ylabel("Accuracy (%)")
        highest = rows["accuracy"].max()
        axis.set_ylim(0.0, max(10.0, 1.15 * float(highest)) if not math.isnan(highest) else 100.0)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8, title="dashed: vanilla", title_fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


# ----------------------------------------------------------------------------------------------
# Entry points


def write_report(work_dir: str | Path) -> Dict[str, Path]:
    """Write ``summary.csv``, ``summary.md`` and ``accuracy_vs_ratio.png`` into ``work_dir``.

    Returns their paths (keys ``csv``, ``markdown``, ``plot``). Raises :class:`NoResults` when the
    folder holds no ``*_tango.json``.
    """
    work = Path(work_dir)
    frame = collect_results(work)
    if frame.empty:
        raise NoResults(f"No results in {work}: no <method>/ratio_<r>/<model>/*_tango.json files found.")
    paths = {"csv": work / SUMMARY_CSV, "markdown": work / SUMMARY_MD, "plot": work / PLOT_PNG}
    frame.to_csv(paths["csv"], index=False)
    paths["markdown"].write_text(summary_markdown(frame, work.resolve().name) + "\n", encoding="utf-8")
    plot_accuracy(frame, paths["plot"])
    return paths


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m tango_eval.report <work-dir>``: write the report and print its tables."""
    parser = argparse.ArgumentParser(prog="python -m tango_eval.report", description=__doc__.splitlines()[0])
    parser.add_argument("work_dir", help="a sweep folder, e.g. outputs/llava_onevision")
    args = parser.parse_args(argv)
    try:
        paths = write_report(args.work_dir)
    except (NoResults, ResultFileError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(paths["markdown"].read_text(encoding="utf-8"))
    print(f"Wrote {paths['csv']}, {paths['markdown']} and {paths['plot']}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
