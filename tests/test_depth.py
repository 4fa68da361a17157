"""Depth-as-time training (nbs/35_train.depth_time .. 38_train.depth): every mode and curriculum learns on the synthetic language,
the cache and its recompute fallback give the same model, frozen units in every dtype and offload, resume at a stage
boundary, diffusion sampling and causal-fusion generation, the CLI, and bad input refused with nothing written."""
import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from stackwise.config import load_config
from stackwise.core import StackwiseError
from stackwise.data.sources import synthetic_corpus
from stackwise.train.curricula import DepthConfig, stage_flops
from stackwise.train.depth import DepthTrainer
from stackwise.models.rack import lazy_rack
from stackwise.data.packing import BlockLoader, TokenBlocks, packed_corpus
from stackwise.models.rack import Rack
from stackwise.runs import start_run
from stackwise.data.tokenization import ByteTokenizer
from stackwise.train.loop import TrainConfig

TOK = ByteTokenizer()
MASK = TOK.mask_token_id


@pytest.fixture(scope='module')
def data():
    ids = np.asarray(packed_corpus(synthetic_corpus(n_docs=8, doc_len=4096)[0], TOK, progress=False))
    return TokenBlocks(ids[:28_000], 32), TokenBlocks(ids[28_000:], 32)


def loaders(data, B=8):
    train, val = data
    return BlockLoader(train, B, seed=0), BlockLoader(val, B, shuffle=False)


def nano(n_layers=4, lazy=False, **kw):
    torch.manual_seed(0)
    cfg = load_config('decoder/gpt2_family/nano', [f'n_layers={n_layers}', 'd_model=32', 'n_heads=2', 'max_seq_len=32',
                                                   f'vocab_size={TOK.vocab_size}', *[f'{k}={v}' for k, v in kw.items()]])
    return lazy_rack(cfg) if lazy else Rack(cfg)


def train_cfg(**kw):
    return TrainConfig(**{'lr': 1e-2, 'warmup_steps': 2, 'eval_batches': 2, 'progress': False, 'mfu': False, 'tensorboard': False, **kw})


def tree_digest(path: Path) -> dict:
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(path.rglob('*')) if p.is_file()}


PLANS = [('e2e', 'left2right'), ('layerwise', 'left2right'), ('layerwise', 'right2left'), ('layerwise', 'independent'),
         ('blockwise', 'left2right'), ('blockwise', 'right2left'), ('stackwise', 'left2right'), ('stackwise', 'independent'),
         ('progressive', 'left2right'), ('progressive', 'right2left'), ('fusion', 'right2left'), ('fusion', 'independent')]


@pytest.mark.parametrize('mode,curriculum', PLANS)
def test_every_mode_and_curriculum_learns(data, mode, curriculum):
    "Mask diffusion on the synthetic language: the validation loss of the model as it answers after the last stage is well below the start."
    train, val = loaders(data)
    t = DepthTrainer(nano(stack_sizes='[2,2]', lazy=True), train, DepthConfig(mode=mode, curriculum=curriculum, mask_token_id=MASK,
                     steps_per_stage=15), train_cfg(), val)
    out = t.fit()
    start = t.history[0]['val_loss']
    assert out['val_loss'] < start - 1.0, (start, out['val_loss'])
    assert out['stages'] == len(t.stages) and out['steps'] == 15 * len(t.stages)


def test_e2e_next_token_is_the_classical_trainer(data):
    "Mode e2e on next-token prediction is the classical Trainer, step for step: same recipe pieces, same batches (within one epoch)."
    from stackwise.train.trainer import Trainer
    cfg = train_cfg(max_steps=20, eval_every=10)
    a = Trainer(nano(n_layers=2), loaders(data)[0], cfg, loaders(data)[1])
    a.fit()
    b = DepthTrainer(nano(n_layers=2), loaders(data)[0], DepthConfig(mode='e2e', objective='clm'), cfg, loaders(data)[1])
    b.fit()
    # the same numbers up to float rounding: the two loops reduce the loss in another order, which some CPUs (AMX) round differently
    assert [h['loss'] for h in a.history] == pytest.approx([h['loss'] for h in b.history if 'loss' in h], rel=1e-6, abs=0)
    assert [h['val_loss'] for h in a.history if h.get('val_loss')] == pytest.approx(
        [h['val_loss'] for h in b.history if h.get('val_loss') and h['step'] > 0], rel=1e-6, abs=0)


