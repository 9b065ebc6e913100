"""run.py's command line: flags, plans, and one clear line for every bad input (no model loaded)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tango_eval import cli
from tango_eval.benchmarks import BENCHMARKS
from tango_eval.models_registry import MODELS

CONFIGS = Path(__file__).resolve().parents[2] / "VLMEvalKit" / "configs"


@pytest.fixture()
def no_execute(monkeypatch):
    """Fail the test if run.py gets as far as loading anything."""

    def forbidden(plan):
        raise AssertionError("bad input must be reported before any model is loaded")

    monkeypatch.setattr(cli, "execute", forbidden)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A folder that looks like a LLaVA-OneVision checkpoint (config.json only: nothing is loaded)."""
    folder = tmp_path_factory.mktemp("ov_checkpoint")
    (folder / "config.json").write_text(json.dumps({"model_type": "llava_onevision", "text_config": {"num_hidden_layers": 4}}))
    return folder


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory) -> Path:
    """Benchmark data for the checks that need it present."""
    from tango_eval.demo_data import write_demo_benchmarks

    root = tmp_path_factory.mktemp("cli_data")
    write_demo_benchmarks(str(root), samples_per_benchmark=2)
    return root


def plan_of(argv):
    return cli.make_plan(cli.build_parser().parse_args(argv))


def run_main(argv, capsys):
    status = cli.main(argv)
    return status, capsys.readouterr().err.strip()


def test_shipped_configs_hold_the_paper_settings() -> None:
    for name, spec in MODELS.items():
        config = json.loads((CONFIGS / f"{name}.json").read_text())
        (model_name, model), = config["model"].items()
        assert model_name == name and model["class"] == spec.vlm_class and model["model_path"] == spec.hub_id
        assert set(config["data"]) == {b.dataset for b in BENCHMARKS.values()}
        for entry in config["data"].values():
            frames = {k: entry[k] for k in ("nframe", "fps") if k in entry}
            assert frames == ({"nframe": 32} if name == "llava_onevision" else {"nframe": 64} if name == "llava_video" else {"fps": 2.0})
        assert config["data"]["Video-MME"]["use_subtitle"] is False


def test_config_plan_with_tango_flags_and_a_data_selection(checkpoint, demo_root, tmp_path) -> None:
    plan = plan_of([
        "--config", str(CONFIGS / "llava_onevision.json"), "--model-path", str(checkpoint), "--data-root", str(demo_root),
        "--work-dir", str(tmp_path / "w"), "--data", "MVBench", "Video-MME_8frame", "--retain-ratio", "0.15",
        "--segment-type", "fastvid", "--similarity-threshold", "0.7", "--context-ratio", "0.3", "--num-neighbors", "5",
        "--mode", "infer", "--limit", "3", "--keep-failed", "--verbose",
    ])
    (model,) = plan.models
    s = model.settings
    assert (s.retain_ratio, s.segment_type, s.similarity_threshold, s.context_ratio, s.num_neighbors) == (0.15, "fastvid", 0.7, 0.3, 5)
    assert s.model_path == str(checkpoint) and s.method == "tango"
    assert [d.key for d in model.datasets] == ["Video-MME", "MVBench_MP4"]  # config order; Video-MME_8frame selects Video-MME
    assert all(d.entry["nframe"] == 32 for d in model.datasets)
    assert plan.options.mode == "infer" and plan.options.limit == 3 and plan.options.keep_failed and plan.options.verbose
    assert plan.work_dir == tmp_path / "w"


def test_flag_plan_resolves_plain_and_vlmeval_names(checkpoint, demo_root, tmp_path) -> None:
    plan = plan_of([
        "--model", "llava_onevision", "--model-path", str(checkpoint), "--data-root", str(demo_root), "--work-dir",
        str(tmp_path), "--data", "Video-MME", "MVBench_MP4", "mlvu", "LongVideoBench_8frame", "Video-MME_0.5fps",
        "--method", "vanilla",
    ])
    (model,) = plan.models
    got = [(d.key, d.benchmark.name, d.entry["class"], d.entry.get("nframe"), d.entry.get("fps")) for d in model.datasets]
    assert got == [
        ("Video-MME", "Video-MME", "VideoMME", 32, None),
        ("MVBench_MP4", "MVBench", "MVBench_MP4", 32, None),
        ("MLVU_MCQ", "MLVU", "MLVU_MCQ", 32, None),
        ("LongVideoBench_8frame", "LongVideoBench", "LongVideoBench", 8, None),
        ("Video-MME_0.5fps", "Video-MME", "VideoMME", None, 0.5),
    ]
    assert model.settings.method == "vanilla" and not model.settings.prunes


def test_nframe_flag_overrides_every_dataset(checkpoint, demo_root, tmp_path) -> None:
    plan = plan_of(["--config", str(CONFIGS / "llava_onevision.json"), "--model-path", str(checkpoint),
                    "--data-root", str(demo_root), "--work-dir", str(tmp_path), "--nframe", "6"])
    assert {d.entry.get("nframe") for d in plan.models[0].datasets} == {6}
    assert plan.models[0].settings.nframe == 6


