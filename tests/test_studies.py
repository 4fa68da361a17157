"""The seed studies (nbs/54_bench.studies, backpack, bdh): baselines of equal parameters within a stated tolerance,
bits per byte against a hand computation, the loud synthetic fallback, the clear error when the pretrained Backpack
cannot be had, and the header a report page opens with, on a tiny fake run folder."""
import math

import pandas as pd
import pytest
import yaml

from stackwise.models.bdh import BDHConfig, bdh_parameters, bdh_seed001
from stackwise.core import StackwiseError, write_json
from stackwise.models.counting import count_parameters
from stackwise.bench import studies
from stackwise.data.sources import lm_texts
from stackwise.bench.studies import (compare_models, match_parameters, pretrained_backpack, seed_table, shaped_config, study_header,
                               train_study_run)
from stackwise.data.tokenization import bits_per_byte

# the bdh study's claim: baselines within 0.5% of BDH's parameter count, at its CPU default and at seed 001's shape
TOLERANCE = 0.005


@pytest.mark.parametrize('bdh', [BDHConfig(vocab_size=260, d_model=64, n_layers=6, n_heads=4, n_neurons=1024),
                                 bdh_seed001(vocab_size=260)], ids=['cpu-default', 'seed001'])
@pytest.mark.parametrize('family', ['gpt2', 'llama'])
def test_equal_parameters(bdh, family):
    target = bdh_parameters(bdh)
    cfg, n = match_parameters(family, target, bdh.n_layers, bdh.n_heads, bdh.vocab_size, 256)
    assert n == count_parameters(cfg)  # the count reported is the model's own
    assert (cfg.n_layers, cfg.n_heads, cfg.d_model % (2 * cfg.n_heads)) == (bdh.n_layers, bdh.n_heads, 0)
    assert abs(n / target - 1) <= TOLERANCE, (family, cfg.d_model, n, target)
    assert 0.75 <= cfg.d_ff / shaped_config(family, cfg.d_model, 1, bdh.n_heads, 260, 256).d_ff <= 1.25  # the FFN stays near its recipe


def test_shaped_config_recipes():
    g, l = shaped_config('gpt2', 64, 2, 4, 260, 64), shaped_config('llama', 64, 2, 4, 260, 64)
    assert (g.d_ff, l.d_ff) == (256, 176)  # 4 d; 8 d / 3 rounded up to a multiple of 8
    with pytest.raises(StackwiseError, match='unknown family'): shaped_config('mamba', 64, 2, 4, 260, 64)


def test_bits_per_byte_by_hand(tmp_path, monkeypatch):
    # 1.2 nats per token over 300 tokens of a 450-byte text: 1.2 * 300 / 450 / ln 2 bits per byte
    assert bits_per_byte(1.2, 300, 450) == pytest.approx(0.8 / math.log(2), rel=1e-12)
    assert bits_per_byte(1.2, 300, 450) == pytest.approx(1.154156, abs=1e-6)
    # a tiny study run reports its validation loss in bits per byte the same way
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    r = train_study_run(dict(kind='gpt2', config=dict(shaped_config('gpt2', 16, 1, 2, 260, 16).__dict__), data='synthetic', seq_len=16,
                             batch_size=2, seed=0, run_dir=str(tmp_path/'run'), train=dict(max_steps=2, lr=1e-3, warmup_steps=1, eval_every=2, eval_batches=1)))
    assert r['val_bpb'] == pytest.approx(r['best_val_loss'] * r['val_tokens'] / r['val_bytes'] / math.log(2), rel=1e-12)
    assert r['data_source'].startswith('SYNTHETIC')


def test_texts_fall_back_loudly(tmp_path, monkeypatch):
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    t = lm_texts('tinyshakespeare', root=tmp_path)
    assert not t['real'] and t['source'].startswith('SYNTHETIC') and 'tinyshakespeare' in t['source']


def test_texts_local_parallel_copy(tmp_path, monkeypatch):
    # a local Europarl copy (one file per language, line-aligned): both sides of every pair, the last pairs held out whole
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    d = tmp_path/'europarl_fr_en'; d.mkdir()
    fr, en = [f'phrase {i}' for i in range(10)], [f'sentence {i}' for i in range(10)]
    (d/'europarl-v7.fr-en.first3000.fr').write_text('\n'.join(fr) + '\n')
    (d/'europarl-v7.fr-en.first3000.en').write_text('\n'.join(en) + '\n')
    t = lm_texts('europarl_fr_en', root=tmp_path, val_fraction=0.2)
    assert t['real'] and '10 aligned fr-en sentence pairs' in t['source']
    assert t['train'] == [s for p in zip(fr[:8], en[:8]) for s in p] and t['val'] == ['phrase 8', 'sentence 8', 'phrase 9', 'sentence 9']


PIN = '0123456789abcdef0123456789abcdef01234567'


