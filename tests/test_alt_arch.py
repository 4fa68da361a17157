"""The alternative architectures (Backpack with its StandardTransformerLM baseline, and BDH-GPU) against
the users' seeds: exact parameter counts on the meta device, causality, learning on a tiny batch, and
the Backpack's output being exactly a weighted sum of sense vectors."""
import math

import pytest
import torch

from stackwise.models.backpack import BackpackLM, StandardTransformerLM, backpack_europarl, backpack_tiny, overfit_losses, sense_top_tokens
from stackwise.models.bdh import BDH, bdh_parameters, bdh_seed001, bdh_tiny
from stackwise.models.counting import count_parameters, parameter_table


def _parts(model):
    return dict(parameter_table(model)[['part', 'parameters']].values)


def test_seed002_parameter_counts():
    """Seed 002's totals and breakdown: 202,819,968 (baseline) and 1,642,985,488 (Backpack), identical blocks."""
    with torch.device('meta'):
        std, bp = StandardTransformerLM(backpack_europarl()), BackpackLM(backpack_europarl())
    assert count_parameters(std) == 202_819_968
    assert count_parameters(bp) == 1_642_985_488
    s, b = _parts(std), _parts(bp)
    assert s['token_embeddings'] == 96_000_768 and s['lm_head'] == 96_000_768 and b['lm_head'] == 96_000_768
    assert s['blocks'] == b['blocks'] == 10_621_440
    assert b['sense_embeddings'] == 1_536_012_288
    # the seed's "other": ~197,000 and ~351,000
    assert count_parameters(std) - 2 * 96_000_768 - 10_621_440 == 196_992
    assert count_parameters(bp) - 1_536_012_288 - 10_621_440 - 96_000_768 == 350_992


def test_seed001_parameter_count():
    """Seed 001's BDH (6 layers, d=256, 4 heads, bytes) with N=32,768 neurons has 25,296,896 parameters, at any depth."""
    with torch.device('meta'):
        assert count_parameters(BDH(bdh_seed001())) == 25_296_896 == bdh_parameters(bdh_seed001())
        assert count_parameters(BDH(bdh_seed001(n_layers=12))) == 25_296_896


@pytest.mark.parametrize('make', [lambda: BackpackLM(backpack_tiny()), lambda: StandardTransformerLM(backpack_tiny()),
                                  lambda: BDH(bdh_tiny())], ids=['backpack', 'standard', 'bdh'])
def test_causal(make):
    """Changing a future token never changes the logits of earlier positions."""
    torch.manual_seed(0)
    model = make().eval()
    ids = torch.randint(0, 256, (2, 10))
    for t in (3, 9):
        ids2 = ids.clone(); ids2[:, t] = (ids[:, t] + 7) % 256
        with torch.no_grad():
            a, b = model(ids)[0], model(ids2)[0]
        torch.testing.assert_close(a[:, :t], b[:, :t], atol=1e-6, rtol=0)
        assert not torch.allclose(a[:, t], b[:, t])


@pytest.mark.parametrize('make', [lambda: BackpackLM(backpack_tiny()), lambda: StandardTransformerLM(backpack_tiny()),
                                  lambda: BDH(bdh_tiny())], ids=['backpack', 'standard', 'bdh'])
def test_learns_tiny_batch(make):
    """Thirty AdamW steps on one fixed random batch at least halve the loss from about ln(256)."""
    torch.manual_seed(0)
    losses = overfit_losses(make(), 256, steps=30)
    assert abs(losses[0] - math.log(256)) < 0.1
    assert losses[-1] < 0.5 * losses[0], losses[::5]


def test_backpack_output_is_weighted_sum_of_senses():
    """Logits equal E times sum_j sum_l alpha[l,i,j] C(x_j)[l], with alpha causal and each row summing to one."""
    torch.manual_seed(1)
    model = BackpackLM(backpack_tiny()).eval()
    ids = torch.randint(0, 256, (2, 6))
    k, d = model.cfg.n_senses, model.cfg.d_model
    with torch.no_grad():
        logits, _ = model(ids)
        alpha = model.sense_weights(ids)
        table = model.sense_embeddings.weight.view(-1, k, d)
        out = torch.zeros(2, 6, d)
        for b in range(2):
            for i in range(6):
                for j in range(i + 1):
                    for l in range(k): out[b, i] += alpha[b, l, i, j] * table[ids[b, j], l]
    torch.testing.assert_close(logits, out @ model.lm_head.weight.T, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(alpha.sum(-1), torch.ones(2, k, 6))
    assert alpha.triu(1).abs().max() == 0


def test_sense_top_tokens():
    """The inspector ranks tokens by each sense vector's score through the output embedding."""
    torch.manual_seed(0)
    model = BackpackLM(backpack_tiny())
    with torch.no_grad(): model.sense_embeddings.weight[65].view(model.cfg.n_senses, -1)[1] = 10 * model.lm_head.weight[90]
    tab = sense_top_tokens(model, 65, k=4, decode=chr)
    assert len(tab) == model.cfg.n_senses and tab.tokens[1][0] == 'Z'


def test_bdh_loads_the_reference_checkpoint():
    """A pathwaycom/bdh state dict loaded by name gives the reference module's logits (computed outside the project from a fixed
    random init: tests/fixtures/make_bdh_reference.py), within 1e-5; with stackwise's halves RoPE pairing it would not."""
    from pathlib import Path
    from safetensors import safe_open
    from safetensors.torch import load_file
    from stackwise.models.bdh import bdh_from_reference, bdh_reference_config, bdh_to_reference
    f = Path(__file__).parent/'fixtures'/'bdh_reference.safetensors'
    t = load_file(str(f))
    with safe_open(str(f), 'pt') as h: meta = h.metadata()
    fields = dict(kv.split('=') for kv in meta['config'].split())
    cfg = bdh_reference_config(**{k: float(v) if k == 'dropout' else int(v) for k, v in fields.items()})
    ref_sd = {k.removeprefix('model.'): v for k, v in t.items() if k.startswith('model.')}
    model = bdh_from_reference(ref_sd, cfg).eval()
    with torch.no_grad(): logits, _ = model(t['idx'])
    diff = (logits - t['logits']).abs().max().item()
    assert diff <= 1e-5, diff
    assert all(torch.equal(bdh_to_reference(model)[k], ref_sd[k]) for k in ('encoder', 'decoder', 'lm_head'))  # and back, bit for bit
    halves = BDH(bdh_reference_config(**{k: float(v) if k == 'dropout' else int(v) for k, v in fields.items()}))
    halves.cfg.rope_pairing = 'halves'; halves.load_state_dict(model.state_dict()); halves.eval()
    with torch.no_grad(): assert (halves(t['idx'])[0] - t['logits']).abs().max().item() > 1e-3
