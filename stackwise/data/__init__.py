"""Data: the dataset registry and its one fallback policy, tokenizers, packed token blocks, collators."""
