"""The memory/time planner (nbs/39_train.plan): its arithmetic against hand-computed cases (16 bytes/param for mixed-precision
Adam, 10 with 8-bit moments, the Korthikanti activation formula, bitsandbytes' nf4/int8 sizes, the 70B FLOPs), fits and
does-not-fit verdicts, `stackwise plan`, bad input refused with the fix named; and the layer-wise run's core end to end
on a tiny shape: every layer's loss falls, the cache handed to the next layer equals the recomputed activations, the
quantized model saved reloads, answers the same and generates."""
import numpy as np
import pytest
import torch
import torch.nn as nn

from stackwise.train import plan as sp
from stackwise.bench import llama70b as lw
from stackwise.models.quant import load_frozen_rack, save_frozen_rack
from stackwise.models.blocks import Block
from stackwise.cli import main
from stackwise.config import load_config
from stackwise.core import StackwiseError
from stackwise.train.units import run_blocks
from stackwise.models.generation import generate
from stackwise.models.rack import Rack
from stackwise.models.counting import count_parameters

P70 = 68_976_648_192  # Llama-2-70B's parameters (the shape the preset builds)


def test_mixed_adam_is_16_bytes_per_param():
    assert sp.state_bytes_per_param('amp_bf16') == dict(weights=4, grads=4, optimizer=8)
    assert sum(sp.state_bytes_per_param('fp32').values()) == 16
    assert sum(sp.state_bytes_per_param('bf16_pure').values()) == 8
    p = sp.plan('decoder/llama_family/70b', 'e2e', 'h200')
    assert p['params'] == P70
    t = p['table'].set_index('component').bytes
    assert t['weights'] + t['gradients'] + t['optimizer'] == 16 * P70 == 1_103_626_371_072  # "1.1 TB for classical mixed-precision Adam"


def test_8bit_optimizer_bytes():
    assert sp.state_bytes_per_param('amp_bf16_8bit') == dict(weights=4, grads=4, optimizer=2)  # one byte per AdamW moment
    cfg = load_config('decoder/llama_family/tiny', ['n_layers=2'])
    t = sp.plan(cfg, 'e2e', None, dtype='amp_bf16_8bit')['table'].set_index('component').bytes
    assert t['optimizer'] == 2 * count_parameters(cfg)


def test_korthikanti_formula_by_hand():
    # s*b*h*(34 + 5*a*s/h): s=128, b=4, h=256, a=8 -> 131072 * (34 + 20)
    assert sp.korthikanti_activation_bytes(128, 4, 256, 8) == 7_077_888
    # Llama-2-70B at one 2048-token sequence: 16,777,216 * (34 + 80)
    assert sp.korthikanti_activation_bytes(2048, 1, 8192, 64) == 1_912_602_624


def test_stackwise_activations_match_autograd():
    "The planner's count of what a block saves, against the bytes autograd actually keeps (a reference, not a fit)."
    cfg = load_config('decoder/llama_family/tiny', ['max_seq_len=64', 'd_model=128', 'n_heads=4', 'n_kv_heads=2', 'd_ff=320'])
    x = torch.randn(2, 64, cfg.d_model, requires_grad=True)
    rope = Rack(cfg).rope_tables(torch.arange(64))
    traced = sp.traced_activation_bytes(Block(cfg, 1), x, rope)
    assert abs(sp.stackwise_activation_bytes(cfg, 2, 64, 'fp32') / traced - 1) < 0.02


def test_frozen_bytes_by_hand():
    with torch.device('meta'): lin = nn.Linear(512, 512, bias=False)
    n = 512 * 512
    assert sp.frozen_bytes(lin, 'int8') == n + 4 * 512  # int8 rows, one fp32 scale per row
    assert sp.frozen_bytes(lin, 'nf4') == n // 2 + n // 64 + 4 * 16 + 4 * 256  # 4-bit pairs, 8-bit absmax per 64, fp32 per 256 of those, the code
    assert sp.frozen_bytes(lin, 'bf16') == 2 * n


