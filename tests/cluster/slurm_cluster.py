"""A throwaway Slurm on this machine for the `slurm` tests: munged, slurmctld and two slurmd ("n1",
"n2", both at 127.0.0.1 on ports of their own), every file under one temporary directory, each
daemon in the foreground as a child of the test process and stopped by its PID.

Nothing outside the directory is touched: munged gets its own key and socket, the Slurm commands
find the cluster through SLURM_CONF, and the node names need no hosts-file entry (Slurm reaches a
node by its NodeAddr; slurm/env.sh gives the ranks the first node's NodeAddr as MASTER_ADDR).
Test infrastructure only.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

NODES = ("n1", "n2")
DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "scontrol", "squeue", "sinfo", "scancel")


def missing() -> str | None:
    """Why the cluster cannot start here (None: it can)."""
    absent = [d for d in DAEMONS if shutil.which(d) is None]
    if absent:
        return f"Slurm/munge not installed ({', '.join(absent)} missing): apt-get install slurm-wlm munge"
    if os.geteuid() != 0:
        return "the local Slurm runs its daemons as root (SlurmdUser=root): run the slurm tests as root, e.g. in CI"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    def __init__(self, root: Path):
        self.root = root
        self.conf = root / "slurm.conf"
        self.procs: dict[str, subprocess.Popen] = {}
        # not the variables of a Slurm job these tests might run in: they would steer sbatch/srun
        clean = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_", "SRUN_", "SALLOC_"))}
        self.env = {**clean, "SLURM_CONF": str(self.conf)}

    # ---- start / stop ---------------------------------------------------------------------------
    def start(self, timeout: float = 60) -> Cluster:
        (self.root / "state").mkdir(parents=True, exist_ok=True)
        key = self.root / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        sock = self.root / "munge.socket"
        self._spawn("munged", ["munged", "-F", "--force", f"--socket={sock}", f"--key-file={key}",
                               f"--pid-file={self.root}/munged.pid", f"--log-file={self.root}/munged.log",
                               f"--seed-file={self.root}/munged.seed"])
        self._wait(sock.exists, timeout, "munged socket")
        self.conf.write_text(self._slurm_conf(sock))
        self._spawn("slurmctld", ["slurmctld", "-D", "-i"])
        for node in NODES:
            self._spawn(f"slurmd-{node}", ["slurmd", "-D", "-N", node])
        self._wait(lambda: self.idle_nodes() == set(NODES), timeout, "two idle nodes")
        return self

    def stop(self) -> None:
        try:
            if self.procs.get("slurmctld") and self.procs["slurmctld"].poll() is None:
                # jobs left by a failed test: their processes hang off slurmstepd, which outlives slurmd
                subprocess.run(["scancel", "--partition=debug"], env=self.env, capture_output=True, timeout=60)
                self._wait(lambda: not self.run("squeue", "-h"), 60, "empty queue")
        finally:
            for name in reversed(list(self.procs)):  # node daemons first, munged last
                proc = self.procs[name]
                if proc.poll() is None:
                    proc.terminate()
                    try:
                        proc.wait(timeout=20)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        proc.wait()

    def _spawn(self, name: str, cmd: list[str]) -> None:
        log = open(self.root / f"{name}.out", "wb")
        self.procs[name] = subprocess.Popen(cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL)

    def _wait(self, ready, timeout: float, what: str) -> None:
        deadline = time.time() + timeout
        while not ready():
            dead = [n for n, p in self.procs.items() if p.poll() is not None]
            if dead or time.time() > deadline:
                raise RuntimeError(f"local Slurm: no {what} ({'died: ' + ', '.join(dead) if dead else 'timeout'}); "
                                   f"logs:\n{self.logs()}")
            time.sleep(0.5)

    def logs(self, tail: int = 3000) -> str:
        files = sorted(self.root.glob("*.out")) + sorted(self.root.glob("*.log"))
        return "\n".join(f"--- {f.name}\n{f.read_text(errors='replace')[-tail:]}" for f in files)

    def _slurm_conf(self, sock: Path) -> str:
        host = socket.gethostname().split(".")[0]  # slurmctld refuses to start on a host it is not named for
        r = self.root
        nodes = "\n".join(f"NodeName={n} NodeAddr=127.0.0.1 Port={free_port()} CPUs=2 RealMemory=1000 State=UNKNOWN"
                          for n in NODES)
        return f"""\
ClusterName=harmonytest
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={sock}
StateSaveLocation={r}/state
SlurmdSpoolDir={r}/spool-%n
SlurmctldPidFile={r}/slurmctld.pid
SlurmdPidFile={r}/slurmd-%n.pid
SlurmctldLogFile={r}/slurmctld.log
SlurmdLogFile={r}/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
SlurmdParameters=config_overrides
KillWait=10
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
{nodes}
PartitionName=debug Nodes={','.join(NODES)} Default=YES MaxTime=INFINITE State=UP
"""

    # ---- the commands the tests use -------------------------------------------------------------
    def run(self, *cmd: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> str:
        proc = subprocess.run(cmd, env=env or self.env, cwd=cwd, capture_output=True, text=True, timeout=60)
        if proc.returncode:
            raise RuntimeError(f"{' '.join(cmd)} failed: {proc.stderr.strip()}")
        return proc.stdout

    def idle_nodes(self) -> set[str]:
        out = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %t"], env=self.env, capture_output=True, text=True)
        return {line.split()[0] for line in out.stdout.splitlines() if line.split()[1:] == ["idle"]}

    def sbatch(self, args: list[str], cwd: Path, env: dict[str, str]) -> str:
        """Submit; env is exported to the job (as a user's shell would be) on top of the cluster's."""
        return self.run("sbatch", "--parsable", *args, cwd=cwd, env={**self.env, **env}).strip().split(";")[0]

    def job(self, job_id: str) -> dict[str, str]:
        out = self.run("scontrol", "show", "job", "-o", job_id)
        return dict(f.split("=", 1) for f in out.split() if "=" in f)
