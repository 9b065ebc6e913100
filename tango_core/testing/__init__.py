"""Test fixtures shipped with the package (not the library): tiny and 7B-shaped random-weight
models built from configs (``tiny_llava``, ``tiny_qwen``, ``tiny_tokenizer``) and structured
synthetic clips (``synthetic``). The tests, the demos and the benchmarks import them from here.
"""
