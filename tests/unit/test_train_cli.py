"""`harmony train` fails on a broken config or layout before any process or model exists."""

import pytest

from harmony_mcore import train_cli
from harmony_mcore.config import load_config


@pytest.fixture(autouse=True)
def _no_launch(monkeypatch, tmp_path):
    monkeypatch.setenv("HARMONY_CACHE", str(tmp_path / "cache"))
    for var in ("RANK", "WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)

    def fail(*a, **k):
        raise AssertionError("nothing may be launched or built for a broken config")

    monkeypatch.setattr(train_cli, "launch", fail)
    monkeypatch.setattr(train_cli, "resolve_model", fail, raising=False)
    import harmony_mcore.trainer as trainer

    monkeypatch.setattr(trainer, "resolve_model", fail)


@pytest.mark.parametrize("argv, fix", [
    (["cpu", "parallel.tp=3"], "use tp in [1, 2]"),  # 4 heads / 2 KV heads do not split over TP=3
    (["cpu", "--nproc", "3"], "parallel.tp*parallel.pp"),
    (["cpu", "model.dtype=bf16"], "model.dtype=fp32"),
    (["cpu", "parallel.micro_batch_size=48"], "micro_batch_size"),
    (["cpu", "algorithm.lr=0"], "algorithm.lr must be > 0"),
    (["no-such-preset"], "unknown config"),
])
def test_broken_configs_fail_before_launch(argv, fix, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default output_dir, runs/cpu, is relative
    assert train_cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("harmony train: ") and fix in err, err
    assert not (tmp_path / "runs").exists()  # nothing written: not even the run directory's lock


def test_print_config_and_default_preset(capsys):
    assert train_cli.main(["--print-config", "seed=7"]) == 0  # no config given: the CPU default
    out = capsys.readouterr().out
    assert "name: cpu" in out and "seed: 7" in out


def test_split_args_and_nproc():
    assert train_cli.split_args([]) == []
    assert train_cli.split_args(["seed=3"]) == ["cpu", "seed=3"]
    assert train_cli.split_args(["qwen3-4b-math500", "seed=3"]) == ["qwen3-4b-math500", "seed=3"]
    assert train_cli.split_args(["--nproc", "3", "seed=2"]) == ["cpu", "--nproc", "3", "seed=2"]
    assert train_cli.nproc_for(load_config("cpu"), None) == 2
    assert train_cli.nproc_for(load_config("cpu", ["parallel=cpu-pp2"]), None) == 2
    assert train_cli.nproc_for(load_config("cpu"), 4) == 4
