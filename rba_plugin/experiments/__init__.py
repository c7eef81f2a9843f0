"""Experiments built on trained models, outside the model and the engine: chained runs in one
process, the method comparison on one benchmark, and RAML's incremental few-shot protocol."""
from . import comparison, incremental, runs  # noqa: F401

__all__ = ["comparison", "incremental", "runs"]
