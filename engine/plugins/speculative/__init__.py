"""Drafters for vLLM's speculative decoding."""
