"""``leanserve bench``: a load-test client for OpenAI-compatible servers (see cli.py)."""
