"""Headline accuracies, read from the files that VLMEvalKit 0.0.20's ``evaluate()`` writes.

Nothing is recomputed from predictions: the numbers come from VLMEvalKit's rating file where its
class writes one, else from the per-question ``score`` column of its score file. For a prediction
file ``<stem>.xlsx`` in ``model_dir``, ``evaluate(..., model='exact_matching')`` writes:

==============  =====================================  ==========================================
benchmark       file, key                              meaning
==============  =====================================  ==========================================
Video-MME       ``<stem>_rating.json``                 string, a *fraction* with 3 decimals
                ``["overall"]["overall"]``             (``"0.625"``): the mean of the scores >= 0
MVBench         ``<stem>_rating.json`` ``["overall"]``  ``[correct, total, "62.50%"]``; a question
                                                       is "correct" when its score is truthy
MLVU (M-Avg)    ``<stem>_score.xlsx`` columns          no rating file is written (``evaluate``
                ``task_type``, ``score``               only returns ``{task: [sum, count]}``):
                                                       M-Avg = mean over tasks of the task's
                                                       fraction of score 1
LongVideoBench  ``<stem>_rating.json``                 as Video-MME
                ``["overall"]["overall"]``
==============  =====================================  ==========================================

``<stem>_score.<ext>`` takes its extension from ``PRED_FORMAT`` (``xlsx`` by default) and falls back
to ``.pkl`` when VLMEvalKit's ``dump`` fails. Its rows are the prediction file's plus ``score``:
1 right, 0 wrong, -1 when the prediction contains VLMEvalKit's API-failure message
(MVBench, MLVU), and missing when the prediction is empty/NaN (MVBench never scores those).

VLMEvalKit counts those -1 / missing scores inconsistently: Video-MME and LongVideoBench leave
them out of the mean, MVBench counts them as **correct** (``if item['score']``), MLVU's own
rating subtracts them. Here every question counts, and a -1 or missing score counts as wrong;
the correction is made from the score file and logged. (The runner writes ``[failed: Z]`` /
``[empty: Z]`` placeholders, which score 0, so its own files never need it.)

The score file is also checked against the prediction file (same questions, same predictions):
``evaluate()`` reuses an existing score file even after the predictions changed.
"""

from __future__ import annotations

import ast
import json
import logging
import math
import pickle
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import pandas as pd

from .benchmarks import resolve_benchmark

LOG = logging.getLogger("tango_eval.scores")

SCORE_EXTENSIONS: Sequence[str] = ("xlsx", "tsv", "json", "pkl")
FAIL_MARKER = "Failed to obtain answer via API."  # VLMEvalKit's FAIL_MSG


class ScoreFileError(RuntimeError):
    """A VLMEvalKit score or rating file is missing, malformed or does not match its predictions."""


def _stem(prediction_file: str) -> str:
    name = Path(prediction_file).name
    return name.rsplit(".", 1)[0] if "." in name else name


def load_table(path: Path) -> pd.DataFrame:
    """A prediction or score table in any of the formats VLMEvalKit dumps (xlsx, tsv, csv, json, pkl)."""
    suffix = path.suffix.lower().lstrip(".")
    if suffix == "xlsx":
        return pd.read_excel(path)
    if suffix == "tsv":
        return pd.read_csv(path, sep="\t")
    if suffix == "csv":
        return pd.read_csv(path)
    if suffix == "json":
        return pd.DataFrame(json.loads(path.read_text(encoding="utf-8")))
    if suffix == "pkl":
        with open(path, "rb") as handle:
            table = pickle.load(handle)
        return table if isinstance(table, pd.DataFrame) else pd.DataFrame(table)
    raise ScoreFileError(f"{path}: unknown table format {suffix!r}.")


def score_file_path(model_dir: Path, prediction_file: str) -> Path:
    """VLMEvalKit's ``<stem>_score.<ext>`` beside the predictions (ScoreFileError if there is none)."""
    stem = _stem(prediction_file)
    for ext in SCORE_EXTENSIONS:
        path = Path(model_dir) / f"{stem}_score.{ext}"
        if path.is_file():
            return path
    raise ScoreFileError(
        f"{Path(model_dir) / (stem + '_score.xlsx')} is missing: VLMEvalKit's evaluate() has not scored "
        f"{prediction_file} (run the evaluation again)."
    )


def rating_file_path(model_dir: Path, prediction_file: str) -> Path:
    """VLMEvalKit's ``<stem>_rating.json`` beside the predictions (ScoreFileError if missing)."""
    path = Path(model_dir) / f"{_stem(prediction_file)}_rating.json"
    if not path.is_file():
        raise ScoreFileError(f"{path} is missing: VLMEvalKit's evaluate() has not rated {prediction_file}.")
    return path


def _read_json(path: Path) -> Dict[str, object]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ScoreFileError(f"{path} is not readable JSON: {error}") from error
    if not isinstance(data, dict):
        raise ScoreFileError(f"{path} should hold a JSON object, found {type(data).__name__}.")
    return data


def _text(value: object) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else str(value)


