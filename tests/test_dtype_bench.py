"""The dtype bench (nbs/52_bench.dtype_matrix.ipynb, nbs/experiments/dtype_matrix.ipynb): every seed 004 configuration sets what it
claims (read from the live objects, not from names), a failing cell never stops the matrix, fp16_naive's NaN is
caught and explained, classification accumulates exactly, the verdicts follow the data, and `stackwise bench`."""
import json, logging, math

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import ROOT, exe, run_cmd
from stackwise.bench import dtype_matrix as db, dtype_runs as dr, dtype_verdicts as dv
from stackwise.runs import run_status
from stackwise.train.loop import TrainConfig
from stackwise.train.trainer import Trainer

logging.getLogger('bitsandbytes').setLevel(logging.ERROR)
f32, f16, bf16 = torch.float32, torch.float16, torch.bfloat16
# seed 004's table, written out: weights, compute inside the forward, loss scaler, optimizer, its first moment's dtype
SEED_004 = {'fp32_true': (f32, f32, False, 'AdamW', f32),
            'amp_fp16': (f32, f16, True, 'AdamW', f32),
            'amp_bf16': (f32, bf16, False, 'AdamW', f32),
            'fp16_naive': (f16, f16, False, 'AdamW', f16),
            'bf16_pure': (bf16, bf16, False, 'AdamW', bf16),
            'amp_bf16_8bit': (f32, bf16, False, 'AdamW8bit', torch.uint8)}


@pytest.fixture(scope='module')
def data():
    return db.prepare_data('synthetic', tokenizer='bytes')


def small(**kw):
    return db.CellSpec(**{**dict(size='test', batch_size=4, max_steps=3, eval_batches=2, mfu=False), **kw})


@pytest.mark.parametrize('name', list(SEED_004))
def test_each_config_sets_what_it_claims(name, data):
    "Parameter dtypes, the dtype the MLP matmul ran in with autocast's state inside the forward, TF32 off, scaler, optimizer state."
    weights, compute, scaler, opt_name, moment = SEED_004[name]
    spec = small(dtype_config=name)
    torch.manual_seed(0)
    model = db.build_cell_model(spec, data)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True  # the config must switch them off
    train, _ = db.loaders(spec, data)
    t = Trainer(model, train, TrainConfig(max_steps=1, warmup_steps=1, dtype=db.dtype_config(name), progress=False, mfu=False))
    seen = {}
    def hook(mod, args, out):
        seen.update(out=out.dtype, autocast=torch.get_autocast_dtype('cpu') if torch.is_autocast_enabled('cpu') else None)
    t.module.transformer.h[0].mlp.c_fc.register_forward_hook(hook)
    t.train_step([next(iter(train))])
    assert {p.dtype for p in t.module.parameters()} == {weights}
    assert seen['out'] == compute
    assert seen['autocast'] == (compute if compute != weights else None)
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.get_float32_matmul_precision()) == (False, False, 'highest')
    assert isinstance(t.scaler, torch.amp.GradScaler) if scaler else t.scaler is None
    assert type(t.opt).__name__ == opt_name
    big = t.module.transformer.h[0].mlp.c_fc.weight
    assert big.numel() >= 4096  # bitsandbytes keeps tensors under 4,096 weights in 32-bit state
    st = t.opt.state[big]
    assert st['state1' if opt_name == 'AdamW8bit' else 'exp_avg'].dtype == moment
    if name == 'fp16_naive':  # torch's AdamW at its defaults: eps 1e-8, arithmetic in fp16 (not the fused fp32 kernel)
        assert t.opt.defaults['eps'] == 1e-8 and not t.opt.defaults['fused']


def test_recorded_observations_match(data, tmp_path):
    "What run_cell writes down as evidence is what the configuration did."
    rows = dr.run_matrix(dr.matrix_specs('A', list(SEED_004), size='test', batch_size=4, max_steps=2, eval_batches=1, mfu=False),
                         data, progress=False).set_index('dtype_config')
    for name, (weights, compute, scaler, opt_name, moment) in SEED_004.items():
        r = rows.loc[name]
        assert r.obs_params == str(weights)[6:]
        assert r.obs_autocast == (str(compute)[6:] if compute != weights else 'off')
        assert r.obs_optimizer.startswith(opt_name + ' ') and r.obs_scaler.startswith('on' if scaler else 'off')
        assert 'matmul=False cudnn=False fp32_precision=highest' == r.obs_tf32


