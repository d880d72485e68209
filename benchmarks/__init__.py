"""Benchmarks, each run from the repository root as `python -m benchmarks.NAME`: accept, corpus, size and
lab_start. Each measures against a peer in the same run and ends with a one-line summary."""
