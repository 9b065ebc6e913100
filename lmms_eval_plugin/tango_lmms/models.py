"""lmms-eval ``lmms`` classes around Tango's adapters (``tango_eval.adapters.load_adapter``).

``--model_args`` (all optional but ``pretrained``): pretrained (checkpoint folder or hub id),
method (tango | vanilla), retention_ratio, pre_retention_ratio, pruned_layer, llm_retention_ratio
(LLaVA-Video's intra-LLM stage), segment_type, similarity_threshold, context_ratio, num_neighbors,
max_frames_num (frames per video; default the paper's), fps (instead of a frame count),
max_new_tokens (default: the task's, else 16), dtype, device, attn_implementation, decoding, siglip_path,
profile (True: spec section 9's metrics per request; table in the log), profile_dir (where
``tango_lmms_profile.json`` / ``.csv`` go; default ./tango_lmms_profile). Greedy decoding always.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, List, Optional, Tuple

from loguru import logger
from lmms_eval.api.instance import Instance
from lmms_eval.api.model import lmms
from tqdm import tqdm

from tango_core.models.profiling import Profiler
from tango_eval.adapters import fit_adapter_to, load_adapter, sample_clip
from tango_eval.settings import ModelSettings


class TangoLMMS(lmms):
    """One of Tango's families in lmms-eval (``FAMILY``), Tango or vanilla (``METHOD`` by default)."""

    FAMILY = ""
    METHOD = "tango"

    def __init__(
        self,
        pretrained: Optional[str] = None,
        method: Optional[str] = None,
        retention_ratio: float = 0.1,
        pre_retention_ratio: Optional[float] = None,
        pruned_layer: Optional[int] = None,
        llm_retention_ratio: Optional[float] = None,
        segment_type: str = "holitom",
        similarity_threshold: Optional[float] = None,
        context_ratio: float = 0.4,
        num_neighbors: int = 7,
        max_frames_num: Optional[int] = None,
        fps: Optional[float] = None,
        max_new_tokens: Optional[int] = None,
        dtype: Optional[str] = None,
        device: Optional[str] = None,
        attn_implementation: Optional[str] = None,
        decoding: Optional[str] = None,
        siglip_path: Optional[str] = None,
        profile: bool = False,
        profile_dir: str = "tango_lmms_profile",
        batch_size: Any = 1,
        **unused: Any,
    ) -> None:
        super().__init__()
        if int(batch_size or 1) != 1:
            raise ValueError("Tango's lmms-eval models answer one request at a time: use --batch_size 1.")
        unknown = sorted(k for k in unused if k not in ("max_batch_size",))
        if unknown:
            raise ValueError(f"Unknown --model_args for {type(self).__name__}: {unknown}; see tango_lmms.models.")
        frames = {"nframe": int(max_frames_num), "fps": None} if max_frames_num else ({"nframe": None, "fps": float(fps)} if fps else {})
        self.settings = ModelSettings(
            model=self.FAMILY, model_path=pretrained, method=method or self.METHOD, retain_ratio=float(retention_ratio),
            pre_retain_ratio=pre_retention_ratio, pruned_layer=pruned_layer, llm_retain_ratio=llm_retention_ratio,
            segment_type=segment_type, similarity_threshold=similarity_threshold, context_ratio=float(context_ratio),
            num_neighbors=int(num_neighbors), max_new_tokens=int(max_new_tokens or 16), dtype=dtype,
            device=device if device and device != "cuda" else None, attn_implementation=attn_implementation,
            decoding=decoding, siglip_path=siglip_path, **frames,
        )
        self.max_new_tokens = max_new_tokens
        self.adapter = load_adapter(self.settings)
        self.profile = bool(profile)
        self.profile_dir = Path(profile_dir)
        self.profiler = Profiler() if self.profile else None
        logger.info(f"{type(self).__name__}: {self.settings.method}, r={self.settings.retain_ratio}, {self.settings.model_path}")

    def _question_and_video(self, request: Instance) -> Tuple[str, str, dict]:
        contexts, gen_kwargs, doc_to_visual, doc_id, task, split = request.args
        visuals = [v for v in doc_to_visual(self.task_dict[task][split][doc_id]) if v is not None]
        videos = [v for v in visuals if isinstance(v, (str, os.PathLike))]
        if len(videos) != 1:
            raise ValueError(f"Tango's models answer about one video per request; {task} #{doc_id} gives {len(visuals)} visuals.")
        return str(contexts), os.fspath(videos[0]), dict(gen_kwargs or {})

    def generate_until(self, requests: List[Instance]) -> List[str]:
        """Greedy answers, one request at a time (the task's ``until`` strings cut the text)."""
        answers = []
        started = time.perf_counter()
        for request in tqdm(requests, disable=self.rank != 0, desc=type(self).__name__):
            question, video, gen_kwargs = self._question_and_video(request)
            budget = int(self.max_new_tokens or gen_kwargs.get("max_new_tokens") or 16)
            clip = sample_clip(self.adapter, video, self.settings.nframe, self.settings.fps)
            fit_adapter_to(self.adapter, clip)
            if self.profiler is None:
                generation = self.adapter.generate(clip, question, max_new_tokens=budget)
            else:
                with self.profiler.record() as slot:
                    generation = slot["generation"] = self.adapter.generate(clip, question, max_new_tokens=budget)
            text = generation.text
            for stop in gen_kwargs.get("until", []) or []:
                if stop and stop in text:
                    text = text.split(stop)[0]
            answers.append(text)
        if self.profiler is not None:
            self._write_profile(time.perf_counter() - started)
        return answers

    def _write_profile(self, loop_s: float) -> None:
        self.profile_dir.mkdir(parents=True, exist_ok=True)
        stem = self.profile_dir / f"tango_lmms_profile_rank{self.rank}"
        self.profiler.to_json(str(stem.with_suffix(".json")), total_runtime_s=loop_s)
        self.profiler.to_csv(str(stem.with_suffix(".csv")))
        logger.info(f"profile ({len(self.profiler.requests)} requests; {stem}.json):\n{self.profiler.table(total_runtime_s=loop_s)}")

    def loglikelihood(self, requests: List[Instance]) -> List[Tuple[float, bool]]:
        raise NotImplementedError("Tango's lmms-eval models serve generation tasks (generate_until) only.")

    def generate_until_multi_round(self, requests: List[Instance]) -> List[str]:
        raise NotImplementedError("Tango's lmms-eval models answer single-round questions only.")


def _model(family: str, method: str) -> type:
    name = f"{method.title()}_{family}"
    doc = f"{family} in lmms-eval, {'with Tango' if method == 'tango' else 'unmodified'} by default."
    return type(name, (TangoLMMS,), {"FAMILY": family, "METHOD": method, "__doc__": doc, "__module__": __name__})


Tango_llava_onevision = _model("llava_onevision", "tango")
Tango_llava_video = _model("llava_video", "tango")
Tango_qwen2_5_vl = _model("qwen2_5_vl", "tango")
Vanilla_llava_onevision = _model("llava_onevision", "vanilla")
Vanilla_llava_video = _model("llava_video", "vanilla")
Vanilla_qwen2_5_vl = _model("qwen2_5_vl", "vanilla")
