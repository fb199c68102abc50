"""Every gallery example runs in fast mode and writes its figures."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples").glob("plot_*.py"))


@pytest.mark.parametrize("script", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_runs_in_fast_mode(script, tmp_path):
    env = dict(os.environ, DEEPBLUR_FAST="1", DEEPBLUR_OUTPUT=str(tmp_path),
               MPLBACKEND="Agg")
    proc = subprocess.run([sys.executable, str(script)], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    figures = list(tmp_path.glob("*.png"))
    assert figures, "the example saved no figure"
    assert all(f.stat().st_size > 1000 for f in figures)


def test_readme_test_command_is_what_ci_runs():
    """.ci/run must run exactly the test command README.md gives."""
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    marker = "<!-- test-command -->"
    block = readme.split(marker)[1]
    command = block.split("```bash")[1].split("```")[0].strip()
    assert command and command in ci
