"""Data that ships with ``lmforge monitor``: the demo stream (demo_stream.jsonl) and the script
that made it (make_demo_stream.py)."""
