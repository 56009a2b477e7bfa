"""The rollout engine protocol: what the trainer asks of any generator (vLLM on GPU, torch on CPU).

Log-prob convention (both engines): each sampled token's log-prob is `log_softmax(logits / T)` at
the sampling temperature T, *before* top-p truncation; with greedy decoding (temperature 0) T = 1.
The trainer's `Policy.logprobs(..., temperature=T)` computes the same quantity, so the two can be
compared directly (see harmony_mcore.bridge.export.check_sync).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Protocol, Sequence, Union

import torch

# A request: prompt token ids, or chat messages ([{"role": ..., "content": ...}, ...]) that the
# engine renders with the tokenizer's chat template (generation prompt appended).
ChatMessages = list[dict[str, str]]
Request = Union[Sequence[int], ChatMessages]

FINISH_STOP = "stop"  # an EOS / stop token was sampled (it is the last token of `token_ids`)
FINISH_LENGTH = "length"  # max_tokens reached


@dataclass(frozen=True)
class SamplingParams:
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 256
    # Base seed. Sample j of request i uses seed (seed, request_seeds[i] or i, j); None = nondeterministic.
    seed: int | None = None
    # Per-request seeds make a request's samples independent of which other requests share its batch.
    request_seeds: Sequence[int] | None = None
    # Token ids that end a sample; None = the tokenizer's / model's EOS ids.
    stop_token_ids: Sequence[int] | None = None
    greedy: bool = False  # temperature-0 decoding (eval); n must be 1

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError(f"SamplingParams.n={self.n}: must be >= 1")
        if self.max_tokens < 1:
            raise ValueError(f"SamplingParams.max_tokens={self.max_tokens}: must be >= 1")
        if not self.greedy and self.temperature <= 0:
            raise ValueError("SamplingParams.temperature must be > 0; for greedy decoding set greedy=True")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"SamplingParams.top_p={self.top_p}: must be in (0, 1]")
        if self.greedy and self.n != 1:
            raise ValueError("greedy decoding gives one sample per request: set n=1")

    @property
    def logprob_temperature(self) -> float:
        return 1.0 if self.greedy else self.temperature


@dataclass
class Sample:
    token_ids: list[int]
    text: str
    logprobs: list[float]  # one per token in token_ids (see module docstring for the convention)
    finish_reason: str  # FINISH_STOP | FINISH_LENGTH


@dataclass
class GenerationResult:
    prompt_ids: list[int]
    samples: list[Sample] = field(default_factory=list)


class RolloutEngine(Protocol):
    def generate(self, requests: Sequence[Request], params: SamplingParams) -> list[GenerationResult]:
        """One result per request, in request order, each with `params.n` samples."""

    def score(self, sequences: Sequence[Sequence[int]], temperature: float = 1.0) -> list[torch.Tensor]:
        """Per-token log-probs of given token sequences: entry t of result i is log p(seq[t+1] | seq[:t+1])."""

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Copy full (unsharded) tensors with Hugging Face names into the engine's model."""

    def sleep(self, level: int = 1) -> None:
        """Free accelerator memory (1: keep weights on host, 2: drop weights; a full load_weights must follow)."""

    def wake_up(self, tags: Sequence[str] | None = None) -> None:
        """Undo sleep; tags ("weights", "kv_cache") wake parts, None wakes everything."""

    def reset_prefix_cache(self) -> None:
        """Forget cached prompt prefixes (they were computed with the old weights)."""


def sample_seed(base: int, request_seed: int, sample_index: int) -> int:
    """A 63-bit seed for one sample, mixing its three coordinates (splitmix64-style)."""
    x = (base * 0x9E3779B97F4A7C15 + request_seed * 0xBF58476D1CE4E5B9 + sample_index * 0x94D049BB133111EB)
    x &= (1 << 64) - 1
    x ^= x >> 31
    x = (x * 0xD6E8FEB86659FD93) & ((1 << 64) - 1)
    x ^= x >> 32
    return x & ((1 << 63) - 1)
