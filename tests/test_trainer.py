"""The classical trainer (nbs/33_train.trainer.ipynb) and the dtype policy (nbs/30_train.dtypes.ipynb): exact resume
after kill -9, exact gradient accumulation, the dtype recipes, DDP under torchrun, and bad input."""
import hashlib, math, os, random, shutil, sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import ROOT, exe, run_cmd
from stackwise.config import load_config
from stackwise.core import StackwiseError
from stackwise.train.dtypes import POLICIES, dtype_policy
from stackwise.data.packing import BlockLoader, TokenBlocks
from stackwise.models.rack import Rack
from stackwise.runs import start_run
from stackwise.train.loop import TrainConfig
from stackwise.train.trainer import Trainer

SCRIPT = str(Path(__file__).parent/'trainer_script.py')
ENV = dict(PYTHONHASHSEED='0', OMP_NUM_THREADS='1')


def script(run_dir, *args):
    return run_cmd([sys.executable, SCRIPT, str(run_dir), *map(str, args)], env=ENV, timeout=300)


def tree_digest(path: Path) -> dict:
    "Every file under `path` with its SHA-256: what 'nothing was overwritten' compares."
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(path.rglob('*')) if p.is_file()}


def final_weights(run_dir: Path) -> dict:
    "Every tensor of the final checkpoint as raw bytes (the file's header orders its metadata differently per process)."
    from safetensors.torch import load_file
    ck = run_dir/'checkpoints'
    w = load_file(str(ck/(ck/'final').read_text().strip()/'model.safetensors'))
    return {k: (v.dtype, tuple(v.shape), v.contiguous().view(torch.uint8).numpy().tobytes()) for k, v in w.items()}


def test_resume_after_kill9_is_bit_identical(tmp_path):
    "SIGKILL at a random step between checkpoints, resume: final weights and the whole curve equal an uninterrupted run's."
    steps, kill_at = 20, random.Random().randint(5, 18)
    a, b = tmp_path/'uninterrupted', tmp_path/'killed'
    r = script(a, '--steps', steps)
    assert r.returncode == 0, r.stderr[-2000:]
    r = script(b, '--steps', steps, '--kill-at', kill_at)
    assert r.returncode == -9, f'expected SIGKILL, got {r.returncode}: {r.stderr[-2000:]}'
    assert not (b/'metrics.json').exists()
    r = script(b, '--steps', steps, '--resume')
    assert r.returncode == 0, r.stderr[-2000:]
    assert final_weights(a) == final_weights(b), f'weights differ after a kill at step {kill_at}'
    ca, cb = pd.read_csv(a/'metrics.csv'), pd.read_csv(b/'metrics.csv')
    assert ca.step.tolist() == cb.step.tolist() == list(range(1, steps + 1))
    for col in ('loss', 'lr', 'grad_norm', 'val_loss'):
        assert ca[col].fillna(-1).tolist() == cb[col].fillna(-1).tolist(), f'{col} differs after a kill at step {kill_at}'


def _nano(vocab=64, T=16, causal=True):
    torch.manual_seed(0)
    return Rack(load_config('decoder/gpt2_family/nano', [f'vocab_size={vocab}', f'max_seq_len={T}', 'n_layers=2', 'd_model=32',
                                                           'n_heads=2', f'causal={causal}']))


def _tokens(n=4000, vocab=63):
    return (np.random.default_rng(0).integers(0, vocab, n) * 5 + np.arange(n)) % vocab


def _after_one_step(batch, accum, objective='clm', dtype='fp32'):
    data = BlockLoader(TokenBlocks(_tokens(), 16), batch, shuffle=False)
    # lr 1e-3: Adam's first update is ~lr * sign(g), so a coordinate whose gradient is float noise around 0 moves by up to
    # 2 * lr whichever way it is summed; 1e-3 keeps that under the 1e-6 bound without hiding a real difference (which is >= lr)
    cfg = TrainConfig(max_steps=1, grad_accum=accum, warmup_steps=1, lr=1e-3, objective=objective, dtype=dtype,
                      mask_token_id=63 if objective == 'mlm' else None, progress=False, mfu=False)
    t = Trainer(_nano(causal=objective == 'clm'), data, cfg)
    torch.manual_seed(123)  # the MLM masks: the same random stream for both ways of batching
    t.fit()
    return torch.cat([p.detach().float().flatten() for p in t.module.parameters()]), t.history[0]


