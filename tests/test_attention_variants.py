"""Attention variants (MLA, linear attention, local/global layers) against naive references written
here from the weights alone, their causal/bidirectional switch, MLA's latent cache, and the plain fact
that a tiny Rack of each variant learns."""
import math

import pytest
import torch
import torch.nn.functional as F

from stackwise.models.attention import Attention, KVCache
from stackwise.models.attention_variants import MLA, LinearAttention
from stackwise.config import ModelConfig, load_config
from stackwise.models.rack import Rack
from stackwise.models.counting import count_parameters

TOL = 1e-5


def lin(layer, t):
    "A Linear layer applied by hand."
    return t @ layer.weight.T + (layer.bias if layer.bias is not None else 0)


def rotate(t, positions, theta=10000.0):
    "Rotate-half RoPE of t [..., T, r], frequencies computed here in float64."
    r = t.shape[-1]
    ang = positions[:, None].double() * theta ** (-torch.arange(0, r, 2).double() / r)
    cos, sin = ang.cos().float(), ang.sin().float()
    a, b = t[..., :r // 2], t[..., r // 2:]
    return torch.cat([a * cos - b * sin, b * cos + a * sin], -1)


def allowed_pairs(T, causal, window=None):
    "Which key j each query i may see, decided pair by pair."
    ok = torch.zeros(T, T, dtype=torch.bool)
    for i in range(T):
        for j in range(T):
            seen = j <= i if causal else True
            if window is not None: seen = seen and ((i - j < window) if causal else abs(i - j) <= window // 2)
            ok[i, j] = seen
    return ok


def mla_reference(m, x, causal, window=None):
    "MLA from its weights: RMS norms, decoupled RoPE, per-head explicit scores and softmax."
    B, T, _ = x.shape
    rms = lambda n, t: t / (t.pow(2).mean(-1, keepdim=True) + n.eps).sqrt() * n.weight
    pos = torch.arange(T)
    q = lin(m.q_b, rms(m.q_norm, lin(m.q_a, x))) if m.q_rank else lin(m.q, x)
    lat = lin(m.kv_a, x)
    c, k_pe = rms(m.kv_norm, lat[..., :m.kv_rank]), rotate(lat[..., m.kv_rank:], pos)
    kv, ok, heads = lin(m.kv_b, c), allowed_pairs(T, causal, window), []
    for h in range(m.n_heads):
        qh = q[..., h * m.head_dim:(h + 1) * m.head_dim]
        qh = torch.cat([qh[..., :m.nope_dim], rotate(qh[..., m.nope_dim:], pos)], -1)
        base = h * (m.nope_dim + m.v_dim)
        kh = torch.cat([kv[..., base:base + m.nope_dim], k_pe], -1)
        vh = kv[..., base + m.nope_dim:base + m.nope_dim + m.v_dim]
        scores = (qh @ kh.transpose(-1, -2) / math.sqrt(m.nope_dim + m.rope_dim)).masked_fill(~ok, float('-inf'))
        heads.append(torch.softmax(scores, -1) @ vh)
    return lin(m.out, torch.cat(heads, -1))


def mha_window_reference(a, x, causal, window):
    "Grouped-query attention with a sliding window: explicit scores over the allowed pairs."
    B, T, _ = x.shape
    hd, G = a.head_dim, a.n_heads // a.n_kv_heads
    qkv = lin(a.qkv, x)
    q, k, v = qkv.split([a.n_heads * hd, a.n_kv_heads * hd, a.n_kv_heads * hd], -1)
    ok, heads = allowed_pairs(T, causal, window), []
    for h in range(a.n_heads):
        g = h // G
        qh, kh, vh = q[..., h * hd:(h + 1) * hd], k[..., g * hd:(g + 1) * hd], v[..., g * hd:(g + 1) * hd]
        scores = (qh @ kh.transpose(-1, -2) / math.sqrt(hd)).masked_fill(~ok, float('-inf'))
        heads.append(torch.softmax(scores, -1) @ vh)
    return lin(a.out, torch.cat(heads, -1))


def linear_reference(m, x, causal, phi):
    "Linear attention with explicit loops: per query, the sums over the keys it may see."
    B, T, _ = x.shape
    hd, G = m.head_dim, m.n_heads // m.n_kv_heads
    q, k, v = lin(m.qkv, x).split([m.n_heads * hd, m.n_kv_heads * hd, m.n_kv_heads * hd], -1)
    q, k, v = (t.view(B, T, -1, hd) for t in (q, k, v))
    y = torch.zeros(B, T, m.n_heads, hd)
    for b in range(B):
        for h in range(m.n_heads):
            for i in range(T):
                S, z = torch.zeros(hd, hd), torch.zeros(hd)
                for j in range(i + 1 if causal else T):
                    S = S + torch.outer(phi(k[b, j, h // G]), v[b, j, h // G])
                    z = z + phi(k[b, j, h // G])
                y[b, i, h] = phi(q[b, i, h]) @ S / (phi(q[b, i, h]) @ z + m.eps)
    return lin(m.out, y.reshape(B, T, -1))


def mla_cfg(**kw):
    return ModelConfig(**{**dict(d_model=64, n_heads=4, attention='mla', kv_lora_rank=20, rope_head_dim=8,
                                 nope_head_dim=12, v_head_dim=10, positions='rope'), **kw})


@pytest.mark.parametrize('q_rank', [None, 24])
@pytest.mark.parametrize('causal', [True, False])
def test_mla_matches_reference(q_rank, causal):
    "MLA (with and without query compression) equals the written-out computation to 1e-5 in fp32."
    torch.manual_seed(0)
    m, x = MLA(mla_cfg(q_lora_rank=q_rank)), torch.randn(2, 7, 64)
    m.causal = causal
    with torch.no_grad(): assert (m(x) - mla_reference(m, x, causal)).abs().max() < TOL


@pytest.mark.parametrize('causal', [True, False])
def test_local_windows_match_reference(causal):
    "Local MHA/GQA and local MLA layers equal explicit sliding-window references to 1e-5."
    torch.manual_seed(0)
    x = torch.randn(2, 9, 64)
    a = Attention(ModelConfig(d_model=64, n_heads=8, n_kv_heads=2, local_window=4, global_every=2), layer=1)
    m = MLA(mla_cfg(local_window=3, global_every=2), layer=1)
    a.causal = m.causal = causal
    with torch.no_grad():
        assert (a(x) - mha_window_reference(a, x, causal, 4)).abs().max() < TOL
        assert (m(x) - mla_reference(m, x, causal, window=3)).abs().max() < TOL
    assert Attention(ModelConfig(d_model=64, n_heads=8, local_window=4, global_every=2), layer=2).window is None


@pytest.mark.parametrize('fmap,phi', [('elu1', lambda t: F.elu(t) + 1), ('relu', lambda t: t.clamp_min(0))])
@pytest.mark.parametrize('n_kv', [4, 2])
@pytest.mark.parametrize('causal', [True, False])
def test_linear_matches_loop_reference(fmap, phi, n_kv, causal):
    "Linear attention (prefix sums when causal, full sums when not; MHA and GQA) equals per-position loops to 1e-5."
    torch.manual_seed(0)
    m = LinearAttention(ModelConfig(d_model=32, n_heads=4, n_kv_heads=n_kv, attention='linear', feature_map=fmap, positions='none'))
    m.causal, x = causal, torch.randn(2, 6, 32)
    with torch.no_grad(): assert (m(x) - linear_reference(m, x, causal, phi)).abs().max() < TOL


@pytest.mark.parametrize('make', [lambda: MLA(mla_cfg()),
                                  lambda: LinearAttention(ModelConfig(d_model=64, n_heads=4, n_kv_heads=2, attention='linear')),
                                  lambda: Attention(ModelConfig(d_model=64, n_heads=4, local_window=3, global_every=2), layer=1)],
                         ids=['mla', 'linear', 'local'])
def test_causal_hides_the_future_bidirectional_does_not(make):
    "Causal: changing the last token leaves earlier outputs unchanged; bidirectional: it changes them."
    torch.manual_seed(0)
    m, x = make(), torch.randn(2, 8, 64)
    x2 = x.clone(); x2[:, -1] = torch.randn(2, 64)
    with torch.no_grad():
        m.causal = True
        assert (m(x)[:, :-1] - m(x2)[:, :-1]).abs().max() < 1e-6
        m.causal = False
        assert (m(x)[:, -3:-1] - m(x2)[:, -3:-1]).abs().max() > 1e-3  # within the window of the changed token


@pytest.mark.parametrize('attention', ['mla', 'linear'])
def test_rack_decoding_with_cache_equals_full_forward(attention):
    "A RoPE Rack of MLA (latent cache) or linear attention, decoded token by token, gives the full forward's logits."
    torch.manual_seed(0)
    extra = dict(kv_lora_rank=16, rope_head_dim=4) if attention == 'mla' else {}
    rack = Rack(ModelConfig(vocab_size=50, d_model=32, n_heads=4, n_layers=2, max_seq_len=16, positions='rope',
                            norm='rmsnorm', attention=attention, **extra)).eval()
    ids, cache = torch.randint(0, 50, (2, 8)), KVCache()
    with torch.no_grad():
        full = rack(ids)
        steps = torch.cat([rack(ids[:, :3], cache=cache)] + [rack(ids[:, t:t + 1], cache=cache) for t in range(3, 8)], 1)
    assert (steps - full).abs().max() < TOL
    if attention == 'mla': assert cache.k[0].shape == (2, 1, 8, 16) and cache.v[0].shape == (2, 1, 8, 4)


@pytest.mark.parametrize('over,causal', [(dict(attention='mha', n_kv_heads=2, local_window=4, global_every=2), False),
                                         (dict(attention='mla', kv_lora_rank=16, q_lora_rank=16), True),
                                         (dict(attention='linear', n_kv_heads=2), True)], ids=['mha-local-bidir', 'mla-causal', 'linear-causal'])
def test_tiny_rack_learns(over, causal):
    "A tiny Rack of each variant lowers its loss on a fixed batch in 30 steps; the Rack's causal switch reaches its layers."
    torch.manual_seed(0)
    rack = Rack(ModelConfig(vocab_size=64, d_model=32, n_heads=4, n_layers=2, max_seq_len=16, positions='rope', **over))
    rack.causal = not causal
    rack.causal = causal
    assert all(b.attn.causal == causal for b in rack.blocks)  # the Rack's switch reaches every variant
    ids = torch.randint(0, 64, (4, 16))
    opt = torch.optim.AdamW(rack.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        loss = F.cross_entropy(rack(ids).flatten(0, 1), ids.flatten())  # predict the token itself: learnable either way
        opt.zero_grad(); loss.backward(); opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]


def test_parameter_counts():
    "Existing presets keep their counts; an MLA layer has exactly the projections DeepSeek-V2 describes."
    assert count_parameters(load_config('decoder/gpt2_family/small')) == 124_439_808
    cfg = mla_cfg(q_lora_rank=24, bias=False)
    d, H, r = 64, 4, cfg.rope_head_dim
    expected = (d * 24 + 24 + 24 * H * (12 + r)  # q_a, q_norm, q_b
                + d * (20 + r) + 20 + 20 * H * (12 + 10)  # kv_a, kv_norm, kv_b
                + H * 10 * d)  # out
    assert sum(p.numel() for p in MLA(cfg).parameters()) == expected


@pytest.mark.parametrize('interleaved,yarn,mscale_all_dim', [(True, True, 0.707), (True, False, 0), (False, False, 0), (False, True, 0.707), (True, True, 0.3)])
def test_mla_matches_transformers_deepseek_v3_attention(interleaved, yarn, mscale_all_dim):
    """stackwise's MLA with DeepSeek's layout (rope dims in adjacent pairs, latent RMSNorm eps 1e-6) and YaRN (frequencies, cos/sin
    factor, the softmax's mscale^2) computes transformers' DeepseekV3Attention: same weights, same inputs, max |dy| <= 1e-5."""
    from transformers import DeepseekV3Config
    from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3Attention, DeepseekV3RotaryEmbedding
    scaling = dict(factor=4.0, beta_fast=32.0, beta_slow=1.0, mscale=0.707, mscale_all_dim=mscale_all_dim)  # unequal: a cos/sin factor too
    rope = dict(rope_type='yarn', rope_theta=10000.0, original_max_position_embeddings=32, **scaling) if yarn else dict(rope_type='default', rope_theta=10000.0)
    hc = DeepseekV3Config(hidden_size=64, num_attention_heads=4, num_key_value_heads=4, q_lora_rank=24, kv_lora_rank=32, qk_rope_head_dim=8,
                          qk_nope_head_dim=16, v_head_dim=16, head_dim=8, max_position_embeddings=128, rope_interleave=interleaved,
                          rope_parameters=rope, attention_bias=False, attention_dropout=0.0)
    hc._attn_implementation = 'eager'
    torch.manual_seed(0)
    hf, rot = DeepseekV3Attention(hc, 0).eval(), DeepseekV3RotaryEmbedding(hc)
    for p in hf.parameters(): p.data.normal_(0, 0.2)
    cfg = ModelConfig(attention='mla', d_model=64, n_heads=4, q_lora_rank=24, kv_lora_rank=32, rope_head_dim=8, nope_head_dim=16, v_head_dim=16,
                      positions='rope', bias=False, max_seq_len=128, mla_rope_interleaved=interleaved, mla_norm_eps=1e-6,
                      rope_scaling=dict(type='yarn', original_max_seq_len=32, **scaling) if yarn else None)
    ours = MLA(cfg).eval()
    names = dict(q_a='q_a_proj', q_norm='q_a_layernorm', q_b='q_b_proj', kv_a='kv_a_proj_with_mqa', kv_norm='kv_a_layernorm', kv_b='kv_b_proj', out='o_proj')
    ours.load_state_dict({f'{o}.weight': getattr(hf, h).weight for o, h in names.items()})
    x, T = torch.randn(2, 40, 64), 40  # past the original context, where YaRN's interpolation matters
    mask = torch.full((T, T), float('-inf')).triu(1)[None, None]
    with torch.no_grad():
        want = hf(x, rot(x, torch.arange(T)[None].expand(2, -1)), mask)[0]
        got = ours(x)
    assert (got - want).abs().max().item() <= 1e-5, (got - want).abs().max().item()
    if interleaved:  # the layout is not a relabelling: stackwise's halves pairing gives other outputs
        ours.rope_fn = MLA(ModelConfig(**{**cfg.__dict__, 'mla_rope_interleaved': False})).rope_fn
        with torch.no_grad(): assert (ours(x) - want).abs().max().item() > 1e-4
