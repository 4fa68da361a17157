"""The encoder families (BERT, RoBERTa, DistilBERT, ModernBERT) against outside references: HF transformers logits both ways,
published parameter counts, bidirectional attention, and the tiny preset learning masked tokens."""
import pytest
import torch
import torch.nn.functional as F
import transformers
from transformers import (BertConfig, BertForMaskedLM, BertModel, DistilBertConfig, DistilBertForMaskedLM, DistilBertModel,
                          ModernBertConfig, ModernBertForMaskedLM, ModernBertModel, RobertaConfig, RobertaForMaskedLM)

from stackwise.config import load_config
from stackwise.models.encoders import EncoderRack, encoder_from_hf, encoder_parameters, encoder_to_hf, padding_position_ids
from stackwise.data.masking import mlm_mask
from stackwise.models.rack import Rack
from stackwise.models.counting import count_parameters

transformers.logging.set_verbosity_error()

SMALL = dict(vocab_size=100, hidden_size=64, num_hidden_layers=3, num_attention_heads=4, intermediate_size=128,
             max_position_embeddings=40)
SMALL_DISTIL = dict(vocab_size=100, dim=64, n_layers=3, n_heads=4, hidden_dim=128, max_position_embeddings=40)
# a 4-token window (2 each side) on 12 tokens: local and global layers, and their two RoPE bases, all matter
SMALL_MODERN = dict(SMALL, intermediate_size=96, local_attention=4, pad_token_id=0)
FAMILIES = ['bert', 'roberta', 'distilbert', 'modernbert']


def _batch(family):
    "Two sequences, the second padded after 8 tokens; BERT's also has two segments."
    torch.manual_seed(0)
    ids = torch.randint(3, 100, (2, 12))
    mask = torch.ones_like(ids); mask[1, 8:] = 0
    if family == 'roberta': return dict(input_ids=ids.masked_fill(mask == 0, 1), attention_mask=mask)
    if family in ('distilbert', 'modernbert'): return dict(input_ids=ids.masked_fill(mask == 0, 0), attention_mask=mask)
    types = torch.zeros_like(ids); types[:, 6:] = 1
    return dict(input_ids=ids.masked_fill(mask == 0, 0), attention_mask=mask, token_type_ids=types)


def _hf(family):
    "A random HF *ForMaskedLM whose norms and biases are perturbed too (HF inits them to 1 and 0)."
    torch.manual_seed(0)
    hf = {'bert': lambda: BertForMaskedLM(BertConfig(**SMALL)),
          'roberta': lambda: RobertaForMaskedLM(RobertaConfig(**SMALL, type_vocab_size=1)),
          'distilbert': lambda: DistilBertForMaskedLM(DistilBertConfig(**SMALL_DISTIL)),
          'modernbert': lambda: ModernBertForMaskedLM(ModernBertConfig(**SMALL_MODERN))}[family]()
    with torch.no_grad():
        for p in hf.parameters(): p.add_(0.05 * torch.randn_like(p))
    return hf.eval()


@pytest.mark.parametrize('family', FAMILIES)
def test_logits_parity_hf_to_ours(family):
    "A random HF *ForMaskedLM converted to an EncoderRack gives the same MLM logits (padding, segments) to 1e-4."
    hf, b = _hf(family), _batch(family)
    with torch.no_grad():
        ours = encoder_from_hf(hf, stack_sizes=[1, 2])
        assert isinstance(ours, Rack) and len(ours.stacks) == 2 and not ours.causal
        assert (ours(**b) - hf(**b).logits).abs().max() <= 1e-4


@pytest.mark.parametrize('family', FAMILIES)
def test_logits_parity_ours_to_hf(family):
    "An EncoderRack with every parameter perturbed, converted to HF, gives the same MLM logits to 1e-4."
    b = _batch(family)
    with torch.no_grad():
        ours = encoder_from_hf(_hf(family))
        for p in ours.parameters(): p.add_(0.05 * torch.randn_like(p))
        hf = encoder_to_hf(ours)
        assert type(hf) is type(_hf(family))
        assert (hf(**b).logits - ours(**b)).abs().max() <= 1e-4