@pytest.mark.parametrize('objective', ['clm', 'mlm'])
def test_accumulation_4x2_equals_1x8(objective):
    "Token-weighted accumulation: 4 micro-batches of 2 make the update of 1 batch of 8 (MLM: uneven target counts)."
    w1, h1 = _after_one_step(8, 1, objective)
    w4, h4 = _after_one_step(2, 4, objective)
    assert h1['targets'] == h4['targets']
    assert (w1 - w4).abs().max().item() < 1e-6
    assert abs(h1['loss'] - h4['loss']) < 1e-6 and abs(h1['grad_norm'] - h4['grad_norm']) < 1e-6


@pytest.mark.parametrize('name', list(POLICIES))
def test_every_dtype_policy_trains(name):
    "Each recipe stores weights, computes and steps as it says, and three steps stay finite."
    p = dtype_policy(name)
    data = BlockLoader(TokenBlocks(_tokens(), 16), 4, shuffle=False)
    t = Trainer(_nano(), data, TrainConfig(max_steps=3, dtype=name, warmup_steps=1, lr=1e-3, progress=False, mfu=False))
    assert {q.dtype for q in t.module.parameters()} == {p.param_dtype}
    assert (t.scaler is not None) == (name == 'amp_fp16')
    assert type(t.opt).__name__ == ('AdamW8bit' if name == 'amp_bf16_8bit' else 'AdamW')
    assert t.opt.defaults['eps'] == (1e-4 if name == 'fp16_pure' else 1e-8)
    t.fit()
    assert all(math.isfinite(h['loss']) for h in t.history)
    assert all(torch.isfinite(q).all() for q in t.module.parameters())
    assert torch.backends.cuda.matmul.allow_tf32 is False


def test_bad_names_are_clear_errors():
    with pytest.raises(StackwiseError, match='unknown dtype policy .fp8.: use one of fp32, amp_fp16, amp_bf16, bf16_pure, fp16_pure, amp_bf16_8bit'):
        TrainConfig(dtype='fp8')
    with pytest.raises(StackwiseError, match="unknown objective 'span': use one of clm, mlm"):
        TrainConfig(objective='span')
    with pytest.raises(StackwiseError, match="unknown attention 'flash': use 'auto'"):
        TrainConfig(attention='flash')
    assert dtype_policy('fp16_naive') is POLICIES['fp16_pure'] and dtype_policy('fp32_true') is POLICIES['fp32']


@pytest.fixture(scope='module')
def finished_run(tmp_path_factory):
    "A complete 6-step run with a checkpoint every 3 steps."
    run = start_run('t', root=tmp_path_factory.mktemp('results'))
    data = BlockLoader(TokenBlocks(_tokens(), 16), 4, seed=0)
    Trainer(_nano(), data, TrainConfig(max_steps=6, checkpoint_every=3, warmup_steps=1, progress=False, mfu=False), run=run).fit()
    return run.path


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_resume_with_another_config_is_refused(finished_run, tmp_path):
    path = _copy(finished_run, tmp_path/'run')
    before = tree_digest(path)
    data = BlockLoader(TokenBlocks(_tokens(), 16), 4, seed=0)
    t = Trainer(_nano(), data, TrainConfig(max_steps=6, checkpoint_every=3, warmup_steps=1, lr=1e-3, progress=False, mfu=False),
                run=start_run('t', path=path))
    with pytest.raises(StackwiseError, match='was written by another configuration'):
        t.fit(resume=True)
    assert tree_digest(path) == before, 'a refused resume changed the run folder'


def test_corrupted_checkpoint_is_refused(finished_run, tmp_path):
    path = _copy(finished_run, tmp_path/'run')
    ck = path/'checkpoints'/(path/'checkpoints'/'latest').read_text().strip()
    with open(ck/'model.safetensors', 'r+b') as f: f.seek(-8, 2); f.write(b'\0' * 8)
    before = tree_digest(path)
    data = BlockLoader(TokenBlocks(_tokens(), 16), 4, seed=0)
    t = Trainer(_nano(), data, TrainConfig(max_steps=6, checkpoint_every=3, warmup_steps=1, progress=False, mfu=False),
                run=start_run('t', path=path))
    with pytest.raises(StackwiseError, match='is corrupted: model.safetensors'):
        t.fit(resume=True)
    assert tree_digest(path) == before