@pytest.mark.parametrize('objective', ['clm', 'mlm'])
def test_clm_and_mlm_objectives_learn(data, objective):
    train, val = loaders(data)
    t = DepthTrainer(nano(causal=objective == 'clm'), train, DepthConfig(mode='layerwise', curriculum='right2left', objective=objective,
                     mask_token_id=MASK if objective == 'mlm' else None, steps_per_stage=15), train_cfg(), val)
    out = t.fit()
    assert out['val_ce'] < t.history[0]['val_ce'] - 1.0


@pytest.mark.parametrize('dtype', ['amp_bf16', 'bf16_pure', 'amp_fp16', 'amp_bf16_8bit'])
def test_dtype_policies(data, dtype):
    "The classical trainer's dtype policies (autocast, pure bf16, GradScaler, 8-bit AdamW) drive the stages too."
    train, val = loaders(data)
    t = DepthTrainer(nano(n_layers=2, tie_embeddings='false'), train, DepthConfig(mask_token_id=MASK, steps_per_stage=12, cache_dtype='bf16'),
                     train_cfg(dtype=dtype), val)
    out = t.fit()
    assert out['val_loss'] < t.history[0]['val_loss'] - 1.0


def test_cache_and_recompute_give_the_same_model(data):
    """Left2right reads its stage's input from the cache (CPU memory or a disk memmap, all or half of the batches) or
    recomputes it through the frozen units: the same batches, bit for bit, so the same model."""
    def final(**kw):
        train, val = loaders(data)
        t = DepthTrainer(nano(tie_embeddings='false'), train, DepthConfig(mask_token_id=MASK, steps_per_stage=6, **kw), train_cfg(), val)
        out = t.fit()
        return out, torch.cat([p.detach().flatten() for p in t.assemble().parameters()])
    ref, w = final(cache='cpu')
    assert ref['cache_bytes'] == 6 * 8 * 32 * 32 * 4 and ref['recompute_flops'] == 0 and ref['cache_fill_flops'] > 0
    for kw in (dict(cache='none'), dict(cache='disk'), dict(cache='cpu', cache_budget=3 * 8 * 32 * 32 * 4)):
        out, w2 = final(**kw)
        assert torch.equal(w, w2), kw
        assert (out['recompute_flops'] > 0) == (kw.get('cache') == 'none' or 'cache_budget' in kw), kw
    out, w2 = final(cache='cpu', cache_dtype='bf16')  # rounded activations: close, not equal
    assert out['cache_bytes'] == ref['cache_bytes'] // 2 and abs(out['val_loss'] - ref['val_loss']) < 0.05


@pytest.mark.parametrize('curriculum,frozen_dtype,offload', [('right2left', 'nf4', 'none'), ('right2left', 'int8', 'cpu'),
                                                            ('left2right', 'bf16', 'disk'), ('independent', 'nf4', 'disk')])
def test_frozen_units_small_and_away(data, curriculum, frozen_dtype, offload):
    "Frozen units in bf16, int8 or nf4 (bitsandbytes), on the device, in host memory or on disk: training still learns, and nothing offloaded stays resident."
    train, val = loaders(data)
    wide = {'d_model': 64} if frozen_dtype == 'nf4' else {}  # bitsandbytes' CPU nf4 needs inputs in multiples of 64
    t = DepthTrainer(nano(lazy=True, tie_embeddings='false', **wide), train, DepthConfig(curriculum=curriculum, mask_token_id=MASK, steps_per_stage=12,
                     frozen_dtype=frozen_dtype, offload=offload, checkpoint_frozen=curriculum == 'right2left'), train_cfg(), val)
    out = t.fit()
    assert out['val_loss'] < t.history[0]['val_loss'] - 1.0
    s = pd.DataFrame(t.summaries)
    if offload == 'none': assert s.frozen_resident_bytes.is_monotonic_increasing and s.frozen_resident_bytes.iloc[-1] > 0
    else: assert (s.frozen_resident_bytes == 0).all() and s.frozen_offloaded_bytes.iloc[-1] > 0


