"""Benchmarks of the scan op, the models and the text pipeline (timings belong to a quiet machine)."""