def test_fresh_start_never_overwrites_checkpoints(finished_run, tmp_path):
    path = _copy(finished_run, tmp_path/'run')
    before = tree_digest(path)
    data = BlockLoader(TokenBlocks(_tokens(), 16), 4, seed=0)
    t = Trainer(_nano(), data, TrainConfig(max_steps=6, progress=False, mfu=False), run=start_run('t', path=path))
    with pytest.raises(StackwiseError, match='already has checkpoints: pass resume=True'):
        t.fit()
    assert tree_digest(path) == before


def test_run_folder_contents(finished_run):
    "Per-step metrics, TensorBoard events, the chart, the final figures and weights-only checkpoints."
    steps = pd.read_csv(finished_run/'metrics.csv')
    assert {'step', 'loss', 'lr', 'grad_norm', 'tokens_per_s', 'peak_mem_mb', 'tokens'} <= set(steps.columns)
    assert steps.step.tolist() == list(range(1, 7))
    assert list((finished_run/'tensorboard').glob('events.out.tfevents.*'))
    assert (finished_run/'charts'/'training.png').exists() and (finished_run/'metrics.json').exists()
    ck = finished_run/'checkpoints'
    assert {(ck/p).read_text().strip() for p in ('latest', 'final')} == {'step-000006'}
    assert sorted(d.name for d in ck.iterdir() if d.is_dir()) == ['step-000006']  # step 3 is dropped once nothing points at it
    st = torch.load(ck/'step-000006'/'state.pt', weights_only=True)
    assert st['step'] == 6 and st['data']['batch'] == 6


def test_hf_model_trains():
    "Any HF causal LM: a 2-layer GPT2LMHeadModel built from a config (no hub access)."
    from transformers import GPT2Config, GPT2LMHeadModel
    torch.manual_seed(0)
    hf = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_positions=16, n_embd=32, n_layer=2, n_head=2, bos_token_id=None, eos_token_id=None))
    data = BlockLoader(TokenBlocks(np.arange(4000) % 63, 16), 4, shuffle=False)  # a cycle: learnable in a few steps
    t = Trainer(hf, data, TrainConfig(max_steps=4, warmup_steps=1, lr=1e-2, dtype='amp_bf16', progress=False, mfu=True))
    assert hf.config._attn_implementation == 'stackwise'  # attention='auto': stackwise picks the kernel
    t.fit()
    assert t.history[-1]['loss'] < t.history[0]['loss'] and 0 < t.history[-1]['mfu'] < 1
    hf2 = GPT2LMHeadModel(hf.config.__class__(**{**hf.config.to_dict(), '_attn_implementation': 'sdpa'}))
    Trainer(hf2, data, TrainConfig(max_steps=1, attention='model', progress=False, mfu=False))
    assert hf2.config._attn_implementation == 'sdpa'  # attention='model' leaves it alone