def test_flops_budget_is_spent(data):
    "Given a FLOPs budget, every mode spends it (cache filling included) to within one step of each stage."
    train, _ = loaders(data)
    for mode, cur in [('e2e', 'left2right'), ('layerwise', 'left2right'), ('layerwise', 'right2left'), ('fusion', 'left2right')]:
        t = DepthTrainer(nano(stack_sizes='[2,2]', tie_embeddings='false'), train,
                         DepthConfig(mode=mode, curriculum=cur, mask_token_id=MASK, flops_budget=2e9), train_cfg())
        out = t.fit()
        slack = max(stage_flops(s, t.units, t.fwd, t.B * t.T * t.cfg.grad_accum)['total'] for s in t.stages)  # one step, nothing cached
        assert 2e9 - len(t.stages) * slack <= out['flops'] <= 2e9, (mode, cur, out['flops'])


@pytest.mark.parametrize('carry', [False, True])
def test_resume_after_a_crash_between_stages_is_bit_identical(data, tmp_path, carry):
    "A crash after stage 1 of 4, then fit(resume=True): the same units, head and curve as a run that never stopped (the carried optimizer state too)."
    def trainer(run, on_stage=None):
        train, val = loaders(data)
        return DepthTrainer(nano(lazy=True, tie_embeddings='false'), train,
                            DepthConfig(mask_token_id=MASK, steps_per_stage=5, frozen_dtype='bf16', carry_optimizer=carry),
                            train_cfg(eval_every=3), val, run, on_stage=on_stage)
    a = start_run('a', root=tmp_path)
    trainer(a).fit()

    def crash(t, st):
        if st.index == 1: raise KeyboardInterrupt
    b = start_run('b', root=tmp_path)
    with pytest.raises(KeyboardInterrupt): trainer(b, crash).fit()
    assert not (b.path/'metrics.json').exists()
    trainer(start_run('b', path=b.path)).fit(resume=True)
    for f in sorted((a.path/'units').iterdir()): assert f.read_bytes() == (b.path/'units'/f.name).read_bytes(), f.name
    ca, cb = pd.read_csv(a.path/'metrics.csv'), pd.read_csv(b.path/'metrics.csv')
    assert ca.step.tolist() == cb.step.tolist()
    for col in ('loss', 'val_loss', 'lr'): assert ca[col].fillna(-1).tolist() == cb[col].fillna(-1).tolist(), col
    ka, kb = (p.path/'checkpoints'/'stage-003'/'model.safetensors' for p in (a, b))
    assert ka.read_bytes() == kb.read_bytes()
    with pytest.raises(StackwiseError, match='already has checkpoints'): trainer(start_run('b', path=b.path)).fit()


def test_carry_optimizer_moves_the_heads_state(data):
    "With carry_optimizer the head's AdamW state runs on through the stages; frozen units and the embeddings (stage 0 only) leave theirs behind."
    train, val = loaders(data)
    t = DepthTrainer(nano(tie_embeddings='false'), train, DepthConfig(objective='clm', steps_per_stage=3, carry_optimizer=True), train_cfg(), val)
    t.fit()
    head = {k: s for k, s in t.carried.items() if k.startswith('lm_head')}
    assert head and all(int(s['step']) == 4 * 3 for s in head.values())  # 4 stages of 3 steps: one optimizer's count
    assert not any(k.startswith(('unit.', 'tok_emb')) for k in t.carried), sorted(t.carried)
    plain = DepthTrainer(nano(tie_embeddings='false'), train, DepthConfig(objective='clm', steps_per_stage=3), train_cfg(), val)
    plain.fit()
    assert plain.carried == {}  # the default: every stage's optimizer starts afresh
    assert plain.depth.fresh_batches is True  # left alone, and the data hold 4 x 3 batches: a set of its own per stage


