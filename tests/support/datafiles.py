"""Real data files the tests read: the benchmark files shipped in the package, and a sample of
real model outputs shipped with the tests (see tests/support/data/SOURCES.md)."""

from pathlib import Path

from harmony_mcore.data.benchmarks import FILES

MATH500 = FILES / "math500_ttrl.json"
QWEN_OUTPUTS = Path(__file__).parent / "data" / "qwen25math_math_cot_100_8samples.jsonl"
