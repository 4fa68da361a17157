"""Run folders survive crashes: a killed run leaves whole files and reads back as incomplete."""
import signal, subprocess, sys, textwrap

import pandas as pd

from stackwise import runs


def test_killed_run_leaves_whole_files(tmp_path):
    script = textwrap.dedent(f"""
        import os, signal
        from stackwise.runs import Run, start_run
        run = start_run('crash', dict(steps=100), root={str(tmp_path)!r})
        run.flush_every = 10
        for step in range(25): run.log_step(step=step, loss=1.0 / (step + 1))
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    p = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True)
    assert p.returncode == -signal.SIGKILL
    (path,) = runs.list_runs('crash', tmp_path)
    assert runs.run_status(path) == 'incomplete'
    assert not (path/'metrics.json').exists()
    assert pd.read_csv(path/'metrics.csv').step.tolist() == list(range(20)), 'flushed rows whole, unflushed ones lost'
    assert sorted(p.name for p in path.iterdir()) == ['config.yaml', 'env.json', 'metrics.csv']


def test_reopened_run_appends_steps(tmp_path):
    run = runs.start_run('resume', root=tmp_path)
    run.log_step(step=0, loss=2.0); run.flush()
    again = runs.start_run('resume', path=run.path)
    again.log_step(step=1, loss=1.0); again.finish(loss=1.0)
    assert pd.read_csv(run.path/'metrics.csv').step.tolist() == [0, 1]
    assert runs.load_runs(root=tmp_path)['metrics.loss'].tolist() == [1.0]


def test_bad_experiment_name(tmp_path):
    import pytest
    from stackwise.core import StackwiseError
    with pytest.raises(StackwiseError, match='invalid experiment name'):
        runs.start_run('../../etc', root=tmp_path)


def test_unwritable_results_are_one_line(tmp_path, monkeypatch):
    "A read-only or full results folder (root ignores permissions, so the OS error is simulated): named, with the fix."
    import errno, pathlib, pytest
    from stackwise.core import StackwiseError
    real = pathlib.Path.mkdir
    def refuse(self, *a, **k):
        if str(self).startswith(str(tmp_path/'ro')): raise OSError(errno.EROFS, 'Read-only file system', str(self))
        return real(self, *a, **k)
    monkeypatch.setattr(pathlib.Path, 'mkdir', refuse)
    with pytest.raises(StackwiseError, match='cannot write the run folder .*Read-only file system: free space, fix the permissions, or write elsewhere'):
        runs.start_run('t', {}, root=tmp_path/'ro')


def test_full_disk_while_checkpointing_is_one_line(tmp_path, monkeypatch):
    "torch.save reports a full disk as a RuntimeError; the checkpoint is refused by name, its partial folder removed."
    import pytest, torch
    from stackwise.core import StackwiseError
    from stackwise.train import checkpoint
    def full(*a, **k): raise RuntimeError('[enforce fail at inline_container.cc:672] . unexpected pos 204416 vs 204368')
    monkeypatch.setattr(checkpoint.torch, 'save', full)
    with pytest.raises(StackwiseError, match='no space left to write checkpoint .*step-000001.*the earlier checkpoints are intact'):
        checkpoint.save_checkpoint(tmp_path, 'step-000001', torch.nn.Linear(2, 2), {}, {})
    assert list(tmp_path.iterdir()) == []


def test_a_run_killed_before_its_first_checkpoint_says_so(tmp_path):
    "--resume of a folder with no checkpoint: what happened and what to do, not 'pass a run folder'."
    import pytest
    from stackwise.core import StackwiseError
    from stackwise.train.launch import train_run
    tiny = ['max_steps=2', 'progress=false', 'mfu=false', 'tensorboard=false', 'model.n_layers=1', 'model.d_model=32', 'model.n_heads=2']
    run, _ = train_run(results=tmp_path, seq_len=16, batch_size=4, overrides=tiny)
    import shutil; shutil.rmtree(run.path/'checkpoints')
    with pytest.raises(StackwiseError, match='has no checkpoint yet .*train it again without resume'):
        train_run(resume=run.path)
