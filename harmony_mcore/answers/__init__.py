"""Answer extraction and equivalence classes (the reducer's hot path)."""

from harmony_mcore.answers.equivalence import MODES, Equivalence, EquivalenceStats, normalize
from harmony_mcore.answers.extract import extract_boxed, extract_choice

__all__ = ["MODES", "Equivalence", "EquivalenceStats", "extract_boxed", "extract_choice", "normalize"]