@pytest.mark.skipif(not os.environ.get('STACKWISE_SLOW'), reason='slow (two processes): set STACKWISE_SLOW=1')
def test_ddp_two_processes_match_one(tmp_path):
    "torchrun --nproc_per_node 2 on CPU (gloo) reproduces the single-process loss curve at the same global batch."
    one, two = tmp_path/'one', tmp_path/'two'
    r = script(one, '--steps', 8, '--dropout', 0)
    assert r.returncode == 0, r.stderr[-2000:]
    r = run_cmd([exe('torchrun'), '--nproc_per_node', '2', '--master_port', str(29500 + random.randint(0, 400)), SCRIPT, str(two),
                 '--steps', '8', '--dropout', '0'], env=ENV, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = pd.read_csv(one/'metrics.csv'), pd.read_csv(two/'metrics.csv')
    assert a.step.tolist() == b.step.tolist() == list(range(1, 9))
    assert np.abs(a.loss - b.loss).max() < 1e-5 and np.abs(a.val_loss.fillna(0) - b.val_loss.fillna(0)).max() < 1e-5


def test_fsdp_two_processes_match_one_and_resume(tmp_path):
    """TrainConfig.fsdp under torchrun --nproc_per_node 2 on CPU (gloo; torch FSDP2, one unit per block): the single-process loss curve at the
    same global batch, the gathered final weights equal to the single process's, and a run killed after step 6 resumes from step 4 onto the same curve."""
    from safetensors.torch import load_file
    one, two, back = tmp_path/'one', tmp_path/'two', tmp_path/'back'
    r = script(one, '--steps', 8, '--dropout', 0)
    assert r.returncode == 0, r.stderr[-2000:]
    launch = lambda run, *extra: run_cmd([exe('torchrun'), '--nproc_per_node', '2', '--master_port', str(29500 + random.randint(0, 400)), SCRIPT,
                                          str(run), '--steps', '8', '--dropout', '0', '--fsdp', *extra], env=ENV, timeout=300)
    r = launch(two)
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = pd.read_csv(one/'metrics.csv'), pd.read_csv(two/'metrics.csv')
    assert a.step.tolist() == b.step.tolist() == list(range(1, 9))
    diff = np.abs(a.loss - b.loss).max()
    assert diff < 1e-5 and np.abs(a.val_loss.fillna(0) - b.val_loss.fillna(0)).max() < 1e-5, diff
    ck = lambda run: run/'checkpoints'/(run/'checkpoints'/'final').read_text().strip()/'model.safetensors'
    w1, w2 = load_file(str(ck(one))), load_file(str(ck(two)))
    assert set(w1) == set(w2) and max((w1[k] - w2[k]).abs().max().item() for k in w1) < 1e-5
    from stackwise.models.families import load_rack
    assert type(load_rack(ck(two).parent)).__name__ == 'Rack'  # a checkpoint like any other: evaluate and export read it
    r = launch(back, '--kill-at', '6')  # killed after step 6: its latest checkpoint is step 4's
    assert r.returncode != 0 and (back/'checkpoints'/'latest').read_text().strip() == 'step-000004'
    r = launch(back, '--resume')
    assert r.returncode == 0, r.stderr[-3000:]
    c = pd.read_csv(back/'metrics.csv')
    assert c.step.tolist() == list(range(1, 9)) and np.abs(c.loss - b.loss).max() < 1e-6


def test_cli_train_writes_a_run(tmp_path):
    "`stackwise train` with overrides trains a nano GPT-2 into a run folder."
    r = run_cmd([exe('stackwise'), 'train', '--family', 'gpt2', '--config', 'nano', '--seq-len', '32', '--batch-size', '4',
                 '--results', str(tmp_path), 'max_steps=3', 'warmup_steps=1', 'progress=false', 'mfu=false', 'tensorboard=false',
                 'model.n_layers=1', 'model.d_model=32', 'model.n_heads=2'])
    assert r.returncode == 0, r.stderr[-2000:]
    run = next((tmp_path/'train').iterdir())
    assert pd.read_csv(run/'metrics.csv').step.tolist() == [1, 2, 3] and (run/'metrics.json').exists()


@pytest.mark.parametrize('args,message', [
    (['--dtype', 'fp8'], "unknown dtype policy 'fp8': use one of fp32, amp_fp16"),
    (['--objective', 'span'], "unknown objective 'span': use one of clm, mlm"),
    (['--config', 'tiny'], "no preset 'tiny' for family 'gpt2': gpt2 has large, medium, nano"),
    (['lrr=3'], "unknown override 'lrr': use a TrainConfig field"),
])
def test_cli_train_bad_input(tmp_path, capsys, args, message):
    "Refused before any data is read or any folder made (in-process: the exit path is the one `stackwise` takes)."
    from stackwise.cli import main
    assert main(['train', '--results', str(tmp_path), *args]) == 1
    assert capsys.readouterr().err.startswith(f'stackwise: error: {message}')
    assert not any(tmp_path.iterdir()), 'nothing is written for refused input'


def test_qlora_checkpoints_hold_the_adapters_and_resume(tmp_path):
    "QLoRA (nf4 base + LoRA): checkpoints hold the trained adapters only; resuming restores them exactly."
    from safetensors.torch import load_file
    from stackwise.train.qlora import qlora
    cfg = TrainConfig(max_steps=4, checkpoint_every=2, dtype='amp_bf16', lr=1e-2, warmup_steps=1, progress=False, mfu=False, tensorboard=False)
    data = lambda: BlockLoader(TokenBlocks(np.arange(4000) % 63, 16), 4, seed=0)
    run = start_run('t', root=tmp_path)
    t = Trainer(qlora(_nano(), r=4), data(), cfg, run=run)
    t.fit()
    ck = run.path/'checkpoints'/(run.path/'checkpoints'/'final').read_text().strip()
    saved = load_file(ck/'model.safetensors')
    trained = {n: p for n, p in t.module.named_parameters() if p.requires_grad}
    assert saved.keys() == trained.keys() and all('lora_' in k for k in saved)
    t2 = Trainer(qlora(_nano(), r=4), data(), cfg, run=start_run('t', path=run.path))
    assert t2.resume() == 4
    for n, p in t2.module.named_parameters():
        if p.requires_grad: assert torch.equal(p, trained[n]), n


def test_early_stopping_keeps_the_best_checkpoint(tmp_path):
    """Train on one memorisable pattern and validate on unrelated random tokens: validation loss bottoms out, then
    rises as the model overfits; with patience 2 training stops early, and the best checkpoint is the minimum's step."""
    from safetensors.torch import load_file
    pattern = np.tile(np.arange(63) * 7 % 63, 40)  # one fixed cycle: learnable, and useless on the validation tokens
    train = BlockLoader(TokenBlocks(pattern, 16), 4, seed=0)
    val = BlockLoader(TokenBlocks(np.random.default_rng(1).integers(0, 63, 2000), 16), 4, seed=0, shuffle=False)
    run = start_run('t', root=tmp_path)
    cfg = TrainConfig(max_steps=200, lr=1e-2, warmup_steps=1, schedule='constant', eval_every=2, eval_batches=2, patience=2,
                      progress=False, mfu=False, tensorboard=False)
    out = Trainer(_nano(), train, cfg, val_data=val, run=run).fit()
    val_curve = pd.read_csv(run.path/'metrics.csv').dropna(subset=['val_loss'])
    assert out['stopped_early'] and out['steps'] < cfg.max_steps, out
    best = val_curve.loc[val_curve.val_loss.idxmin()]
    assert out['best_step'] == best.step and out['best_val_loss'] == pytest.approx(best.val_loss)
    assert (val_curve.step > best.step).sum() == cfg.patience  # stopped at exactly `patience` evaluations past the best
    ck = run.path/'checkpoints'
    assert (ck/'best').read_text().strip() == f'step-{int(best.step):06d}'
    assert load_file(ck/f'step-{int(best.step):06d}'/'model.safetensors')


def test_wandb_offline_logs_every_row_into_the_run_folder(tmp_path, monkeypatch):
    "W&B in offline mode (no key: offline by default): the run's rows logged locally under <run>/wandb, the run closed at the end."
    wandb = pytest.importorskip('wandb')
    monkeypatch.delenv('WANDB_API_KEY', raising=False); monkeypatch.delenv('WANDB_MODE', raising=False)
    monkeypatch.setenv('WANDB_SILENT', 'true')
    data = np.random.default_rng(0).integers(0, 63, 4000)
    run = start_run('t', root=tmp_path)
    cfg = TrainConfig(max_steps=4, lr=1e-3, warmup_steps=1, eval_every=2, eval_batches=1, progress=False, mfu=False, tensorboard=False, wandb=True)
    logged = []
    real_log = wandb.sdk.wandb_run.Run.log
    monkeypatch.setattr(wandb.sdk.wandb_run.Run, 'log', lambda self, row, *a, **k: (logged.append(dict(row)), real_log(self, row, *a, **k))[1])
    Trainer(_nano(), BlockLoader(TokenBlocks(data, 16), 4, seed=0), cfg, BlockLoader(TokenBlocks(data, 16), 4, shuffle=False), run=run).fit()
    assert wandb.run is None  # finished by the trainer
    (offline,) = (run.path/'wandb').glob('offline-run-*')
    assert list(offline.glob('*.wandb')) and list(offline.glob('*.wandb'))[0].stat().st_size > 0
    steps = pd.read_csv(run.path/'metrics.csv')
    assert [r['step'] for r in logged] == steps.step.tolist()  # every metrics.csv row went to W&B too
    assert logged[-1]['loss'] == pytest.approx(steps.loss.iloc[-1])
