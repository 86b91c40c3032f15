"""The README is the front door: its support table is generated, its commands are real."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_support_table_is_generated_from_registry() -> None:
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_support_table.py"),
                          "--check"], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_ci_runs_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    command = "pip install -e '.[test]' && pytest"
    assert re.search(rf"^{re.escape(command)}(\s|$)", readme, re.M), "README's test command"
    assert re.search(rf"^{re.escape(command)}\s*$", ci, re.M), "CI runs the README's command"
    assert re.search(r"^pip install -e \. && caffe2torch demo(\s|$)", readme, re.M)


def test_readme_cpu_torch_line_and_user_story() -> None:
    """A CPU-only install that really is (a plain `pip install torch` pulls CUDA on Linux), the
    timm/Cadene recipes, and the commands behind the items users tripped over."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert re.search(r"^pip install torch --index-url https://download\.pytorch\.org/whl/cpu$",
                     readme, re.M)
    for needle in ("--fold-input", "legacy_seresnet50", "pretrainedmodels.se_resnet50",
                   "load_senet", "--random-weights", "--static-batch", "se_resnet_50.py",
                   "caffe2torch -V", "[safetensors]"):
        assert needle in readme, needle
