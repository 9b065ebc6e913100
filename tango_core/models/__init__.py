"""Adapters that put Tango into Hugging Face transformers' video LLMs."""