def test_diffusion_sampling_and_causal_fusion_generation(data):
    "Both inference paths produce tokens of the right shape from a right2left model, the same for the same seed."
    train, val = loaders(data)
    t = DepthTrainer(nano(), train, DepthConfig(curriculum='right2left', mask_token_id=MASK, steps_per_stage=10), train_cfg(), val)
    t.fit()
    prompt = torch.stack([data[1][0][:8], data[1][1][:8]])
    g = lambda s: torch.Generator().manual_seed(s)
    d1, d2, d3 = (t.sample(prompt, 16, steps=4, temperature=1.0, generator=g(s)) for s in (0, 0, 1))
    assert d1.shape == (2, 24) and torch.equal(d1[:, :8], prompt) and torch.equal(d1, d2) and not torch.equal(d1, d3)
    assert not (d1 == MASK).any()
    with pytest.raises(StackwiseError, match='run causal_fusion'): t.generate_causal(prompt, 8)
    fused = t.causal_fusion(10)
    assert fused['objective'] == 'clm' and fused['val_ce'] < t.history[0]['val_ce']
    a1, a2 = (t.generate_causal(prompt, 16, temperature=1.0, generator=g(0)) for _ in range(2))
    assert a1.shape == (2, 24) and torch.equal(a1, a2) and torch.equal(a1[:, :8], prompt)
    assert t.rack.causal and len(TOK.decode(a1[0].tolist())) == 24


@pytest.mark.parametrize('make,message', [
    (lambda: DepthConfig(mode='greedy', mask_token_id=MASK), "unknown mode 'greedy': use one of e2e, layerwise, blockwise, stackwise"),
    (lambda: DepthConfig(curriculum='up2down', mask_token_id=MASK), "unknown curriculum 'up2down': use one of left2right, right2left"),
    (lambda: DepthConfig(bands=[(0.5, 1.2), (0.0, 0.5)], mask_token_id=MASK), 'noise band (0.5, 1.2) is outside [0, 1]'),
    (lambda: DepthConfig(mask_range=(0.15, 1.5), mask_token_id=MASK), 'use 0 < lo < hi <= 1'),
    (lambda: DepthConfig(mode='progressive', curriculum='independent', mask_token_id=MASK), 'use independent with mode layerwise'),
])
def test_bad_config_is_refused(make, message):
    with pytest.raises(StackwiseError, match=message.replace('(', r'\(').replace(')', r'\)').replace('[', r'\[').replace(']', r'\]')):
        make()


def test_bad_input_leaves_a_run_folder_untouched(data, tmp_path):
    "A cache budget too small for one batch, or bands that do not match the units, are refused before anything is written."
    train, val = loaders(data)
    run = start_run('t', root=tmp_path)
    t = DepthTrainer(nano(n_layers=2), train, DepthConfig(mask_token_id=MASK, steps_per_stage=2), train_cfg(), val, run)
    t.fit()
    before = tree_digest(run.path)
    with pytest.raises(StackwiseError, match=r'cache_budget=1,000 bytes cannot hold one batch of activations: 32,768 bytes .* Raise cache_budget to at least 32,768'):
        DepthTrainer(nano(n_layers=2), train, DepthConfig(mask_token_id=MASK, cache_budget=1000), train_cfg(), val, start_run('t', path=run.path))
    with pytest.raises(StackwiseError, match=r"frozen_dtype='nf4' on the CPU needs .* inputs of \[32\]"):
        DepthTrainer(nano(n_layers=2), train, DepthConfig(mask_token_id=MASK, frozen_dtype='nf4'), train_cfg(), val, run)
    with pytest.raises(StackwiseError, match='3 noise bands for 2 units'):
        DepthTrainer(nano(n_layers=2), train, DepthConfig(mask_token_id=MASK, bands=[(0, .3), (.3, .6), (.6, 1)]), train_cfg(), val, run)
    with pytest.raises(StackwiseError, match='already has checkpoints: pass resume=True'):
        DepthTrainer(nano(n_layers=2), train, DepthConfig(mask_token_id=MASK, steps_per_stage=2), train_cfg(), val, run).fit()
    assert tree_digest(run.path) == before


