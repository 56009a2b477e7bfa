"""The embedded CPU default's task: arithmetic word problems a tiny model learns in a minute.

A problem is `a + b*c` (digits 1-9) written in one of several surface forms ("3+4*2",
"4 bags of 2 and 3 more", ...). The solver view answers directly; the reframe view first restates
the problem as an equation in another form (STRATEGY / REWRITTEN PROBLEM / SOLUTION markers, like
the real reframe-and-solve prompt) and then solves the restatement, so its errors are partly
independent of the solver's — the situation the harmonic-mean consensus exploits.

The model is a tiny Qwen3-architecture transformers model with a word-level tokenizer built on the
spot; it is pretrained briefly (supervised, both views) to a middling accuracy and cached, so the
label-free stage starts where consensus beats single samples (docs/training.md, "Results").
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import random
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

TOY_VERSION = 1  # bump when texts, tokenizer or pretraining change (invalidates the cache)
SOLVER_TAG, REFRAME_TAG = "solve:", "reframe:"
SURFACE_FORMS = (
    "{a}+{b}*{c}",
    "{b}*{c}+{a}",
    "{b} bags of {c} and {a} more",
    "add {a} to {b} times {c}",
)
# Each restatement strategy: the equation it rewrites the problem into (factors as (x, y) in x*y).
REFRAMES = {"reverse": "{c}*{b}+{a}", "swap": "{a}+{c}*{b}"}
WORDS = ("solve:", "reframe:", "bags", "of", "and", "more", "add", "to", "times", "STRATEGY:",
         "REWRITTEN_PROBLEM:", "SOLUTION:", *REFRAMES)
SPECIALS = ("<pad>", "<eos>", "<unk>")
SYMBOLS = tuple("0123456789+*=,.?") + ("\\boxed{", "}")


@dataclass(frozen=True)
class ToyProblem:
    id: int
    a: int
    b: int
    c: int
    form: int

    @property
    def question(self) -> str:
        return SURFACE_FORMS[self.form].format(a=self.a, b=self.b, c=self.c)

    @property
    def answer(self) -> str:
        return str(self.a + self.b * self.c)


def make_problems(n: int, seed: int) -> list[ToyProblem]:
    rng = random.Random(seed)
    return [ToyProblem(i, rng.randint(1, 9), rng.randint(1, 9), rng.randint(1, 9), rng.randrange(len(SURFACE_FORMS)))
            for i in range(n)]


def solver_prompt(p: ToyProblem) -> str:
    return f"{SOLVER_TAG} {p.question} = ? "


def reframe_prompt(p: ToyProblem) -> str:
    return f"{REFRAME_TAG} {p.question} = ? "


def solver_response(p: ToyProblem) -> str:
    bc = p.b * p.c
    return f"{p.b}*{p.c}={bc},{p.a}+{bc}={p.answer} \\boxed{{{p.answer}}}"


def reframe_response(p: ToyProblem, strategy: str) -> str:
    bc = p.b * p.c
    rewritten = REFRAMES[strategy].format(a=p.a, b=p.b, c=p.c)
    steps = f"{p.c}*{p.b}={bc},{bc}+{p.a}" if strategy == "reverse" else f"{p.c}*{p.b}={bc},{p.a}+{bc}"
    return (f"STRATEGY: {strategy} REWRITTEN PROBLEM: {rewritten} SOLUTION: {steps}={p.answer} "
            f"\\boxed{{{p.answer}}}")


def build_tokenizer():
    """Word-level tokenizer: whole words, single digits and symbols. Spaces are dropped (shorter
    sequences); decoding joins the tokens without them, which keeps answers and markers parseable."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate((*SPECIALS, *SYMBOLS, *WORDS))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    # the two-word marker is one token: "_" stands for its space inside the vocabulary
    tok.normalizer = normalizers.Replace("REWRITTEN PROBLEM:", "REWRITTEN_PROBLEM:")
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.WhitespaceSplit(),
        pre_tokenizers.Split(Regex(r"\\boxed\{|[A-Za-z_]+:?|\d|[^A-Za-z\d]"), behavior="isolated")])
    tok.decoder = decoders.Sequence([decoders.Replace("_", " "), decoders.Fuse()])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>",
                                   padding_side="left")


