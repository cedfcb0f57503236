"""`make bench`: the project's speed and memory figures, printed side by side with their baselines.

Each module ``bench/<name>_bench.py`` exposes ``run() -> dict`` and prints its own table.
``python -m bench`` runs them all; ``python -m bench ingest relay`` runs the named ones.
"""