def _scores(model_dir: Path, prediction_file: str, columns: Sequence[str] = ()) -> pd.DataFrame:
    """The score table, checked against the prediction file it should score."""
    path = score_file_path(model_dir, prediction_file)
    try:
        table = load_table(path)
    except ScoreFileError:
        raise
    except Exception as error:  # pandas / openpyxl raise many types for a damaged file
        raise ScoreFileError(f"{path} is not a readable table: {error}") from error
    missing = [c for c in ("index", "prediction", "score", *columns) if c not in table.columns]
    if missing:
        raise ScoreFileError(f"{path} lacks the column(s) {', '.join(missing)} that VLMEvalKit writes.")
    prediction_path = Path(model_dir) / prediction_file
    if prediction_path.is_file():
        predictions = load_table(prediction_path)
        same = (
            len(predictions) == len(table)
            and "prediction" in predictions
            and [_text(v) for v in predictions["prediction"]] == [_text(v) for v in table["prediction"]]
        )
        if not same:
            raise ScoreFileError(
                f"{path} does not score the current {prediction_file} (VLMEvalKit reuses an existing score "
                "file): delete it and the rating file, then evaluate again."
            )
    scores = pd.to_numeric(table["score"], errors="coerce")
    if ((scores.notna()) & ~scores.isin([-1, 0, 1])).any():
        raise ScoreFileError(f"{path}: scores must be 1, 0 or -1, found {sorted(set(scores.dropna()))}.")
    return table.assign(score=scores)


def _unscored(table: pd.DataFrame, path_hint: str) -> int:
    """Questions whose score is -1 (failed) or missing; logged, as they are counted as wrong."""
    bad = int((table["score"].isna() | (table["score"] < 0)).sum())
    if bad:
        LOG.warning("%s: %d question(s) have a -1 or missing score; counted as wrong.", path_hint, bad)
    return bad


def _overall_fraction(rating_path: Path) -> float:
    """``["overall"]["overall"]`` of a Video-MME / LongVideoBench rating: a fraction in [0, 1]."""
    rating = _read_json(rating_path)
    try:
        value = float(rating["overall"]["overall"])  # type: ignore[index]
    except (KeyError, TypeError, ValueError) as error:
        raise ScoreFileError(f"{rating_path}: no numeric rating['overall']['overall'] ({error}).") from error
    if math.isnan(value) or not 0.0 <= value <= 1.0:
        raise ScoreFileError(f"{rating_path}: rating['overall']['overall'] = {value} is not a fraction in [0, 1].")
    return value


def _videomme_like(model_dir: Path, prediction_file: str) -> float:
    table = _scores(model_dir, prediction_file)
    rating_path = rating_file_path(model_dir, prediction_file)
    fraction = _overall_fraction(rating_path)
    bad = _unscored(table, str(rating_path))
    # The rating is the mean over the scores >= 0; put the others back in the denominator as wrong.
    return 100.0 * fraction * (len(table) - bad) / len(table) if len(table) else 0.0


def _mvbench(model_dir: Path, prediction_file: str) -> float:
    table = _scores(model_dir, prediction_file, ("task_type",))
    rating_path = rating_file_path(model_dir, prediction_file)
    rating = _read_json(rating_path)
    try:
        correct, total = int(rating["overall"][0]), int(rating["overall"][1])  # type: ignore[index]
    except (KeyError, TypeError, ValueError, IndexError) as error:
        raise ScoreFileError(f"{rating_path}: no rating['overall'] = [correct, total, percent] ({error}).") from error
    if total != len(table) or total <= 0 or not 0 <= correct <= total:
        raise ScoreFileError(
            f"{rating_path}: overall {correct}/{total} does not fit the {len(table)} scored questions."
        )
    # VLMEvalKit counts a truthy score as correct: -1 and missing scores were counted; remove them.
    return 100.0 * (correct - _unscored(table, str(rating_path))) / total


def _mlvu(model_dir: Path, prediction_file: str) -> float:
    table = _scores(model_dir, prediction_file, ("task_type",))
    if table.empty:
        raise ScoreFileError(f"{score_file_path(model_dir, prediction_file)} holds no scored questions.")
    _unscored(table, str(score_file_path(model_dir, prediction_file)))
    per_task = (table["score"] == 1).groupby(table["task_type"].astype(str)).mean()
    return 100.0 * float(per_task.mean())


_READERS = {
    "Video-MME": _videomme_like,
    "MVBench": _mvbench,
    "MLVU": _mlvu,
    "LongVideoBench": _videomme_like,
}


def benchmark_accuracy(benchmark: str, model_dir: Path, prediction_file: str) -> float:
    """The paper's headline accuracy, in percent, from VLMEvalKit's score files in ``model_dir``.

    Video-MME overall (no subtitles), MVBench overall, MLVU M-Avg (mean over its multiple-choice
    tasks), LongVideoBench overall. ``prediction_file``: the predictions' file name in
    ``model_dir`` (``<model>_<dataset>.xlsx``). Raises :class:`ScoreFileError`, naming the file,
    when a score or rating file is missing, malformed or stale.
    """
    name = resolve_benchmark(benchmark).name
    return float(_READERS[name](Path(model_dir), prediction_file))


def option_counts(model_dir: Path, prediction_file: str) -> List[int]:
    """Number of options of each question of a prediction file (from its ``candidates`` column)."""
    table = load_table(Path(model_dir) / prediction_file)
    if "candidates" not in table:
        return []
    counts = []
    for value in table["candidates"]:
        try:
            options = ast.literal_eval(value) if isinstance(value, str) else list(value)
        except (ValueError, SyntaxError, TypeError):
            continue
        if len(options):
            counts.append(len(options))
    return counts


def chance_accuracy(model_dir: Path, prediction_file: str) -> Optional[float]:
    """Expected accuracy (percent) of uniform guessing on a prediction file's questions (None if unknown)."""
    counts = option_counts(model_dir, prediction_file)
    return 100.0 * sum(1.0 / n for n in counts) / len(counts) if counts else None
