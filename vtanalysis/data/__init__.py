"""Datasets in the project's standard format (image folder + questions.jsonl)."""
from .dataset import Sample, read_samples, write_samples

__all__ = ["Sample", "read_samples", "write_samples"]
