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
