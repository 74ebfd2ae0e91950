"""Hugging Face: transformers model directories served by task."""