def test_every_vlmeval_flag_is_accepted_or_refused_with_a_reason(capsys, no_execute) -> None:
    """Each flag of VLMEvalKit's own parser either works here or is refused by name (never 'unrecognized')."""
    import importlib.util

    source = Path(importlib.util.find_spec("vlmeval").submodule_search_locations[0], "run.py").read_text()
    flags = set(re.findall(r"add_argument\(\s*'(--[a-z0-9-]+)'", source))
    assert {"--data", "--model", "--config", "--work-dir", "--mode", "--reuse", "--verbose"} <= flags
    parser = cli.build_parser()
    known = {option for action in parser._actions for option in action.option_strings}
    assert flags <= known, f"VLMEvalKit flags unknown to run.py: {sorted(flags - known)}"
    status, err = run_main(["--model", "llava_onevision", "--data", "MVBench", "--temperature", "0.7"], capsys)
    assert status == 2 and err == "run.py: error: --temperature is not supported here: decoding is greedy."
    status, err = run_main(["--model", "llava_onevision", "--data", "MVBench", "--judge", "gpt-4o-mini"], capsys)
    assert status == 2 and "exact matching only" in err and err.count("\n") == 0


BAD_INPUTS = {
    "missing checkpoint": (["--model", "llava_onevision", "--model-path", "{tmp}/nowhere", "--data", "MVBench"],
                           "checkpoint folder '{tmp}/nowhere' does not exist"),
    "checkpoint of another family": (["--model", "qwen2_5_vl", "--model-path", "{ckpt}", "--data", "MVBench"],
                                     "needs model_type 'qwen2_5_vl'"),
    "unknown dataset": (["--model", "llava_onevision", "--model-path", "{ckpt}", "--data", "EgoSchema"],
                        "Unknown benchmark 'EgoSchema'"),
    "unknown model": (["--model", "llava-next", "--data", "MVBench"], "Unknown model 'llava-next'"),
    "ratio above 1": (["--model", "llava_onevision", "--model-path", "{ckpt}", "--data", "MVBench", "--retain-ratio", "1.5"],
                      "--retain-ratio must be a number in (0, 1], got 1.5"),
    "ratio zero": (["--model", "llava_onevision", "--model-path", "{ckpt}", "--data", "MVBench", "--retain-ratio", "0"],
                   "--retain-ratio must be a number in (0, 1], got 0.0"),
    "ratio NaN": (["--model", "llava_onevision", "--model-path", "{ckpt}", "--data", "MVBench", "--retain-ratio", "nan"],
                  "--retain-ratio must be a number in (0, 1], got nan"),
    "unwritable work dir": (["--model", "llava_onevision", "--model-path", "{ckpt}", "--data", "MVBench", "--work-dir", "{file}/sub"],
                            "Cannot write to --work-dir {file}/sub"),
    "missing benchmark data": (["--model", "llava_onevision", "--model-path", "{ckpt}", "--data", "MVBench", "--data-root", "{empty}"],
                               "MVBench data not found: VLMEvalKit looks for {empty}/hub/datasets--OpenGVLab--MVBench/refs/video"),
    "intra-LLM flag on another family": (["--model", "llava_onevision", "--model-path", "{ckpt}", "--data", "MVBench",
                                          "--pruned-layer", "10"], "set LLaVA-Video's intra-LLM stage"),
    "config without class": (["--config", "{bad_config}"], "needs a 'class'"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_one_line_before_loading(case, capsys, no_execute, checkpoint, demo_root, tmp_path) -> None:
    argv, expected = BAD_INPUTS[case]
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    empty = tmp_path / "empty"
    empty.mkdir()
    bad_config = tmp_path / "bad.json"
    bad_config.write_text(json.dumps({"model": {"m": {"class": "TangoLlavaOneVision"}}, "data": {"Video-MME": {"nframe": 8}}}))
    values = {"tmp": str(tmp_path), "ckpt": str(checkpoint), "file": str(a_file), "empty": str(empty), "bad_config": str(bad_config)}
    argv = [a.format(**values) for a in argv]
    if "--data-root" not in argv:
        argv += ["--data-root", str(demo_root)]
    if "--work-dir" not in argv:
        argv += ["--work-dir", str(tmp_path / "work")]
    status, err = run_main(argv, capsys)
    assert status == 2
    assert err.startswith("run.py: error: ") and "\n" not in err
    assert expected.format(**values) in err


def test_missing_data_message_says_how_to_get_it(tmp_path) -> None:
    from tango_eval.benchmarks import missing_data

    message = missing_data(BENCHMARKS["Video-MME"], tmp_path)
    assert "huggingface-cli download lmms-lab/Video-MME --repo-type dataset" in message and str(tmp_path) in message


def test_decoding_flag_reaches_the_adapter_and_the_fingerprint(checkpoint, demo_root, tmp_path, capsys, no_execute) -> None:
    from tango_eval.adapters import adapter_options

    base = ["--model", "llava_onevision", "--model-path", str(checkpoint), "--data-root", str(demo_root),
            "--work-dir", str(tmp_path), "--data", "Video-MME"]
    settings = plan_of(base + ["--decoding", "compiled"]).models[0].settings
    assert settings.decoding == "compiled" and adapter_options(settings)["decoding"] == "compiled"
    assert settings.fingerprint()["decoding"] == "compiled"  # answers made otherwise are not mixed in
    default = plan_of(base).models[0].settings
    assert "decoding" not in adapter_options(default) and "decoding" not in default.fingerprint()  # older runs resume
    with pytest.raises(SystemExit) as exit_info:
        cli.main(base + ["--decoding", "fast"])
    assert exit_info.value.code == 2 and "--decoding" in capsys.readouterr().err
