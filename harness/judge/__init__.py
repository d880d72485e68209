"""Judging a run: the evidence gathered from a lab, the expectations checked against it, known deviations."""