def test_a_failing_cell_does_not_stop_the_matrix(data, tmp_path, monkeypatch):
    "One cell crashes mid-training (injected), another while its model is built: both recorded, every other cell completes."
    real = db.build_cell_model
    def build(spec, d):
        if (spec.scenario, spec.dtype_config) == ('E', 'bf16_pure'): raise MemoryError('no room for this model')
        return real(spec, d)
    monkeypatch.setattr(dr, 'build_cell_model', build)  # run_cell's own reference
    specs = dr.matrix_specs('A,C,E', 'fp32_true,amp_bf16,bf16_pure', size='test', batch_size=4, max_steps=3, eval_batches=1, mfu=False)
    table = dr.run_matrix(specs, data, tmp_path, inject_failure='C:amp_bf16', progress=False)
    st = table.set_index('cell').status
    assert st.pop('C-amp_bf16-s0') == 'error' and st.pop('E-bf16_pure-s0') == 'error'
    assert (st == 'completed').all() and len(st) == 7
    err = table.set_index('cell').error
    assert err['C-amp_bf16-s0'].startswith('RuntimeError: injected failure at step 1')
    assert err['E-bf16_pure-s0'] == 'MemoryError: no room for this model'
    assert 'Traceback' in (tmp_path/'cells'/'C-amp_bf16-s0'/'error.txt').read_text()
    for cell in st.index: assert run_status(tmp_path/'cells'/cell) == 'complete'
    assert run_status(tmp_path/'cells'/'C-amp_bf16-s0') == 'failed'
    assert not list((tmp_path/'cells').glob('.*')), 'no half-written cell folder'
    saved, _ = dr.load_matrix(tmp_path)
    assert saved.cell.tolist() == table.cell.tolist()


def test_fp16_naive_nan_is_caught_and_explained(data, tmp_path):
    row = dr.run_cell(small(model_arch='gpt2', task='clm', dtype_config='fp16_naive', max_steps=6), data, tmp_path/'A-fp16_naive-s0')
    assert (row['status'], row['first_nan_step'], row['steps_run']) == ('nonfinite', 2, 2)
    assert json.loads((tmp_path/'A-fp16_naive-s0'/'metrics.json').read_text())['status'] == 'nonfinite'
    probe = dr.fp16_adamw_probe(small(dtype_config='fp16_naive'), data)
    assert probe['eps_1e8_in_fp16'] == 0.0
    assert probe['v_zero'] > 0.05 and probe['nonfinite_naive'] == pytest.approx(probe['v_zero'], abs=0.02)  # m / 0 where v is 0
    assert probe['nonfinite_repaired_eps1e-4'] == 0.0 and probe['nonfinite_fused_eps1e-8'] == 0.0


@pytest.mark.parametrize('task', ['multi_cls', 'single_cls'])
@pytest.mark.parametrize('source', ['hf', 'stackwise'])
def test_classification_accumulation_is_exact(task, source, data):
    "4 micro-batches of 2 and 1 batch of 8 give the same step for BCE over labels and CE over examples."
    def after(B, accum):
        spec = small(task=task, model_source=source, batch_size=B, grad_accum=accum)
        torch.manual_seed(0)
        model = db.build_cell_model(spec, data)
        train = db.BlockLoader(data.cls_train, B, shuffle=False, collate=db.loaders(spec, data)[0].collate)
        t = Trainer(model, train, TrainConfig(max_steps=1, grad_accum=accum, warmup_steps=1, lr=1e-3, objective=task, progress=False, mfu=False))
        t.fit()
        return torch.cat([p.detach().flatten() for p in t.module.parameters()]), t.history[0]
    (w1, h1), (w4, h4) = after(8, 1), after(2, 4)
    assert h1['targets'] == h4['targets'] == (8 * len(data.label_names) if task == 'multi_cls' else 8)
    assert abs(h1['loss'] - h4['loss']) < 1e-6 and (w1 - w4).abs().max().item() < 1e-6


def _table(fp16_naive_status, val=None):
    rows = [dict(scenario=s, dtype_config=c, seed=0, status=fp16_naive_status.get(s, 'completed') if c == 'fp16_naive' else 'completed',
                 first_nan_step=2, diverged_step=None, val_loss=(val or {}).get((s, c), 1.0), mfu=None, batch_size=8, grad_accum=1)
            for s in 'ABCDEF' for c in db.DTYPE_CONFIGS]
    return pd.DataFrame(rows)