def test_bert_model_with_pooler_both_ways():
    "A bare BertModel (hidden states + pooler) converts both ways with matching hidden states and pooled vectors."
    torch.manual_seed(1)
    hf, b = BertModel(BertConfig(**SMALL)).eval(), _batch('bert')
    with torch.no_grad():
        ours = encoder_from_hf(hf)
        out = hf(**b)
        assert (ours(**b) - out.last_hidden_state).abs().max() <= 1e-4
        assert (ours.pooled(**b) - out.pooler_output).abs().max() <= 1e-4
        for p in ours.parameters(): p.add_(0.05 * torch.randn_like(p))
        back = encoder_to_hf(ours)
        assert (back(**b).pooler_output - ours.pooled(**b)).abs().max() <= 1e-4
    assert sum(p.numel() for p in back.parameters()) == count_parameters(ours)


@pytest.mark.parametrize('bare', [lambda: DistilBertModel(DistilBertConfig(**SMALL_DISTIL)),
                                  lambda: ModernBertModel(ModernBertConfig(**SMALL_MODERN))])
def test_bare_models_without_pooler_both_ways(bare):
    "DistilBertModel and ModernBertModel (hidden states, no pooler) convert both ways with matching hidden states."
    torch.manual_seed(2)
    hf, b = bare().eval(), _batch('modernbert')
    with torch.no_grad():
        ours = encoder_from_hf(hf)
        assert ours.lm_head is None and ours.pooler is None
        assert (ours(**b) - hf(**b).last_hidden_state).abs().max() <= 1e-4
        for p in ours.parameters(): p.add_(0.05 * torch.randn_like(p))
        back = encoder_to_hf(ours)
        assert type(back) is type(hf) and (back(**b).last_hidden_state - ours(**b)).abs().max() <= 1e-4


def test_modernbert_layout_is_read_from_hf():
    "HF's per-layer types and RoPE bases become global_every, local_window and the two thetas; the window matters."
    hf, b = _hf('modernbert'), _batch('modernbert')
    ours = encoder_from_hf(hf).eval()
    assert (ours.cfg.global_every, ours.cfg.local_window, ours.cfg.rope_theta, ours.cfg.local_rope_theta) == (3, 4, 160_000.0, 10_000.0)
    assert [type(blk.norm1).__name__ for blk in ours.blocks] == ['Identity', 'LayerNorm', 'LayerNorm']
    with torch.no_grad():
        for blk in ours.blocks: blk.attn.window = None  # all global: no longer ModernBERT
        assert (ours(**b) - hf(**b).logits).abs().max() > 1e-2


def test_unconvertible_recipes_name_the_field():
    from stackwise.core import StackwiseError
    with pytest.raises(StackwiseError, match="norm_position='pre' \\(needs 'post'\\)"):
        encoder_to_hf(EncoderRack(load_config('encoder/bert_family/tiny', ['norm_position=pre'])))
    with pytest.raises(StackwiseError, match='has no pooler'):
        encoder_to_hf(EncoderRack(load_config('encoder/modernbert_family/tiny'), mlm_head=False, pooler=True))


@pytest.mark.parametrize('preset,heads,n', [
    ('encoder/bert_family/base', dict(mlm_head=False, pooler=True), 109_482_240),  # BertModel bert-base-uncased
    ('encoder/bert_family/large', dict(mlm_head=False, pooler=True), 335_141_888),  # BertModel bert-large-uncased
    ('encoder/bert_family/tiny', dict(mlm_head=False, pooler=True), 4_385_920),  # BertModel bert_uncased_L-2_H-128_A-2
    ('encoder/roberta_family/base', dict(mlm_head=True, pooler=False), 124_697_433),  # RobertaForMaskedLM roberta-base
    ('encoder/modernbert_family/base', dict(mlm_head=False, pooler=False), 149_014_272),  # ModernBertModel ModernBERT-base
    ('encoder/modernbert_family/large', dict(mlm_head=False, pooler=False), 394_781_696),  # ModernBertModel ModernBERT-large
    ('encoder/bert_family/modern', dict(mlm_head=False, pooler=False), 149_014_272)])
