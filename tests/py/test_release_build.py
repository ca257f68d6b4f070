"""The release build's scripts (scripts/release.sh, build-pgo.sh, pgo-train.sh) do not rot: the
full build takes minutes, so here they pass shellcheck (when installed) and answer --help, and
the training (the part that knows mcplb's config and mcplb-load's options) runs for real, a
second a step, against the test build: every step must get answered calls and mcplb must
exit cleanly on SIGTERM, as the instrumented builds must to write their profiles."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from conftest import REPO
from deploy_support import load_bin, mcplb_bin

SCRIPTS = [REPO / "scripts" / n for n in ("release.sh", "build-pgo.sh", "pgo-train.sh")]


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_release_script_parses_and_answers_help(script):
    syntax = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, timeout=30)
    assert syntax.returncode == 0, syntax.stderr
    if shutil.which("shellcheck"):
        lint = subprocess.run(["shellcheck", "-x", str(script)], cwd=REPO, capture_output=True, text=True, timeout=60)
        assert lint.returncode == 0, lint.stdout
    # --help runs nothing (no build, no apt-get) and prints the header.
    out = subprocess.run(["bash", str(script), "--help"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert "Settings (environment)" in out.stdout


def test_release_script_refuses_arguments():
    out = subprocess.run(["bash", str(SCRIPTS[0]), "--plain"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 2
    assert "environment variables" in out.stderr


@pytest.mark.timeout(120)
def test_training_runs_against_a_build():
    env = dict(os.environ, TRAIN_SECS="1", LOAD_BIN=load_bin())
    out = subprocess.run(
        ["bash", str(REPO / "scripts" / "pgo-train.sh"), mcplb_bin()],
        env=env, capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    trained = [line for line in out.stderr.splitlines() if "trained:" in line]
    assert len(trained) == 19, out.stderr
    for line in trained:
        answered = int(line.split(": ")[-1].split(" calls answered")[0])
        assert answered > 0, line