def test_peak_holds_the_backward_overlap():
    "Layerwise: one block and the head learn, so their activations and gradients are held together; e2e: all activations and the top block's gradients, or all gradients and the bottom block's activations."
    cfg = load_config('decoder/llama_family/tiny', ['n_layers=4'])
    p = sp.plan(cfg, 'layerwise', None, batch_size=2, seq_len=64, dtype='fp32', frozen_dtype='int8', cache_batches=3)
    t = p['table'].set_index('component')
    host = t[t['where'] == 'host'].bytes
    stays = host.drop(['activations', 'gradients']).sum()
    assert p['peak']['host'] == stays + host['activations'] + host['gradients']
    assert t.bytes['activation cache'] == 3 * 2 * 64 * cfg.d_model * 2  # bf16 cache by default
    rack = Rack(cfg)
    block, head = count_parameters(rack.blocks[0]), count_parameters(nn.ModuleList([rack.final_norm, rack.lm_head]))
    e = sp.plan(cfg, 'e2e', None, batch_size=2, seq_len=64, dtype='fp32')
    t = e['table'].set_index('component').bytes
    layer = sp.stackwise_activation_bytes(cfg, 2, 64, 'fp32')
    assert e['peak']['host'] == t['weights'] + t['optimizer'] + max(t['activations'] + 4 * (block + head), layer + t['gradients'])


def test_70b_verdicts_and_time():
    lw = sp.plan('decoder/llama_family/70b', 'layerwise', 'h200', keep_masters=False)
    e2e = sp.plan('decoder/llama_family/70b', 'e2e', 'h200')
    assert lw['fits'] == dict(gpu=True, disk=True) and e2e['fits'] == dict(gpu=False)
    assert 'layerwise fits one H200' in sp.verdict(lw) and 'e2e does NOT fit one H200' in sp.verdict(e2e)
    # 6N + 12·L·d·T per token, N the matmul parameters (the untied embedding table left out), at 40% of 989 TFLOP/s
    per_token = 6 * (P70 - 32000 * 8192) + 12 * 80 * 8192 * 2048
    assert e2e['time']['flops'] == pytest.approx(per_token * 1.4e12)
    assert e2e['time']['seconds'] / (365.25 * 86400) == pytest.approx(per_token * 1.4e12 / (989e12 * 0.4) / (365.25 * 86400))
    assert lw['time']['flops'] > e2e['time']['flops']  # the head retrained at every stage
    h100 = sp.plan('decoder/llama_family/70b', 'layerwise', 'h100', keep_masters=True)  # 80 fp32 layers on a 64 GB disk
    assert h100['fits'] == dict(gpu=True, disk=False) and '--no-masters' in sp.verdict(h100)
    small = sp.plan('decoder/llama_family/70b', 'layerwise', 'h100', keep_masters=False, disk='10G')
    assert not small['fits']['disk']  # the saved nf4 model alone is ~37 GB


def test_cli_prints_both_tables(capsys):
    assert main(['plan', '--config', 'decoder/llama_family/70b', '--mode', 'layerwise', '--gpu', 'h100', '--host-ram', '128G',
                 '--disk', '64G', '--tokens', '1.4e12', '--mfu', '0.4', '--no-masters']) == 0
    out = capsys.readouterr().out
    assert 'layerwise: 68,976,648,192 parameters' in out and 'e2e: 68,976,648,192 parameters' in out
    assert 'layerwise fits one H100' in out and 'e2e does NOT fit one H100' in out and 'years' in out


@pytest.mark.parametrize('args, fix', [(['--gpu', 'h300'], 'h100, h200'), (['--mode', 'stagewise'], 'e2e, layerwise'),
                                       (['--host-ram', '128Q'], '128G'), (['--disk', 'lots'], '64GB'),
                                       (['--frozen-dtype', 'int4'], 'nf4'), (['--tokens', '-5'], 'write a number')])
def test_cli_bad_input(args, fix, capsys):
    assert main(['plan', '--config', 'decoder/llama_family/70b', *args]) == 1
    err = capsys.readouterr().err
    assert 'stackwise: error:' in err and fix in err


def test_cli_mfu_out_of_range_is_refused_by_the_parser(capsys):
    with pytest.raises(SystemExit) as e: main(['plan', '--config', 'decoder/llama_family/70b', '--mfu', '1.5'])
    assert e.value.code == 2 and 'it must be > 0 and <= 1' in capsys.readouterr().err