def test_published_parameter_counts(preset, heads, n):
    "The presets, counted as an EncoderRack on the meta device with the checkpoint's heads, give the published sizes."
    assert encoder_parameters(load_config(preset), **heads) == n


def test_roberta_positions_match_hf():
    "Positions count from pad_token_id + 1 and padding keeps pad_token_id, as HF's create_position_ids_from_input_ids."
    from transformers.models.roberta.modeling_roberta import RobertaEmbeddings
    ids = torch.tensor([[0, 5, 6, 2, 1, 1], [0, 7, 2, 1, 1, 1]])
    assert torch.equal(padding_position_ids(ids, 1), RobertaEmbeddings.create_position_ids_from_input_ids(ids, 1))


def test_bidirectional():
    "Changing the last token changes the logits of every earlier position (and does not once made causal)."
    torch.manual_seed(0)
    enc = EncoderRack(load_config('encoder/bert_family/tiny', ['vocab_size=100'])).eval()
    ids = torch.randint(0, 100, (2, 10))
    other = ids.clone(); other[:, -1] = (ids[:, -1] + 1) % 100
    with torch.no_grad():
        diff = (enc(ids)[:, :-1] - enc(other)[:, :-1]).abs().amax(-1)
        assert (diff > 1e-5).all()
        enc.causal = True
        assert (enc(ids)[:, :-1] - enc(other)[:, :-1]).abs().max() <= 1e-5


# RoBERTa publishes no tiny shape: its base recipe (positions after the padding id, one token type) at BERT tiny's size
TINY = {'encoder/bert_family/tiny': [], 'encoder/modernbert_family/tiny': [],
        'encoder/roberta_family/base': ['n_layers=2', 'd_model=128', 'n_heads=2', 'd_ff=512', 'max_seq_len=66']}


@pytest.mark.parametrize('preset', list(TINY))
def test_small_encoders_learn_mlm_in_50_steps(preset):
    "BERT, ModernBERT and RoBERTa at tiny sizes (vocabulary 1024) learn a fixed masked batch: MLM loss falls from ~ln V to under half."
    torch.manual_seed(0)
    V = 1024
    rack = EncoderRack(load_config(preset, [f'vocab_size={V}', 'max_seq_len=64', *TINY[preset]]))
    opt = torch.optim.AdamW(rack.parameters(), lr=2e-3)
    inp, lab = mlm_mask(torch.randint(5, V, (8, 64)), 4, V, p=0.3)
    losses = []
    for _ in range(50):
        loss = F.cross_entropy(rack(inp).flatten(0, 1), lab.flatten())
        opt.zero_grad(); loss.backward(); opt.step()
        losses.append(loss.item())
    assert losses[0] > 6 and losses[-1] < 0.5 * losses[0], losses[::10]


@pytest.mark.parametrize('heads', [dict(mlm_head=True, pooler=False), dict(mlm_head=False, pooler=True)])
def test_save_and_load_keeps_the_heads(tmp_path, heads):
    "An EncoderRack saved with save_rack comes back as an EncoderRack with the same heads and identical outputs."
    from stackwise.models.families import load_rack, save_rack
    torch.manual_seed(0)
    enc = EncoderRack(load_config('encoder/bert_family/tiny', ['vocab_size=100']), **heads).eval()
    again = load_rack(save_rack(enc, tmp_path)).eval()
    ids = torch.randint(0, 100, (2, 9))
    assert type(again) is EncoderRack and again.init_kwargs() == heads
    with torch.no_grad(): assert torch.equal(again(ids), enc(ids))