def test_verdicts_follow_the_data():
    v = lambda df, steps=None: dv.verdicts(df, steps).set_index('hypothesis').verdict
    assert v(_table({'C': 'nonfinite', 'D': 'nonfinite'}))['H1 loss-scale inversion'] == 'supported'
    assert v(_table({s: 'nonfinite' for s in 'CDEF'}))['H1 loss-scale inversion'] == 'refuted'
    assert v(_table({'C': 'error'}))['H1 loss-scale inversion'] == 'inconclusive'
    assert v(_table({}, {('C', 'bf16_pure'): 1.3}))['H3 bottleneck instability'] == 'supported'
    assert v(_table({}, {('C', 'bf16_pure'): 1.01}))['H3 bottleneck instability'] == 'refuted'  # within half the 5% tolerance
    assert v(_table({}, {('C', 'bf16_pure'): 1.04}))['H3 bottleneck instability'] == 'inconclusive'  # marginal on C only
    # H2 from per-step timings: B gains 2x from bf16_pure, A 1x, with a little noise -> supported; the reverse -> refuted
    rng = np.random.default_rng(0)
    def steps(gain_a, gain_b):
        out = []
        for s, g in (('A', gain_a), ('B', gain_b)):
            for c, speed in (('fp32_true', 1.0), ('bf16_pure', g)):
                out += [dict(scenario=s, dtype_config=c, seed=0, step=k, step_s=0.1 / speed * rng.uniform(0.95, 1.05)) for k in range(1, 31)]
        return pd.DataFrame(out)
    assert v(_table({}), steps(1.0, 2.0))['H2 architecture inversion'] == 'supported'
    assert v(_table({}), steps(2.0, 1.0))['H2 architecture inversion'] == 'refuted'
    assert v(_table({}), steps(1.5, 1.5))['H2 architecture inversion'] == 'inconclusive'
    # timed in turns: each repetition is a paired comparison, and those decide when given
    turns = pd.DataFrame([dict(rep=r, cell=f'{s}-{c}-s0', samples_per_s=100 * g * rng.uniform(0.97, 1.03))
                          for r in range(9) for s, gain in (('A', 1.0), ('B', 1.6)) for c, g in (('fp32_true', 1.0), ('bf16_pure', gain))])
    h2 = dv.verdicts(_table({}), steps(2.0, 1.0), throughput=turns).set_index('hypothesis').loc['H2 architecture inversion']
    assert h2.verdict == 'supported' and 'above 1 in 9 of 9 (sign test' in h2.evidence
    flipped = turns.copy()
    flipped.loc[(flipped.rep < 3) & (flipped.cell == 'B-bf16_pure-s0'), 'samples_per_s'] /= 2  # 3 of 9 repetitions the other way: not enough
    assert dv.verdicts(_table({}), throughput=flipped).set_index('hypothesis').verdict['H2 architecture inversion'] == 'inconclusive'
    # two passes must agree
    both = pd.concat([turns.assign(**{'pass': 1}), turns.assign(**{'pass': 2})])
    assert dv.verdicts(_table({}), throughput=both).set_index('hypothesis').verdict['H2 architecture inversion'] == 'supported'
    other = turns.assign(samples_per_s=np.where(turns.cell.str.startswith('B-bf16'), turns.samples_per_s / 3, turns.samples_per_s))
    h2 = dv.verdicts(_table({}), throughput=pd.concat([turns.assign(**{'pass': 1}), other.assign(**{'pass': 2})])).set_index('hypothesis').loc['H2 architecture inversion']
    assert h2.verdict == 'inconclusive' and 'the passes disagree' in h2.evidence


def test_cli_bench_runs_one_cell(tmp_path, capsys):
    from stackwise.cli import main
    assert main(['bench', '--model-arch', 'roberta', '--task', 'multi_cls', '--dtype-config', 'amp_bf16', '--batch-size', '4',
                 '--max-steps', '3', '--size', 'test', '--data-source', 'synthetic', '--tokenizer', 'bytes', '--no-mfu', '--cpu-threads', '0',
                 '--results', str(tmp_path)]) == 0
    out = capsys.readouterr().out
    (run,) = (tmp_path/'dtype_bench').iterdir()
    assert f'run folder: {run}' in out and 'status=completed' in out
    m = json.loads((run/'metrics.json').read_text())
    assert (m['scenario'], m['dtype_config'], m['steps_run'], m['obs_autocast']) == ('D', 'amp_bf16', 3, 'bfloat16')
    assert main(['bench', '--model-arch', 'gpt2', '--task', 'mlm', '--results', str(tmp_path)]) == 1
    assert 'no seed 004 scenario runs gpt2 on mlm' in capsys.readouterr().err


def test_matrix_notebook_with_papermill(tmp_path):
    "The experiment notebook as a user runs it, tiny: a run folder with the table, the charts and the verdicts; the injected failure recorded."
    r = run_cmd([exe('papermill'), 'nbs/experiments/dtype_matrix.ipynb', str(tmp_path/'out.ipynb'), '-p', 'scenarios', 'A,C', '-p', 'dtype_configs',
                 'fp32_true,fp16_naive,bf16_pure', '-p', 'model_size', 'test', '-p', 'max_steps', '3', '-p', 'batch_size', '4',
                 '-p', 'eval_batches', '1', '-p', 'data_source', 'synthetic', '-p', 'tokenizer', 'bytes', '-p', 'inject_failure', 'C:bf16_pure'],
                env=dict(STACKWISE_RESULTS=str(tmp_path/'results'), HF_HUB_OFFLINE='1'))
    assert r.returncode == 0, r.stderr[-3000:]
    (run,) = (tmp_path/'results'/'dtype_matrix').iterdir()
    m = json.loads((run/'metrics.json').read_text())
    assert m['cells'] == 6 and m['status'] == dict(completed=3, diverged=0, nonfinite=2, error=1)
    assert set(m['verdicts']) == set(dv.HYPOTHESES) - {'H1* without the eps confound'}  # fp16_pure not run: no row for it
    assert m['verdicts']['H1 loss-scale inversion'] == 'inconclusive'  # E, F not run
    assert 'synthetic' in m['data']['lm']
    assert {p.name for p in (run/'charts').iterdir()} >= {'heatmaps.png', 'loss_curves.png', 'fp16_naive_probe.png'}
    assert len(pd.read_csv(run/'metrics.csv')) == 6
