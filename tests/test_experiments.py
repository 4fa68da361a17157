"""Experiments run through papermill into run folders; failures never leave a metrics.json."""
import json, sys

import pandas as pd

from conftest import ROOT, exe, run_cmd
from stackwise import runs


def test_runner_writes_a_complete_run_folder(hardware_results):
    (path,) = runs.list_runs('hardware', hardware_results)
    assert {p.name for p in path.iterdir()} >= {'config.yaml', 'env.json', 'metrics.csv', 'metrics.json', 'run.ipynb', 'charts'}
    assert not list(path.glob('.*')), 'no temporary files left behind'
    metrics = json.loads((path/'metrics.json').read_text())
    assert set(metrics['peak_tflops']) == {'fp32', 'bf16'} and all(v > 0 for v in metrics['peak_tflops'].values())
    steps = pd.read_csv(path/'metrics.csv')
    assert steps.n.tolist() == [128, 256, 128, 256]
    # the final figures are the best of the per-size rows, not typed in
    assert metrics['peak_tflops']['fp32'] == steps[steps.dtype == 'fp32'].tflops.max()
    assert (path/'charts'/'matmul_tflops.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    env = json.loads((path/'env.json').read_text())
    assert env['packages']['torch'] and env['device']['type'] == 'cpu'


def test_papermill_cli_with_the_venv_kernel(tmp_path):
    out = tmp_path/'out.ipynb'
    r = run_cmd([exe('papermill'), 'nbs/experiments/hardware.ipynb', str(out), '-p', 'size', '128', '-p', 'min_time', '0.01'],
                env=dict(STACKWISE_RESULTS=str(tmp_path/'results')))
    assert r.returncode == 0, r.stderr[-2000:]
    (path,) = runs.list_runs('hardware', tmp_path/'results')
    assert runs.run_status(path) == 'complete'
    assert 'size: 128' in (path/'config.yaml').read_text()
    # the kernel was this environment's: its launcher lives under this interpreter's prefix
    kernel_argv = json.loads((path/'env.json').read_text())['argv']
    assert kernel_argv[0].startswith(sys.prefix), kernel_argv


def test_papermill_run_that_raises_is_recorded_as_failed(tmp_path):
    "papermill run directly (not through `stackwise experiment`): a failing cell still leaves error.txt, so the run is failed, not incomplete."
    r = run_cmd([exe('papermill'), 'nbs/experiments/hardware.ipynb', str(tmp_path/'out.ipynb'), '-p', 'dtypes', 'int4'],
                env=dict(STACKWISE_RESULTS=str(tmp_path/'results')))
    assert r.returncode != 0
    assert 'unknown dtype' in r.stderr  # the traceback is still shown and the cell still fails
    (path,) = runs.list_runs('hardware', tmp_path/'results')
    assert not (path/'metrics.json').exists()
    assert runs.run_status(path) == 'failed'
    err = (path/'error.txt').read_text()
    assert err.startswith('StackwiseError: unknown dtype') and 'Traceback' in err


def test_papermill_refuses_an_unknown_parameter(tmp_path):
    "papermill alone only warns about `-p sizee 512` and runs the defaults; the notebook's setup refuses it before any run folder exists."
    r = run_cmd([exe('papermill'), 'nbs/experiments/hardware.ipynb', str(tmp_path/'out.ipynb'), '-p', 'sizee', '512'],
                env=dict(STACKWISE_RESULTS=str(tmp_path/'results')))
    assert r.returncode != 0
    assert "experiment 'hardware' has no parameter 'sizee'" in r.stderr and 'size=1024' in r.stderr and 'min_time=0.25' in r.stderr
    assert not (tmp_path/'results').exists()


def test_stackwise_experiment_that_raises(tmp_path):
    r = run_cmd([exe('stackwise'), 'experiment', 'hardware', 'dtypes=int4', '--results', str(tmp_path)])
    assert r.returncode == 1
    assert "experiment 'hardware' failed in cell" in r.stderr and 'unknown dtype' in r.stderr
    (path,) = runs.list_runs('hardware', tmp_path)
    assert runs.run_status(path) == 'failed'
    assert not (path/'metrics.json').exists() and (path/'run.ipynb').exists()
    assert 'unknown dtype' in (path/'error.txt').read_text()
    assert runs.load_runs(root=tmp_path).empty and len(runs.load_runs(root=tmp_path, status=None)) == 1


def test_default_experiments_are_a_registry_of_valid_runs():
    "`make report` runs every entry of DEFAULT_EXPERIMENTS: each is an experiment notebook and its overrides are its parameters."
    from stackwise.report.experiments import DEFAULT_EXPERIMENTS, check_params, list_experiments
    assert {'hardware', 'scaling', 'depth_time'} <= set(DEFAULT_EXPERIMENTS)
    for name, params in DEFAULT_EXPERIMENTS.items():
        assert name in list_experiments(ROOT)
        assert check_params(name, dict(params), ROOT) == params


def test_depth_time_every_seed_verdicts_and_reuse(tmp_path):
    """Every plan at every seed gives each plan a paired verdict against e2e, its fine-tuned downstream score too (plan_finetune, here on a
    local SST-2 of 48 rows); a second run with reuse= reads the finished runs back instead of training."""
    data = tmp_path/'data'/'sst2'; data.mkdir(parents=True)
    rows = [(f'{w} film {i}', int(w == 'good')) for i in range(24) for w in ('good', 'bad')]
    for split in ('train', 'dev'): (data/f'{split}.tsv').write_text('sentence\tlabel\n' + ''.join(f'{s}\t{l}\n' for s, l in rows))
    res = tmp_path/'results'
    args = [exe('stackwise'), 'experiment', '--results', str(res), 'depth_time', 'plans=e2e:left2right,layerwise:left2right', 'seeds=0,1',
            'every_seed=true', 'objective=clm', 'data=synthetic', f'data_root={tmp_path/"data"}', 'e2e_steps=6', 'eval_every=3', 'eval_batches=1',
            "causal_plan=''", "plan_eval_tasks=''", 'plan_finetune=sst2', 'finetune_steps=3']
    r = run_cmd(args)
    assert r.returncode == 0, r.stderr[-2000:]
    (first,) = runs.list_runs('depth_time', res)
    m = json.loads((first/'metrics.json').read_text())
    v = m['verdicts']['layerwise:left2right']
    assert v['seeds'] == 2 and v['excess_lo'] <= v['excess'] <= v['excess_hi'] and v['verdict']
    assert {'units_share', 'head_share', 'cache_fill_share'} <= set(v) and m['every_seed'] is True
    assert 0 <= v['sst2_ft_accuracy'] <= 1 and 0 <= v['sst2_ft_accuracy_e2e'] <= 1 and 'sst2_ft_accuracy_verdict' in v
    assert 'sst2_ft_accuracy' in m['plans']['e2e:left2right']
    saved = sorted(p.name for p in (first/'runs').glob('*.json'))
    assert len(saved) == 4
    r = run_cmd(args + [f'reuse={first}'])
    assert r.returncode == 0, r.stderr[-2000:]
    second = [p for p in runs.list_runs('depth_time', res) if p != first][0]
    m2 = json.loads((second/'metrics.json').read_text())
    assert m2['verdicts']['layerwise:left2right']['excess'] == v['excess']  # the same runs, read back
    for name in saved:  # read back, not trained again: the same process time
        assert json.loads((second/'runs'/name).read_text())['process_s'] == json.loads((first/'runs'/name).read_text())['process_s']


def test_scaling_explicit_shapes_kaplan_lr_and_the_fit_with_an_irreducible_loss(tmp_path):
    "Explicit LxD shapes, Kaplan's learning-rate rule (lower for larger N) and the E + a·N^-alpha fit beside Chinchilla's exponent; a bad shape is refused first."
    res = tmp_path/'results'
    base = [exe('stackwise'), 'experiment', '--results', str(res), 'scaling', 'objectives=clm', 'plans=e2e', 'seeds=0', 'data=synthetic',
            'allocation=chinchilla', 'tokens_per_param=1', 'lr_rule=kaplan', 'eval_points=3', 'eval_batches=1', 'n_boot=50', 'workers=1']
    r = run_cmd(base + ['shapes=1x16,2x24'])
    assert r.returncode != 0 and "shape '2x24'" in r.stderr and 'head_dim=16' in r.stderr
    assert not list((res/'scaling').glob('*/metrics.json'))
    base[3] = str(res := tmp_path/'good')
    r = run_cmd(base + ['shapes=1x16,1x32,2x32,2x48', 'irreducible=true'])
    assert r.returncode == 0, r.stderr[-2000:]
    (path,) = runs.list_runs('scaling', res)
    m = json.loads((path/'metrics.json').read_text())
    laws = {e['law']: e for e in m['exponents']}
    assert {'L(N)', 'L(C)'} <= set(laws) and laws['L(N)']['reference_alpha'] == m['kaplan']['alpha_N']
    if 'L(N) = E + a N^-alpha' in laws: assert laws['L(N) = E + a N^-alpha']['reference'] == 'Chinchilla'
    assert m['range_N'] > 10
    steps = pd.read_csv(path/'metrics.csv').query("kind == 'run'").sort_values('N')
    assert steps.N.is_monotonic_increasing and len(steps) == 4
    cfg = (path/'config.yaml').read_text()
    assert 'lr_rule: kaplan' in cfg and "shapes: 1x16,1x32,2x32,2x48" in cfg

