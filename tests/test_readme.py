"""The README's two commands: the test command is what CI runs; the main command really works."""

import os
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def readme_command(marker: str) -> str:
    text = (ROOT / "README.md").read_text()
    return re.search(rf"<!-- {marker} -->\s*```bash\n(.+?)\n```", text, re.S).group(1)


def test_ci_runs_the_readme_test_command():
    assert "pytest" in readme_command("test-command")
    assert "test-command" in (ROOT / ".ci" / "run").read_text()


@pytest.mark.slow
def test_readme_main_command(tmp_path):
    """Everything after the install step, in a temp dir, with this environment's ltrec."""
    cmd = readme_command("main-command")
    after_install = cmd.split("pip install -e . && ", 1)[1]
    env = {**os.environ, "LTREC_CACHE_DIR": str(tmp_path / "cache")}
    result = subprocess.run(["bash", "-c", after_install], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "tail" in result.stdout and "full ranking" in result.stdout