def test_cli_trains_depth_as_time(tmp_path):
    "The seed's command, `stackwise train --family bert --config base --curriculum right2left --noise-schedule cosine`, at nano size."
    from stackwise.cli import main
    assert main(['train', '--family', 'bert', '--config', 'base', '--curriculum', 'right2left', '--noise-schedule', 'cosine',
                 '--seq-len', '32', '--batch-size', '8', '--results', str(tmp_path), 'max_steps=8', 'eval_every=8', 'eval_batches=2',
                 'progress=false', 'mfu=false', 'tensorboard=false', 'model.n_layers=2', 'model.d_model=32', 'model.n_heads=2',
                 'depth.frozen_dtype=int8']) == 0
    run = next((tmp_path/'train').iterdir())
    steps, stages = pd.read_csv(run/'metrics.csv'), pd.read_json(run/'stages.json')
    assert stages.units.astype(str).tolist() == ['1', '0'] and steps.loss.notna().sum() == 16 and (run/'metrics.json').exists()


@pytest.mark.parametrize('args,message', [
    (['--mode', 'greedy'], "unknown mode 'greedy': use one of e2e"),
    (['--curriculum', 'up2down'], "unknown curriculum 'up2down'"),
    (['--noise-schedule', 'cosine', 'depth.bands=[[0.5,1.5]]'], 'noise band (0.5, 1.5) is outside [0, 1]'),
    (['--mode', 'layerwise', '--batch-size', '4', 'depth.cache_budget=1000'], 'cache_budget=1,000 bytes cannot hold one batch'),
    (['--mode', 'layerwise', 'depth.kk=2'], "unknown override 'depth.kk'"),
])
def test_cli_bad_depth_input(tmp_path, capsys, args, message):
    "Refused before any data is read or any folder made."
    from stackwise.cli import main
    assert main(['train', '--results', str(tmp_path), *args]) == 1
    assert capsys.readouterr().err.startswith(f'stackwise: error: {message}')
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize('objective', ['clm', pytest.param('diffusion', marks=pytest.mark.skipif(
    not __import__('os').environ.get('STACKWISE_SLOW'), reason='slow (two processes): set STACKWISE_SLOW=1'))])
def test_depth_data_parallel_two_processes_match_one(tmp_path, objective):
    "Depth-as-time under torchrun --nproc_per_node 2 on CPU (gloo): each process trains on its rows of every batch, the gradients summed; the loss curve is the one-process curve."
    import random, sys
    from conftest import exe, run_cmd
    script, env = str(Path(__file__).parent/'depth_script.py'), dict(PYTHONHASHSEED='0', OMP_NUM_THREADS='1')
    one, two = tmp_path/'one', tmp_path/'two'
    r = run_cmd([sys.executable, script, str(one), '--objective', objective], env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    r = run_cmd([exe('torchrun'), '--nproc_per_node', '2', '--master_port', str(29500 + random.randint(0, 400)), script, str(two),
                 '--objective', objective], env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = pd.read_csv(one/'metrics.csv'), pd.read_csv(two/'metrics.csv')
    assert a.step.tolist() == b.step.tolist() and len(a.loss.dropna()) == 8  # two stages of 4 steps
    assert np.abs(a.loss - b.loss).max() < 1e-5 and np.abs(a.val_loss.fillna(0) - b.val_loss.fillna(0)).max() < 1e-5
    assert not list(two.glob('*.partial*')) and (two/'metrics.json').exists()
