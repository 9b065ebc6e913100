"""Tango's evaluation harness: VLMEvalKit model classes, a resumable runner, sweeps and reports.

Layers (imports run downwards only):

* ``benchmarks``, ``models_registry``: plain data about the four benchmarks and the three model
  families; importing them is cheap (no VLMEvalKit, no torch).
* ``vlmeval_env``: how VLMEvalKit is imported (environment, SSL checks restored, noise kept out
  of sight).
* ``vlm``: VLMEvalKit ``BaseModel`` classes around :func:`tango_core.models.loader.load_tango_model`.
* ``records``, ``distributed``, ``runner``: per-sample records, process groups, the inference and
  scoring loop.
* ``cli`` (``VLMEvalKit/run.py``), ``sweep`` (the ``run_eval_*.sh`` scripts), ``report``
  (``python -m tango_eval.report``), ``demo_data`` (generated benchmarks for ``--demo``).
"""

__version__ = "0.1.0"
