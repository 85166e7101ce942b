"""Torch-only model code: checkpoint loading, generations, tokenizer. Knows nothing of HTTP."""