def test_bad_input_raises():
    with pytest.raises(StackwiseError, match='128G'): sp.parse_size('128Q')
    with pytest.raises(StackwiseError, match='h100'): sp.check_gpu('v100')
    with pytest.raises(StackwiseError, match='batch_size must be >= 1'): sp.plan('decoder/llama_family/tiny', 'e2e', None, batch_size=0)
    with pytest.raises(StackwiseError, match='gpu'): sp.plan_time(sp.PlanSetup(load_config('decoder/llama_family/tiny'), gpu=None), 1e9)


@pytest.fixture(scope='module')
def tiny_run():
    torch.manual_seed(0)
    cfg = load_config('decoder/llama_family/70b', ['d_model=64', 'n_heads=2', 'n_kv_heads=1', 'd_ff=192', 'n_layers=3', 'vocab_size=260',
                                                     'max_seq_len=32'])
    loader, val = lw.token_batches('synthetic', seq_len=32, batch_size=4)
    return lw.layerwise_run(cfg, loader, val, steps_per_layer=20, quant='nf4', dtype='fp32', device='cpu', cache_dtype='fp32', lr=3e-3,
                            peak_tflops=1.0, fresh=False)  # one fixed set: the cache advances a frozen layer at a time (the handover tested below)


def test_layerwise_run_losses_fall(tiny_run):
    L = tiny_run['layers']
    assert list(L.layer) == [0, 1, 2] and (L.steps == 20).all() and len(tiny_run['history']) == 60
    val = [tiny_run['val_loss_init'], *L.val_loss]
    assert all(a > b for a, b in zip(val, val[1:])), val  # every layer lowers the held-out loss of the model below it
    assert L.loss_last[0] < L.loss_first[0] - 1.0  # the first layer (and the head) learn on its cached batches
    assert (L.tokens == 20 * 4 * 32).all() and (L.tokens_per_s > 0).all() and (L.mfu > 0).all()
    assert list(L.cache_mb > 0) == [False, True, True]  # layer 0 reads the embeddings; later layers the cache
    assert (np.diff(L.frozen_mb) > 0).all()  # the trunk grows a quantized layer at a time
    assert all(type(m).__name__ == 'Linear4bit' for b in tiny_run['rack'].blocks for m in b.modules() if 'Linear' in type(m).__name__)


def test_cache_handover_equals_recomputed(tiny_run):
    tr = tiny_run['trainer']
    assert tr.cache.boundary == 2
    rope = tr.rack.rope_tables(torch.arange(32))
    for slot in (0, 7, 19):
        b = tr._batch(slot, (0.0, 1.0), 'clm')
        with torch.no_grad(): x = run_blocks(tr.rack.blocks[:2], tr.rack.embed(b['input_ids'])[0], rope)
        torch.testing.assert_close(tr.cache.get(slot).float(), x, rtol=0, atol=1e-6)


def test_saved_model_reloads_and_generates(tiny_run, tmp_path):
    rack = tiny_run['rack'].eval()
    path = save_frozen_rack(rack, tmp_path/'model', 'nf4', torch.float32)
    assert path.exists() and (tmp_path/'model'/'model.json').exists()
    back = load_frozen_rack(tmp_path/'model')
    ids = torch.tensor([list(b'ROMEO:')])
    with torch.no_grad(): torch.testing.assert_close(back(ids), rack(ids), rtol=0, atol=1e-5)
    out = generate(back, ids, 12, top_k=1)
    assert out.shape == (1, 18) and out[0, :6].tolist() == list(b'ROMEO:')
    with pytest.raises(StackwiseError, match='save_frozen_rack'): load_frozen_rack(tmp_path)


def test_layerwise_run_bad_input():
    cfg = load_config('decoder/llama_family/70b', ['d_model=64', 'n_heads=2', 'n_kv_heads=1', 'd_ff=192', 'n_layers=2', 'vocab_size=100'])
    loader, _ = lw.token_batches('synthetic', seq_len=16, batch_size=2)
    with pytest.raises(StackwiseError, match='vocab_size'): lw.layerwise_run(cfg, loader, None, 2, peak_tflops=1.0)
    with pytest.raises(StackwiseError, match='steps_per_layer'): lw.layerwise_run(cfg, loader, None, 0, peak_tflops=1.0)
