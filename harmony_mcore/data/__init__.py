"""Benchmarks as Problem records, the prompts of each view, and `harmony data`."""

from harmony_mcore.data.benchmarks import BENCHMARKS, DataError, Problem, load_benchmark
from harmony_mcore.data.prompts import PromptSet, build_prompts, parse_reframing, view_messages

__all__ = ["BENCHMARKS", "DataError", "Problem", "PromptSet", "build_prompts", "load_benchmark", "parse_reframing",
           "view_messages"]
