"""The model zoo against outside references: published parameter counts, HF transformers logits,
and the plain fact that every family's small preset learns."""
import pytest
import torch
import torch.nn.functional as F
import transformers

from stackwise.config import load_config, list_presets
from stackwise.models.families import from_hf, to_hf
from stackwise.models.rack import Rack
from stackwise.models.counting import count_parameters

transformers.logging.set_verbosity_error()


@pytest.mark.parametrize('preset,n', [
    ('decoder/gpt2_family/small', 124_439_808), ('decoder/gpt2_family/medium', 354_823_168),
    ('decoder/gpt2_family/large', 774_030_080), ('decoder/gpt2_family/xl', 1_557_611_200),
    ('decoder/llama_family/7b', 6_738_415_616), ('decoder/llama_family/70b', 68_976_648_192)])
def test_published_parameter_counts(preset, n):
    assert count_parameters(load_config(preset)) == n


def test_counts_agree_with_hf_for_converted_shapes():
    for preset in ('decoder/gpt2_family/nano', 'decoder/llama_family/tiny'):
        rack = Rack(load_config(preset))
        hf = to_hf(rack)
        assert sum(p.numel() for p in hf.parameters()) == count_parameters(rack)


@pytest.mark.parametrize('family', ['gpt2', 'llama'])
def test_logits_parity_both_ways(family):
    torch.manual_seed(0)
    preset = {'gpt2': 'decoder/gpt2_family/nano', 'llama': 'decoder/llama_family/tiny'}[family]
    rack = Rack(load_config(preset, ['vocab_size=512', 'n_layers=2'])).eval()
    ids = torch.randint(0, 512, (2, 32))
    with torch.no_grad():
        hf = to_hf(rack)
        assert (hf(ids).logits - rack(ids)).abs().max() <= 1e-4
        back = from_hf(hf, stack_sizes=[1, 1]).eval()
        assert (back(ids) - hf(ids).logits).abs().max() <= 1e-4


@pytest.mark.parametrize('preset', ['decoder/gpt2_family/nano', 'decoder/llama_family/tiny'])
def test_small_presets_learn_in_50_steps(preset):
    "A fixed batch of 8 random sequences: next-token loss must fall well below its start (ln V = 7.6)."
    torch.manual_seed(0)
    rack = Rack(load_config(preset, ['max_seq_len=64', 'vocab_size=2048']))  # a small vocabulary keeps it fast
    opt = torch.optim.AdamW(rack.parameters(), lr=1e-3)
    ids = torch.randint(0, 2048, (8, 65))
    losses = []
    for _ in range(50):
        logits = rack(ids[:, :-1])
        loss = F.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten())
        opt.zero_grad(); loss.backward(); opt.step()
        losses.append(loss.item())
    assert losses[0] > 7 and losses[-1] < 0.5 * losses[0], losses[::10]


def test_every_preset_loads():
    for name in list_presets():
        assert count_parameters(load_config(name)) > 0


@pytest.mark.parametrize('preset,n,pooler', [
    ('encoder/minilm_family/l12_h384', 33_360_000, True), ('encoder/minilm_family/l6_h384', 22_713_216, True),
    ('encoder/distilbert_family/base', 66_362_880, False)])
def test_encoder_shape_presets_match_hf_counts(preset, n, pooler):
    "MiniLM (HF BertModel, with pooler) and DistilBERT (HF DistilBertModel, no pooler) sizes, as HF builds them."
    from stackwise.models.encoders import encoder_parameters
    assert encoder_parameters(load_config(preset), mlm_head=False, pooler=pooler) == n


def test_scaling_presets_follow_seed_table():
    "Seed 000's scale table: layers, width and FFN ratio per scale, 64-dim heads."
    table = {'nano': (4, 256, 2), 'tiny': (6, 384, 3), 'small': (12, 512, 4), 'base': (12, 768, 4), 'large': (24, 1024, 4), 'xl': (48, 2048, 4)}
    for name, (L, d, r) in table.items():
        c = load_config(f'scaling/{name}')
        assert (c.n_layers, c.d_model, c.ffn_ratio, c.head_dim) == (L, d, r, 64)


def _nan_rack():
    torch.manual_seed(0)
    rack = Rack(load_config('decoder/gpt2_family/nano', ['vocab_size=64', 'n_layers=1', 'd_model=32', 'n_heads=2', 'max_seq_len=32']))
    return rack


def test_load_rack_verifies_a_checkpoint_and_refuses_nan(tmp_path):
    "A checkpoint folder (meta.json) is checked against its hashes; any saved Rack holding NaN/inf is refused, naming the tensor."
    import math
    from stackwise.core import StackwiseError
    from stackwise.models.families import load_rack, save_rack
    from stackwise.train.checkpoint import save_checkpoint
    rack = _nan_rack()
    ck = save_checkpoint(tmp_path/'checkpoints', 'step-000001', rack, dict(step=1), dict(step=1))
    assert load_rack(ck).cfg.d_model == 32
    with open(ck/'model.safetensors', 'r+b') as f:
        f.seek(-8, 2); tail = f.read(8); f.seek(-8, 2); f.write(bytes(b ^ 0xFF for b in tail))
    with pytest.raises(StackwiseError, match='is corrupted: model.safetensors'): load_rack(ck)
    plain = save_rack(rack, tmp_path/'plain')  # a saved Rack without meta.json: no hashes to check, still loadable
    assert load_rack(plain).cfg.d_model == 32
    with torch.no_grad(): rack.stacks[0].blocks[0].mlp.up.weight[0, 0] = math.inf
    save_rack(rack, plain)
    with pytest.raises(StackwiseError, match=r"plain/model.safetensors.*'stacks.0.blocks.0.mlp.up.weight'.*1 inf"): load_rack(plain)