def _pretrain_batch(rng: random.Random, n: int) -> list[tuple[str, str]]:
    pairs = []
    for _ in range(n):
        p = ToyProblem(0, rng.randint(1, 9), rng.randint(1, 9), rng.randint(1, 9), rng.randrange(len(SURFACE_FORMS)))
        if rng.random() < 0.5:
            pairs.append((solver_prompt(p), solver_response(p)))
        else:
            pairs.append((reframe_prompt(p), reframe_response(p, rng.choice(sorted(REFRAMES)))))
    return pairs


def _encode_pairs(tokenizer, pairs: list[tuple[str, str]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids and a mask of the response tokens (+ EOS) that the loss is taken on."""
    seqs, starts = [], []
    for prompt, response in pairs:
        p_ids = tokenizer.encode(prompt, add_special_tokens=False)
        r_ids = tokenizer.encode(response, add_special_tokens=False) + [tokenizer.eos_token_id]
        seqs.append(p_ids + r_ids)
        starts.append(len(p_ids))
    width = max(map(len, seqs))
    ids = torch.full((len(seqs), width), tokenizer.pad_token_id)
    mask = torch.zeros(len(seqs), width)
    for i, (s, start) in enumerate(zip(seqs, starts)):
        ids[i, :len(s)] = torch.tensor(s)
        mask[i, start:len(s)] = 1
    return ids, mask


def pretrain(hf_config: dict, tokenizer, *, steps: int, lr: float, batch: int, seed: int):
    """Supervised warm start on both views (random problems). Returns the transformers model.

    Runs on one thread: float sums in another order train a different model (a 2-thread build of the
    default started at 61% instead of 77%), and the cached model must not depend on the machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _pretrain(hf_config, tokenizer, steps=steps, lr=lr, batch=batch, seed=seed)
    finally:
        torch.set_num_threads(threads)


def _pretrain(hf_config: dict, tokenizer, *, steps: int, lr: float, batch: int, seed: int):
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(seed)
    config = AutoConfig.for_model(**{**hf_config, "pad_token_id": tokenizer.pad_token_id,
                                     "eos_token_id": tokenizer.eos_token_id})
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    rng = random.Random(seed)
    model.train()
    for _ in range(steps):
        ids, mask = _encode_pairs(tokenizer, _pretrain_batch(rng, batch))
        logits = model(input_ids=ids[:, :-1]).logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1),
                                                 reduction="none")
        loss = (loss * mask[:, 1:].reshape(-1)).sum() / mask[:, 1:].sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    return model


def cache_root(cache_dir: str | None) -> Path:
    return Path(cache_dir or os.environ.get("HARMONY_CACHE") or "~/.cache/harmony_mcore").expanduser()


def pretrained_model_dir(hf_config: dict, *, steps: int, lr: float, batch: int, seed: int = 0,
                         cache_dir: str | None = None, log=print) -> Path:
    """An HF directory (weights + tokenizer) of the pretrained toy model; built once, then cached."""
    tokenizer = build_tokenizer()
    hf_config = {**hf_config, "vocab_size": max(int(hf_config.get("vocab_size", 0)), len(tokenizer))}
    key = json.dumps({"v": TOY_VERSION, "cfg": hf_config, "steps": steps, "lr": lr, "batch": batch, "seed": seed},
                     sort_keys=True)
    target = cache_root(cache_dir) / f"toy-{hashlib.sha256(key.encode()).hexdigest()[:12]}"
    target.parent.mkdir(parents=True, exist_ok=True)
    # Several processes (the ranks of a run, parallel runs) may ask at once: one builds, the others wait.
    with open(target.parent / f"{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / "config.json").is_file():
            return target
        log(f"pretraining the toy model ({steps} steps, once; cached in {target})")
        model = pretrain(hf_config, tokenizer, steps=steps, lr=lr, batch=batch, seed=seed)
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".tmp-toy-"))
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        os.rename(tmp, target)  # atomic: a killed build leaves only a .tmp directory
    return target
