"""CI runs the README's set-up: its install command in a fresh venv, then its test command."""

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_ci_runs_the_readme_commands():
    readme = (REPO / "README.md").read_text()
    block = re.search(r"## Set-up on a fresh machine.*?```bash\n(.*?)```", readme, re.S).group(1)
    install, test = [line.split("  #")[0].strip() for line in block.strip().splitlines()]
    assert install.startswith("python3 -m venv .venv && . .venv/bin/activate && ")  # not the system Python
    assert install.endswith(" && harmony train")
    ci = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()
          if line.strip() and not line.lstrip().startswith("#")]
    assert ci[-2:] == [install.removesuffix(" && harmony train"), test]
    assert "rm -rf .venv" in ci  # fresh each time