def test_pretrained_backpack_offline_error(tmp_path, monkeypatch):
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    monkeypatch.setenv('HF_HOME', str(tmp_path/'hf'))  # an empty cache
    with pytest.raises(StackwiseError, match='HF_HUB_OFFLINE is set.*Fix:'): pretrained_backpack('stanfordnlp/backpack-gpt2', trust_remote_code=True, revision=PIN)
    with pytest.raises(StackwiseError, match='not a complete saved model'): pretrained_backpack(str(tmp_path), trust_remote_code=True)


def test_pretrained_backpack_runs_remote_code_only_when_asked_and_pinned(monkeypatch, capsys):
    "The Backpack's modelling code comes from its hub repo: refused without trust_remote_code, or without a commit pin, before any download."
    import transformers
    import stackwise.data.sources as sources
    def no_download(*a, **k): raise AssertionError('the hub was asked')
    monkeypatch.setattr(transformers.AutoModelForCausalLM, 'from_pretrained', no_download)
    monkeypatch.setattr(sources, 'hub_reachable', no_download)
    with pytest.raises(StackwiseError, match='runs its own Python code.*trust_remote_code=True'): pretrained_backpack()
    for rev in (None, 'main', PIN[:12]):
        with pytest.raises(StackwiseError, match='revision=<40-hex commit>'): pretrained_backpack(trust_remote_code=True, revision=rev)
    assert 'REMOTE CODE' not in capsys.readouterr().err


def test_seed_tables_and_tests():
    df = pd.DataFrame(dict(model=['a'] * 3 + ['b'] * 3, seed=[0, 1, 2] * 2, loss=[1.50, 1.52, 1.49, 1.60, 1.63, 1.58]))
    s = seed_table(df, ['loss'])
    assert s.loc['a', 'loss mean'] == pytest.approx(4.51 / 3, abs=1e-12) and s.loc['b', 'loss count'] == 3
    rows = compare_models(df, 'a', ['b'], ['loss'])
    assert rows[0]['comparison'] == 'a vs b' and rows[0]['diff'] == pytest.approx(-0.1, abs=1e-12)
    t = studies.tests_table(rows)  # (not imported by name: pytest would collect it)
    assert t.loc[0, 'first'] == '1.503 ± 0.015 (n=3)' and t.loc[0, 'permutation'] == 'exact'
    assert t.loc[0, 'p'] < 0.01 and t.loc[0, 'permutation p'] == pytest.approx(0.1)  # 1 in C(6, 3) = 20 relabellings, two-sided


def _fake_run(path, real):
    path.mkdir()
    write_json(path/'env.json', dict(time_utc='2026-01-01T00:00:00', device=dict(name='cpu'), packages=dict(torch='2.x'), git=dict(commit='abcdef0123456')))
    (path/'config.yaml').write_text(yaml.safe_dump(dict(steps=150, batch_size=8, seq_len=64, patience=4, data='tinyshakespeare')))
    write_json(path/'metrics.json', dict(device='Test CPU (2 cores)', threads=1, seeds=[0, 1, 2], tokens_per_run=76_800, wall_s=321.0, data_real=real,
                                          data_source='tinyshakespeare (local copy)' if real else 'SYNTHETIC: the Markov language'))


def test_study_header(tmp_path):
    _fake_run(tmp_path/'real', True)
    h = study_header(tmp_path/'real')
    for part in ('**Hardware**: Test CPU (2 cores)', '**Budget**: 150 steps of 8 x 64 tokens', '76,800 training tokens', '3 seeds (0, 1, 2)',
                 '321 s', '**Data**: tinyshakespeare (local copy)', 'abcdef0123'):
        assert part in h, (part, h)
    assert 'Embedded fallback' not in h
    _fake_run(tmp_path/'synthetic', False)
    h = study_header(tmp_path/'synthetic')
    assert 'Embedded fallback' in h and 'not tinyshakespeare' in h and 'STACKWISE_DATA' in h


def test_study_page(tmp_path, monkeypatch):
    import IPython.display
    shown = []
    monkeypatch.setattr(IPython.display, 'display', lambda o: shown.append(getattr(o, 'data', None) or getattr(o, 'filename', None)))
    last, m, chart = studies.study_page('bdh', tmp_path)
    assert last is None and 'No complete bdh runs yet' in shown[-1]
    (tmp_path/'bdh').mkdir()
    _fake_run(tmp_path/'bdh'/'20260101-000000-aaaaa', True)
    _fake_run(tmp_path/'bdh'/'20260102-000000-bbbbb', False)
    shown.clear()
    last, m, chart = studies.study_page('bdh', tmp_path)
    out = '\n'.join(shown)
    assert last.name == '20260102-000000-bbbbb' and m['data_real'] is False
    assert 'Embedded fallback' in out and 'Earlier complete runs, not shown: `20260101-000000-aaaaa`' in out
    chart('val_bpb')
    assert 'chart val_bpb missing' in shown[-1]
