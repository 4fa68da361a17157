"""The `stackwise` command and the Makefile's user-facing targets: help, clear errors, exit codes."""
from conftest import ROOT, exe, run_cmd


def test_help_lists_subcommands():
    r = run_cmd([exe('stackwise'), '--help'])
    assert r.returncode == 0
    for sub in ('hardware', 'model', 'experiment', 'runs', 'docs', 'report', 'readme', 'train'):
        assert sub in r.stdout


def test_missing_experiment_is_a_clear_error():
    r = run_cmd([exe('stackwise'), 'experiment', 'missing'])
    assert r.returncode == 1
    assert r.stderr.startswith("stackwise: error: no experiment 'missing'")
    assert 'Available experiments: ' in r.stderr and 'hardware' in r.stderr
    assert 'Traceback' not in r.stderr


def test_make_experiment_missing_fails():
    r = run_cmd(['make', '--no-print-directory', 'experiment', 'NB=missing'])
    assert r.returncode != 0
    assert "no experiment 'missing'" in r.stderr


def test_make_experiment_without_nb_explains():
    r = run_cmd(['make', '--no-print-directory', 'experiment'])
    assert r.returncode != 0
    assert 'make experiment needs NB=<name>' in r.stdout


def test_unknown_parameter_is_refused_before_running(tmp_path):
    r = run_cmd([exe('stackwise'), 'experiment', 'hardware', 'sise=512', '--results', str(tmp_path)])
    assert r.returncode == 1
    assert "has no parameter 'sise'" in r.stderr and 'size=' in r.stderr
    assert not any(tmp_path.iterdir()), 'no run folder for a refused experiment'


def test_hardware_prints_measured_cpu_peaks():
    r = run_cmd([exe('stackwise'), 'hardware', '--device', 'cpu', '--dtypes', 'fp32'])
    assert r.returncode == 0, r.stderr
    assert 'type=cpu' in r.stdout
    line = [l for l in r.stdout.splitlines() if l.strip().startswith('fp32:')][0]
    assert float(line.split()[1]) > 0 and '(measured)' in line


def test_runs_lists_a_run(hardware_results):
    r = run_cmd([exe('stackwise'), 'runs', '--results', str(hardware_results)])
    assert r.returncode == 0 and 'hardware' in r.stdout and 'complete' in r.stdout


import pytest


@pytest.mark.parametrize('args,message', [
    (['train', '--batch-size', '0'], 'argument --batch-size: 0 is out of range: it must be >= 1'),
    (['train', '--seq-len', 'abc'], "argument --seq-len: 'abc' is not a whole number: e.g. 16"),
    (['train', '--val-fraction', '1.5'], 'argument --val-fraction: 1.5 is out of range: it must be >= 0 and <= 0.99'),
    (['plan', '--config', 'decoder/llama_family/70b', '--mfu', '1.5'], 'argument --mfu: 1.5 is out of range: it must be > 0 and <= 1'),
    (['plan', '--config', 'decoder/llama_family/70b', '--batch-size', '-2'], 'argument --batch-size: -2 is out of range'),
    (['bench', '--max-steps', '0'], 'argument --max-steps/--max_steps: 0 is out of range'),
    (['evaluate', '--model', 'x', '--tasks', 'sst2', '--limit', '0'], 'argument --limit: 0 is out of range'),
    (['evaluate', '--model', 'x', '--tasks', 'sst2', '--finetune', '--lr', '0'], 'argument --lr: 0 is out of range: it must be > 0'),
])
def test_flags_are_typed_and_ranged(capsys, args, message):
    "A count or a fraction out of range is refused by the parser in one line, before anything runs."
    from stackwise.cli import main
    with pytest.raises(SystemExit) as e: main(args)
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_depth_as_time_shows_progress(tmp_path, capsys):
    "The depth-as-time trainer draws a bar over every stage's steps (progress=True, the default)."
    from stackwise.cli import main
    assert main(['train', '--mode', 'layerwise', '--seq-len', '16', '--batch-size', '4', '--results', str(tmp_path), 'max_steps=3', 'mfu=false',
                 'tensorboard=false', 'model.n_layers=2', 'model.d_model=32', 'model.n_heads=2']) == 0
    err = capsys.readouterr().err.replace('\r', '\n')
    assert any('layerwise left2right: 100%' in l and '6/6' in l for l in err.splitlines()), err[-500:]
