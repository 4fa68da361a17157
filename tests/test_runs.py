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
