"""The one settings object of an evaluated model: which checkpoint, which method, which knobs."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Dict, Optional

from tango_core.config import paper_similarity_threshold
from tango_core.intra_llm import IntraLLMConfig
from tango_core.models.base import DECODING

from .models_registry import ModelSpec, resolve_model

METHODS = ("tango", "vanilla")
SEGMENT_TYPES = ("holitom", "fastvid")
DTYPES = ("float32", "float16", "bfloat16")


def _is_ratio(value: Any, allow_zero: bool = False) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(float(value)):
        return False
    return (0.0 <= float(value) <= 1.0) if allow_zero else (0.0 < float(value) <= 1.0)


def six_significant(value: float) -> float:
    """``value`` rounded to six significant digits (how the reference's scripts pass ratios)."""
    return float(f"{value:.6g}")


@dataclass(frozen=True)
class ModelSettings:
    """Everything that decides a model's answers in an evaluation.

    model: harness model name (``llava_onevision``, ``llava_video``, ``qwen2_5_vl``). model_path: a
    checkpoint folder or hub id (default: the family's hub id). method: ``tango`` or ``vanilla``
    (the unmodified model). retain_ratio: the nominal retention ratio r (LLaVA-Video: the average
    over the 28 layers). pre_retain_ratio: LLaVA-Video's pre-LLM ratio (default from r, K and p,
    spec section 6). pruned_layer: K, LLaVA-Video's intra-LLM layer (default 18 of 28).
    llm_retain_ratio: p, the share of visual tokens kept at layer K (default 0.5).
    segment_type, similarity_threshold (tau; default 0.65 at r = 0.1, else 0.8), context_ratio,
    num_neighbors: Tango's knobs. nframe / fps: frames per video (a dataset's own setting
    overrides them, as in VLMEvalKit). max_new_tokens: answer budget (greedy). dtype / device /
    attn_implementation: execution (defaults: the paper's dtype on CUDA, float32 on CPU).
    decoding: the adapters' decoding mode (``auto``, ``graphs``, ``compiled``, ``static``,
    ``dynamic``; default ``auto``: CUDA graphs on CUDA; ``compiled`` adds torch.compile, about a
    minute once per process, for long runs).
    siglip_path: the SigLIP checkpoint with the attention-pooling head (LLaVA). demo: the model is
    a tiny random-weight demo model (results are labelled so).
    """

    model: str
    model_path: Optional[str] = None
    method: str = "tango"
    retain_ratio: float = 0.1
    pre_retain_ratio: Optional[float] = None
    pruned_layer: Optional[int] = None
    llm_retain_ratio: Optional[float] = None
    segment_type: str = "holitom"
    similarity_threshold: Optional[float] = None
    context_ratio: float = 0.4
    num_neighbors: int = 7
    nframe: Optional[int] = None
    fps: Optional[float] = None
    max_new_tokens: int = 16
    dtype: Optional[str] = None
    device: Optional[str] = None
    attn_implementation: Optional[str] = None
    decoding: Optional[str] = None
    siglip_path: Optional[str] = None
    demo: bool = False

    def __post_init__(self) -> None:
        spec = resolve_model(self.model)
        object.__setattr__(self, "model", spec.name)
        if self.model_path is None:
            object.__setattr__(self, "model_path", spec.hub_id)
        if self.nframe is None and self.fps is None:
            object.__setattr__(self, "nframe", spec.nframe)
            object.__setattr__(self, "fps", spec.fps)
        self.validate()

    @property
    def spec(self) -> ModelSpec:
        """The model family."""
        return resolve_model(self.model)

    @property
    def prunes(self) -> bool:
        """Whether Tango removes tokens (method tango with r < 1)."""
        return self.method == "tango" and float(self.retain_ratio) < 1.0

    def validate(self) -> None:
        """Raise ValueError with a message that says what to pass instead."""
        if self.method not in METHODS:
            raise ValueError(f"--method must be one of {', '.join(METHODS)}, got {self.method!r}.")
        if self.decoding is not None and self.decoding not in DECODING:
            raise ValueError(f"--decoding must be one of {', '.join(DECODING)}, got {self.decoding!r}.")
        for name in ("retain_ratio", "pre_retain_ratio", "llm_retain_ratio"):
            value = getattr(self, name)
            if value is not None and not _is_ratio(value):
                flag = "--" + name.replace("_", "-")
                raise ValueError(f"{flag} must be a number in (0, 1], got {value!r}; e.g. 0.1 keeps 10% of the visual tokens.")
        if not _is_ratio(self.context_ratio, allow_zero=True):
            raise ValueError(f"--context-ratio must be in [0, 1], got {self.context_ratio!r}.")
        if self.similarity_threshold is not None and not (-1.0 <= float(self.similarity_threshold) <= 1.0):
            raise ValueError(f"--similarity-threshold must be a cosine similarity in [-1, 1], got {self.similarity_threshold!r}.")
        if self.segment_type not in SEGMENT_TYPES:
            raise ValueError(f"--segment-type must be one of {', '.join(SEGMENT_TYPES)}, got {self.segment_type!r}.")
        if int(self.num_neighbors) < 1:
            raise ValueError(f"--num-neighbors must be at least 1, got {self.num_neighbors!r}.")
        if self.pruned_layer is not None and int(self.pruned_layer) < 1:
            raise ValueError(f"--pruned-layer must be at least 1, got {self.pruned_layer!r}.")
        if self.model != "llava_video" and any(v is not None for v in (self.pre_retain_ratio, self.pruned_layer, self.llm_retain_ratio)):
            raise ValueError(
                "--pre-retain-ratio, --pruned-layer and --llm-retain-ratio set LLaVA-Video's intra-LLM stage; "
                f"{self.model} prunes before the LLM only (use --retain-ratio)."
            )
        if (self.nframe is None) == (self.fps is None):
            raise ValueError("Give exactly one of --nframe (frames per video) or --fps (frames per second).")
        if self.nframe is not None and int(self.nframe) < 1:
            raise ValueError(f"--nframe must be a positive number of frames, got {self.nframe!r}.")
        if self.fps is not None and not float(self.fps) > 0:
            raise ValueError(f"--fps must be positive, got {self.fps!r}.")
        if int(self.max_new_tokens) < 1:
            raise ValueError(f"--max-new-tokens must be at least 1, got {self.max_new_tokens!r}.")
        if self.dtype is not None and self.dtype not in DTYPES:
            raise ValueError(f"--dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}.")

    def replace(self, **changes: Any) -> "ModelSettings":
        """A copy with ``changes`` applied (and validated)."""
        return dataclasses.replace(self, **changes)

    def intra_llm_config(self) -> IntraLLMConfig:
        """LLaVA-Video's intra-LLM stage: K = --pruned-layer, p = --llm-retain-ratio (defaults 18 of 28, 0.5)."""
        defaults = IntraLLMConfig()
        return IntraLLMConfig(
            layer=None if self.pruned_layer is None else int(self.pruned_layer),
            keep_ratio=defaults.keep_ratio if self.llm_retain_ratio is None else float(self.llm_retain_ratio),
        )

    def resolved_pre_retain_ratio(self, num_layers: int) -> float:
        """LLaVA-Video's pre-LLM ratio: explicit, else the one whose average over the ``num_layers``
        layers is r (spec section 6), to six significant digits as the reference passes it."""
        if self.pre_retain_ratio is not None:
            return float(self.pre_retain_ratio)
        return six_significant(self.intra_llm_config().pre_llm_ratio(float(self.retain_ratio), num_layers))

    def resolved_similarity_threshold(self) -> float:
        """tau, keyed on the nominal ratio r: explicit, else the paper's rule."""
        if self.similarity_threshold is not None:
            return float(self.similarity_threshold)
        return paper_similarity_threshold(float(self.retain_ratio))

    def to_dict(self) -> Dict[str, Any]:
        """All fields, JSON-ready."""
        return dataclasses.asdict(self)

    def fingerprint(self) -> Dict[str, Any]:
        """The fields that decide the answers (what a resumed run must share with the first one)."""
        decided = self.to_dict()
        decided.pop("device", None)  # cuda:0 and cuda:1 give the same answers
        if self.decoding is None:
            decided.pop("decoding", None)  # runs from before the setting existed resume
        if self.method == "vanilla":
            for name in ("retain_ratio", "pre_retain_ratio", "pruned_layer", "llm_retain_ratio", "segment_type",
                         "similarity_threshold", "context_ratio", "num_neighbors"):
                decided.pop(name, None)
        return decided
