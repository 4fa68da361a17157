"""Nothing lost: `stackwise train` (end to end and depth-as-time) stopped by Ctrl-C, SIGTERM or `kill -9`
at a random step, then resumed with `--resume RUN_DIR` alone, ends with the same weights as a run
that never stopped; a second process on a live run folder is refused; a dead run leaves error.txt."""
import os, random, signal, subprocess, sys, time
from pathlib import Path

import pandas as pd
import pytest
import torch

from conftest import ROOT

ENV = {**os.environ, 'PYTHONHASHSEED': '0', 'OMP_NUM_THREADS': '1', 'HF_HUB_OFFLINE': '1', 'HF_DATASETS_OFFLINE': '1'}
FLAGS = ['--seq-len', '16', '--batch-size', '4']  # flags before the KEY=VALUE words
TINY = ['warmup_steps=2', 'progress=false', 'mfu=false', 'tensorboard=false', 'model.n_layers=2', 'model.d_model=32', 'model.n_heads=2']
E2E = [*FLAGS, 'max_steps=3000', *TINY]
DEPTH = ['--mode', 'layerwise', *FLAGS, 'max_steps=2500', *TINY]  # two stages of 2500 steps


def cli(*args) -> list[str]:
    return [sys.executable, '-m', 'stackwise.cli', 'train', *map(str, args)]


def run(*args, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run(cli(*args), cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=timeout)


def the_run(results: Path) -> Path:
    (folder,) = (results/'train').iterdir()
    return folder


def started(results: Path, proc, timeout=120) -> Path:
    "The run folder, once its trainer has begun to fit (config.yaml holds the config hash)."
    t0 = time.time()
    while time.time() - t0 < timeout:
        assert proc.poll() is None, f'the run ended early: {proc.communicate()[1][-2000:]}'
        runs = list((results/'train').glob('*/config.yaml')) if (results/'train').exists() else []
        if runs and 'config_hash' in runs[0].read_text(): return runs[0].parent
        time.sleep(0.05)
    raise AssertionError('the run did not start')


def weights(folder: Path) -> dict:
    "Every tensor the finished run holds, as raw bytes: the final checkpoint, and a depth-as-time run's unit files."
    from safetensors.torch import load_file
    ck = folder/'checkpoints'
    files = [ck/(ck/'final').read_text().strip() if (ck/'final').exists() else ck/(ck/'latest').read_text().strip()]
    out = {}
    for f in [files[0]/'model.safetensors', *sorted((folder/'units').glob('*.safetensors'))]:
        out.update({f'{f.name}:{k}': v.contiguous().view(torch.uint8).numpy().tobytes() for k, v in load_file(str(f)).items()})
    return out


@pytest.fixture(scope='module')
def reference(tmp_path_factory):
    "Runs that never stopped, one per trainer."
    out = {}
    for name, args in (('e2e', E2E), ('depth', DEPTH)):
        results = tmp_path_factory.mktemp(f'ref-{name}')
        r = run('--results', results, *args)
        assert r.returncode == 0, r.stderr[-2000:]
        out[name] = the_run(results)
    return out


@pytest.mark.parametrize('trainer,sig', [('e2e', signal.SIGINT), ('depth', signal.SIGTERM)])
def test_signal_saves_and_resume_is_identical(reference, tmp_path, trainer, sig):
    "Ctrl-C (e2e) or SIGTERM (depth-as-time) at a random moment: a checkpoint at that step, exit 130/143, error.txt; a second process is refused while it runs; --resume alone finishes it bit for bit."
    args = E2E if trainer == 'e2e' else DEPTH
    proc = subprocess.Popen(cli('--results', tmp_path, *args), cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    folder = started(tmp_path, proc)
    second = run('--resume', folder)
    assert second.returncode == 1 and 'is in use (pid' in second.stderr, second.stderr[-1000:]
    time.sleep(random.uniform(0.2, 1.5))
    assert proc.poll() is None and not (folder/'metrics.json').exists(), 'the run ended before the signal: lengthen it'
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == (130 if sig == signal.SIGINT else 143), err[-2000:]
    assert f'stackwise: interrupted: {sig.name} at step' in err and 'saved: resume with' in err, err[-2000:]
    assert (folder/'error.txt').read_text().startswith('Interrupted: ') and not (folder/'metrics.json').exists()
    r = run('--resume', folder)  # the run's own arguments, from its config.yaml
    assert r.returncode == 0, r.stderr[-2000:]
    assert not (folder/'error.txt').exists() and (folder/'metrics.json').exists()
    assert weights(folder) == weights(reference[trainer]), f'weights differ after {err.strip().splitlines()[-1]}'
    a, b = (pd.read_csv(f/'metrics.csv') for f in (reference[trainer], folder))
    assert a.step.tolist() == b.step.tolist() and a.loss.fillna(-1).tolist() == b.loss.fillna(-1).tolist()


@pytest.mark.parametrize('trainer', ['e2e', 'depth'])
def test_kill9_after_a_timed_checkpoint_resumes_identically(reference, tmp_path, trainer):
    "kill -9 at a random step after the first time-based checkpoint (checkpoint_seconds=0.3 here; 600 by default): --resume ends with the same weights."
    args = [*(E2E if trainer == 'e2e' else DEPTH), 'checkpoint_seconds=0.3']  # outside the hash: the same recipe as the reference
    proc = subprocess.Popen(cli('--results', tmp_path, *args), cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    folder = started(tmp_path, proc)
    while not (folder/'checkpoints'/'latest').exists():
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        time.sleep(0.02)
    time.sleep(random.uniform(0.0, 1.0))
    proc.kill(); proc.communicate(timeout=60)
    assert proc.returncode == -9
    assert not (folder/'metrics.json').exists(), 'the run ended before the kill: lengthen it'
    r = run('--resume', folder)
    assert r.returncode == 0, r.stderr[-2000:]
    assert weights(folder) == weights(reference[trainer])


def test_resume_refusals(reference, tmp_path):
    "A missing folder, another flag, another hashed field: one line each, nothing written."
    r = run('--resume', tmp_path/'nope')
    assert r.returncode == 1 and 'no such run folder' in r.stderr and not (tmp_path/'nope').exists()
    ref = reference['e2e']
    r = run('--resume', ref, '--seq-len', '32')
    assert r.returncode == 1 and '--seq-len 32 (the run has 16)' in r.stderr, r.stderr[-1000:]
    r = run('--resume', ref, 'lr=1e-3')
    assert r.returncode == 1 and 'recipe.lr was 0.0003, now 0.001' in r.stderr, r.stderr[-1000:]
