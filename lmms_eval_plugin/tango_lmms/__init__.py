"""Tango's video LLMs as lmms-eval models (lmms-eval 0.7.3, optional: requirements-lmms.txt).

Registered through lmms-eval's plugin entry point (group ``lmms_eval.models``, see pyproject.toml):

    python -m lmms_eval --model tango_llava_onevision \\
        --model_args pretrained=llava-hf/llava-onevision-qwen2-7b-ov-hf,retention_ratio=0.1,profile=True \\
        --tasks videomme --batch_size 1 --output_path outputs/lmms

Models: ``tango_llava_onevision``, ``tango_llava_video``, ``tango_qwen2_5_vl`` (Tango; ``method=vanilla``
in ``--model_args`` runs the unmodified model) and ``vanilla_llava_onevision``, ``vanilla_llava_video``,
``vanilla_qwen2_5_vl``.
"""

from .registration import manifests

__all__ = ["manifests"]
