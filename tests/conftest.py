"""Shared fixtures: the checkout, the venv's executables, and a scratch results folder holding one
real (tiny) run of the hardware experiment."""
import os, shutil, subprocess, sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def exe(name: str) -> str:
    "A console script of this environment (stackwise, papermill, ...)."
    p = BIN/name
    if not p.exists(): pytest.skip(f'{name} is not installed in {BIN}')
    return str(p)


def run_cmd(args, env=None, cwd=ROOT, timeout=600):
    "Run a command, returning the CompletedProcess with text output."
    return subprocess.run(args, cwd=cwd, env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    "Keep the peak-FLOP/s cache of the tests away from the user's."
    monkeypatch.setenv('STACKWISE_CACHE', str(tmp_path_factory.getbasetemp()/'cache'))


@pytest.fixture(scope='session')
def hardware_results(tmp_path_factory):
    "A results folder with one complete, tiny hardware run."
    from stackwise.report.experiments import run_experiment
    results = tmp_path_factory.mktemp('results')
    run_experiment('hardware', dict(size=256, min_time=0.02), results=results, root=ROOT, progress=False)
    return results
