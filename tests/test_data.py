"""Data and tokenization on data the tests make themselves: the registry, every local file format,
the offline hub error, synthetic data of known entropy, tokenizers, packing and the collators."""
import json, math, os, subprocess, sys, time
from collections import Counter
from unittest.mock import patch

import numpy as np
import pytest
import torch

from stackwise.core import StackwiseError
from stackwise.data import sources as sd
from stackwise.data.collators import IGNORE, ClassificationCollator, CLMCollator, MaskDiffusionCollator, MLMCollator, NERCollator, SpanQACollator
from stackwise.train.losses import diffusion_loss
from stackwise.data.masking import NOISE_SCHEDULES, elbo_weight, mask_ratio
from stackwise.data.packing import BlockLoader, TokenBlocks, load_tokens, pack_tokens, packed_corpus, stream_blocks
from stackwise.data.tokenization import ByteTokenizer, bits_per_byte, get_tokenizer, train_bpe, utf8_bytes

SEED_DATASETS = {'wikitext2', 'wikitext103', 'openwebtext', 'tinyshakespeare', 'eurlex', 'europarl_fr_en', 'sst2', 'mnli',
                 'snli', 'stsb', 'squad', 'squad_v2', 'conll2003', 'lambada', 'piqa', 'hellaswag', 'cnn_dailymail',
                 'wmt14_en_de', 'reuters'}


@pytest.fixture(autouse=True)
def _no_hub(monkeypatch):
    "Every test runs as on these machines: the hub switched off, no STACKWISE_DATA unless a test sets it."
    monkeypatch.setenv('HF_HUB_OFFLINE', '1'); monkeypatch.setenv('HF_DATASETS_OFFLINE', '1')
    monkeypatch.delenv('STACKWISE_DATA', raising=False)


# --- the registry ---------------------------------------------------------------------------------

def test_registry_describes_every_seed_dataset():
    "Every dataset the seeds name has a complete entry; local layouts use a known format."
    reg = sd.registry()
    assert SEED_DATASETS <= set(reg)
    for name, spec in reg.items():
        assert {'task', 'metric', 'license', 'hub', 'fields', 'description'} <= set(spec), name
        assert spec['task'] in sd.TASK_COLUMNS and spec['hub']['id'] and spec['hub']['splits'], name
        if 'local' in spec:
            assert spec['local']['format'] in ('text', 'tsv', 'csv', 'jsonl', 'hellaswag6', 'parallel', 'squad_json', 'conll'), name
            assert set(spec['local'].get('counts', {})) <= set(spec['local']['files']), name
    assert reg['openwebtext']['hub']['streaming'] and reg['wmt14_en_de']['hub']['streaming']


# --- every local format, on tiny files written here ------------------------------------------------

def _write(root, rel, text):
    p = root/rel; p.parent.mkdir(parents=True, exist_ok=True); p.write_text(text, encoding='utf-8'); return p


def test_text_formats(tmp_path):
    "Line-per-row text keeps the file's characters; a whole-file corpus is one row."
    _write(tmp_path, 'wikitext2/valid.txt', ' \n = Title = \n a b <unk> c \n')
    ds = sd.load_dataset('wikitext2', 'validation', root=tmp_path)
    assert ds.column_names == ['text'] and ''.join(ds['text']) == ' \n = Title = \n a b <unk> c \n'
    assert sum(len(t.split()) + 1 for t in ds['text']) == 10  # WikiText's token count: words + one <eos> per line
    _write(tmp_path, 'tinyshakespeare/input.txt', 'First Citizen:\nSpeak.\n\nAll:\nSpeak, speak.\n')
    ts = sd.load_dataset('tinyshakespeare', 'train', root=tmp_path)
    assert ts.num_rows == 1 and ts[0]['text'] == 'First Citizen:\nSpeak.\n\nAll:\nSpeak, speak.\n'


def test_tsv_formats_keep_bare_quotes(tmp_path):
    "GLUE TSVs: a bare quote does not merge rows; unlabeled test rows get -1; STS-B scores are floats."
    _write(tmp_path, 'sst2/train.tsv', 'sentence\tlabel\nthe " film \t1\nbad "\t0\nfine\t1\n')
    _write(tmp_path, 'sst2/test.tsv', 'index\tsentence\n0\tuneasy mishmash\n')
    ds = sd.load_dataset('sst2', 'train', root=tmp_path)
    assert ds.num_rows == 3 and ds['label'] == [1, 0, 1] and ds[0]['text'] == 'the " film '
    assert sd.load_dataset('sst2', 'test', root=tmp_path)[0] == {'text': 'uneasy mishmash', 'label': -1}
    _write(tmp_path, 'stsb/dev.tsv', 'index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n'
                                     '0\tmain-captions\tMSRvid\t2012test\t0000\tnone\tnone\tA man.\tA guy.\t4.750\n')
    st = sd.load_dataset('stsb', 'validation', root=tmp_path)
    assert st[0] == {'sentence1': 'A man.', 'sentence2': 'A guy.', 'label': 4.75}


def test_jsonl_formats(tmp_path):
    "JSON lines: Reuters split by its `split` field; NLI string labels become indices; PIQA's columns renamed."
    rows = [dict(id=1, split='train', labels=['cocoa'], title='T', text='a'), dict(id=2, split='test', labels=['grain', 'wheat'], title='U', text='b'),
            dict(id=3, split='train', labels=['earn'], title='V', text='c')]
    _write(tmp_path, 'reuters21578/reuters_modapte_90.jsonl', ''.join(json.dumps(r) + '\n' for r in rows))
    tr = sd.load_dataset('reuters', 'train', root=tmp_path)
    assert tr.num_rows == 2 and tr['labels'] == [['cocoa'], ['earn']] and sorted(tr.column_names) == ['labels', 'text']
    assert sd.load_dataset('reuters', 'test', root=tmp_path)['labels'] == [['grain', 'wheat']]
    _write(tmp_path, 'nli/mnli_dev_matched.jsonl', '{"premise": "p", "hypothesis": "h", "label": "contradiction"}\n')
    assert sd.load_dataset('mnli', 'validation_matched', root=tmp_path)[0] == dict(premise='p', hypothesis='h', label=2)
    _write(tmp_path, 'lm_eval/piqa.jsonl', '{"choices": ["x", "y"], "gold": 1, "query": "Question: q\\n"}\n')
    assert sd.load_dataset('piqa', 'validation', root=tmp_path)[0] == dict(context='Question: q\n', choices=['x', 'y'], label=1)
    _write(tmp_path, 'lm_eval/lambada_openai.jsonl', '{"context": "the cat", "continuation": " sat"}\n')
    assert sd.load_dataset('lambada', 'test', root=tmp_path)[0] == dict(context='the cat', continuation=' sat')


def test_hellaswag_six_line_format(tmp_path):
    "HellaSwag's 6-line records: context, gold index, four endings; a truncated file is refused."
    rec = 'Roofing: A man is on a roof. he\n3\nskis.\ntiles.\ncube.\nroofing.\n'
    _write(tmp_path, 'hellaswag/hellaswag_val_full.txt', rec * 2)
    ds = sd.load_dataset('hellaswag', 'validation', root=tmp_path)
    assert ds.num_rows == 2 and ds[0] == dict(context='Roofing: A man is on a roof. he', choices=['skis.', 'tiles.', 'cube.', 'roofing.'], label=3)
    _write(tmp_path, 'hellaswag/hellaswag_val_full.txt', rec + 'extra\n')
    with pytest.raises(StackwiseError, match='not a multiple of 6'): sd.load_dataset('hellaswag', 'validation', root=tmp_path)


def test_parallel_format(tmp_path):
    "Europarl: two line-aligned files become source/target pairs; misaligned files are refused."
    _write(tmp_path, 'europarl_fr_en/europarl-v7.fr-en.first3000.fr', 'Reprise de la session\nBonjour')
    _write(tmp_path, 'europarl_fr_en/europarl-v7.fr-en.first3000.en', 'Resumption of the session\nHello')
    ds = sd.load_dataset('europarl_fr_en', 'train', root=tmp_path)
    assert ds[1] == dict(source='Bonjour', target='Hello')
    _write(tmp_path, 'europarl_fr_en/europarl-v7.fr-en.first3000.en', 'one line')
    with pytest.raises(StackwiseError, match='not aligned'): sd.load_dataset('europarl_fr_en', 'train', root=tmp_path)


def test_relative_data_root_is_from_the_project_root(monkeypatch, tmp_path):
    monkeypatch.setenv('STACKWISE_DATA', 'some/data'); monkeypatch.chdir(tmp_path)
    assert sd.data_root() == sd.data_root('some/data') and sd.data_root().is_absolute()


# --- the hub, offline and online ---------------------------------------------------------------------

def test_offline_hub_fails_fast_with_one_clear_message():
    "In a fresh process with the hub switched off, a hub-only dataset fails within a second, naming the fix."
    code = ('import time, datasets; from stackwise.data.sources import load_dataset; from stackwise.core import StackwiseError\n'
            't = time.perf_counter()\ntry: load_dataset("openwebtext")\nexcept StackwiseError as e: print(time.perf_counter() - t); print(e)')
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=120,
                       env={**os.environ, 'HF_HUB_OFFLINE': '1', 'HF_DATASETS_OFFLINE': '1'})
    secs, msg = r.stdout.split('\n', 1)
    assert float(secs) < 1.0, secs
    assert "dataset 'openwebtext'" in msg and 'Skylion007/openwebtext' in msg and 'STACKWISE_DATA' in msg
    assert 'Tried:' in msg and 'To provide it' in msg and 'HF_HUB_OFFLINE' in msg and 'synthetic_fallback=True' in msg
    assert msg.count('\n') == 1, 'one message, not a traceback'


def test_offline_in_process_never_calls_the_hub():
    with patch('datasets.load_dataset', side_effect=AssertionError('network')) as m:
        with pytest.raises(StackwiseError, match="dataset 'squad'"):
            with patch('datasets.config.HF_HUB_OFFLINE', False): sd.load_dataset('squad', 'validation')
    m.assert_not_called()


def test_online_it_is_the_real_load_dataset_call(monkeypatch):
    "With the hub switched on, the loader makes the real `datasets.load_dataset` call, streaming big corpora."
    monkeypatch.delenv('HF_HUB_OFFLINE'); monkeypatch.delenv('HF_DATASETS_OFFLINE')
    import datasets
    fake = datasets.Dataset.from_dict(dict(text=['hello'], url=['u']))
    with patch('huggingface_hub.constants.HF_HUB_OFFLINE', False), patch('datasets.config.HF_HUB_OFFLINE', False), \
         patch('datasets.load_dataset', return_value=fake) as m:
        ds = sd.load_dataset('openwebtext')
        m.assert_called_once_with('Skylion007/openwebtext', None, split='train', streaming=True)
        assert ds.column_names == ['text']
        sd.load_dataset('sst2', 'validation')
        m.assert_called_with('nyu-mll/glue', 'sst2', split='validation', streaming=False)


def test_synthetic_fallback_is_loud_and_lm_only(capsys):
    with pytest.warns(UserWarning, match='replaced by synthetic'):
        ds = sd.load_dataset('openwebtext', synthetic_fallback=True)
    assert 'USING SYNTHETIC DATA INSTEAD' in capsys.readouterr().err and ds.num_rows > 0
    with pytest.raises(StackwiseError, match="dataset 'squad'"): sd.load_dataset('squad', 'train', synthetic_fallback=True)


# --- synthetic data ------------------------------------------------------------------------------------

def test_markov_entropy_rate_matches_a_long_sample():
    "Order 2: the exact entropy rate equals the empirical conditional entropy of a long stationary sample."
    src = sd.MarkovSource(alphabet='abcd', order=2, concentration=0.7, seed=5)
    x = src.sample(400, 2500, seed=1)
    ctx = x[:, :-2] * 4 + x[:, 1:-1]
    counts = np.zeros((16, 4)); np.add.at(counts, (ctx.ravel(), x[:, 2:].ravel()), 1)
    p = counts / counts.sum(1, keepdims=True)
    h = -(counts / counts.sum() * np.log(np.where(p > 0, p, 1))).sum()
    assert abs(h - src.entropy_rate()) < 0.01
    assert 0 < src.entropy_rate() < math.log(4)
    assert np.array_equal(src.sample(3, 50, seed=2), sd.MarkovSource(alphabet='abcd', order=2, concentration=0.7, seed=5).sample(3, 50, seed=2))


def test_synthetic_multilabel_and_single_label_variant():
    ds = sd.synthetic_multilabel(n_docs=400, n_topics=6, seed=3)
    freq = sd.label_frequencies(ds['labels'])
    assert [l for l, _ in freq.most_common(2)] == ['topic0', 'topic1']  # Zipf popularity
    assert any(len(ls) > 1 for ls in ds['labels']) and all(1 <= len(ls) <= 3 for ls in ds['labels'])
    single = sd.single_label(ds)
    for r in single: assert r['label'] in r['labels'] and all(freq[r['label']] >= freq[l] for l in r['labels'])
    with pytest.raises(StackwiseError, match='no labels'): sd.most_frequent_label([], freq)


# --- tokenizers -------------------------------------------------------------------------------------------

def test_byte_tokenizer_round_trip():
    bt = ByteTokenizer()
    text = 'Ünïcödé ✓ and ASCII'
    assert bt.decode(bt.encode([text])[0]) == text and bt.vocab_size == 260
    ids, spans = bt.offsets(text)
    assert ids == bt.encode([text])[0] and [text[a:b] for a, b in spans][:2] == ['Ü', 'Ü']


def test_bpe_training_round_trip_and_cache(tmp_path):
    corpus = [f'the {w} sat on the mat near the {w}' for w in ('cat', 'dog', 'owl', 'bat')] * 30
    tok = train_bpe(corpus, vocab_size=320, cache=tmp_path)
    (cached,) = tmp_path.glob('bpe-*.json')
    for text in corpus[:4] + ['unseen wörds ∑ 123']: assert tok.decode(tok.encode([text])[0]) == text
    assert len(tok.encode([corpus[0]])[0]) < len(corpus[0]) / 2  # merges learned
    with patch('tokenizers.Tokenizer.train_from_iterator', side_effect=AssertionError('trained again')):
        assert train_bpe(corpus, vocab_size=320, cache=tmp_path).fingerprint() == tok.fingerprint()
    assert get_tokenizer(str(cached)).encode(['the cat'])[0] == tok.encode(['the cat'])[0]
    fresh = train_bpe((t for t in corpus), vocab_size=320, cache=tmp_path/'gen')  # a one-shot generator trains the same BPE
    assert fresh.vocab_size == tok.vocab_size > 260 and fresh.encode([corpus[0]]) == tok.encode([corpus[0]])


def test_pretrained_tokenizer_offline_error():
    with patch('huggingface_hub.constants.HF_HUB_OFFLINE', True):
        t = time.perf_counter()
        with pytest.raises(StackwiseError, match="tokenizer 'openai-community/gpt2' could not be loaded.*HF_HUB_OFFLINE"):
            get_tokenizer('gpt2')
        assert time.perf_counter() - t < 5


def test_bits_per_byte_arithmetic():
    "Cross-entropy per byte in bits: the same uniform-over-bytes model gives 8 bits whatever the token length."
    assert bits_per_byte(math.log(256), 100, 100) == pytest.approx(8.0)
    assert bits_per_byte(4 * math.log(256), 25, 100) == pytest.approx(8.0)  # 4-byte tokens, 4x the loss each
    assert bits_per_byte(math.log(2), 10, 10) == pytest.approx(1.0)
    assert utf8_bytes(['é', 'ab']) == 4


# --- packing -----------------------------------------------------------------------------------------------

def test_packing_is_deterministic_and_cached(tmp_path):
    import datasets
    bt = ByteTokenizer()
    ds = datasets.Dataset.from_dict(dict(text=['first doc', 'second', 'third one here']))
    a = pack_tokens(ds['text'], bt, tmp_path/'a.bin', progress=False)
    b = pack_tokens(ds['text'], bt, tmp_path/'b.bin', progress=False)
    assert a.read_bytes() == b.read_bytes() and load_tokens(a).dtype == np.uint16
    toks = load_tokens(a)
    assert len(toks) == sum(len(t) + 1 for t in ds['text']) and (toks == bt.eos_token_id).sum() == 3
    cached = packed_corpus(ds, bt, cache=tmp_path/'c', progress=False)
    with patch('stackwise.data.packing.pack_tokens', side_effect=AssertionError('tokenized again')):
        assert np.array_equal(packed_corpus(ds, bt, cache=tmp_path/'c', progress=False), cached)


def test_a_failed_pack_leaves_nothing(tmp_path):
    bt = ByteTokenizer()
    def texts():
        yield 'fine'; raise RuntimeError('disk full')
    with pytest.raises(RuntimeError): pack_tokens(texts(), bt, tmp_path/'x.bin', batch_size=1, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_block_loader_resumes_exactly():
    "Stop anywhere (even across an epoch), restore the position in a fresh loader: the same next batches."
    blocks = TokenBlocks(np.arange(1001), seq_len=10)
    ref = iter(BlockLoader(blocks, 16, seed=7))
    expected = [next(ref) for _ in range(20)]  # 6 batches per epoch: crosses three epochs
    for stop in (0, 3, 6, 13):
        a = BlockLoader(blocks, 16, seed=7); it = iter(a)
        for _ in range(stop): next(it)
        b = BlockLoader(blocks, 16, seed=123); b.load_state_dict(json.loads(json.dumps(a.state_dict())))
        it_b = iter(b)
        assert all(torch.equal(next(it_b), x) for x in expected[stop:])
    e0, e1 = (torch.cat(expected[i:i + 6])[:, 0].tolist() for i in (0, 6))
    assert len(set(e0)) == 96 and e0 != e1  # no repeats within an epoch; a new order each epoch


def test_streaming_matches_packing():
    bt = ByteTokenizer()
    docs = [f'document number {i} ' * (i % 3 + 1) for i in range(30)]
    flat = np.array([t for ids in bt.encode(docs) for t in ids + [bt.eos_token_id]])
    packed = [b.tolist() for b in TokenBlocks(flat, 16)]
    assert [b.tolist() for b in stream_blocks(iter(docs), bt, 16, batch_size=4)] == packed
    assert [b.tolist() for b in stream_blocks(docs, bt, 16, skip=5)] == packed[5:]


# --- collators ----------------------------------------------------------------------------------------------

def test_clm_labels_are_the_next_token():
    b = CLMCollator(pad_id=0)([[1, 2, 3, 4], [5, 6]])
    assert b['input_ids'].tolist() == [[1, 2, 3], [5, 6, 0]]
    assert b['labels'].tolist() == [[2, 3, 4], [6, IGNORE, IGNORE]]


def test_mlm_ratios_and_special_tokens():
    "15% targets, of which 80% <mask>, 10% random, 10% kept; padding and specials never masked."
    bt = ByteTokenizer()
    seqs = [torch.cat([torch.tensor([bt.bos_token_id]), torch.randint(0, 256, (int(n),))]) for n in torch.randint(300, 600, (64,))]
    b = MLMCollator(bt.mask_token_id, bt.vocab_size, pad_id=bt.pad_token_id, special_ids=(bt.bos_token_id,), seed=1)(seqs)
    tgt = b['labels'] != IGNORE
    assert not tgt[:, 0].any() and not tgt[b['attention_mask'] == 0].any()
    assert abs(tgt.sum() / b['attention_mask'][:, 1:].sum() - 0.15) < 0.01
    orig = torch.where(tgt, b['labels'], 0)
    assert abs((b['input_ids'] == bt.mask_token_id)[tgt].float().mean() - 0.8) < 0.02
    assert abs(((b['input_ids'] != bt.mask_token_id) & (b['input_ids'] != orig))[tgt].float().mean() - 0.1) < 0.02


@pytest.mark.parametrize('schedule', NOISE_SCHEDULES)
def test_mask_diffusion_ratios_and_elbo_weights(schedule):
    "Each sequence is masked at its schedule's ratio, inside 15%..90%; the ELBO weight is d log m / dt and integrates to ln(hi/lo)."
    col = MaskDiffusionCollator(mask_token_id=259, schedule=schedule, seed=0)
    b = col(list(torch.randint(0, 256, (16, 4000))))
    assert ((b['mask_ratio'] >= 0.15) & (b['mask_ratio'] <= 0.90)).all()
    assert ((b['labels'] != IGNORE).float().mean(1) - b['mask_ratio']).abs().max() < 0.03
    t = torch.linspace(0.01, 0.99, 50, dtype=torch.float64)
    fd = (mask_ratio(t + 1e-6, schedule).log() - mask_ratio(t - 1e-6, schedule).log()) / 2e-6
    assert torch.allclose(elbo_weight(t, schedule), fd, atol=1e-5)
    u = (torch.arange(200_000, dtype=torch.float64) + 0.5) / 200_000
    assert elbo_weight(u, schedule).mean().item() == pytest.approx(math.log(0.9 / 0.15), rel=1e-4)
    assert torch.allclose(b['weight'], elbo_weight(b['t'], schedule))


def test_diffusion_loss_matches_a_naive_loop():
    torch.manual_seed(0)
    logits, labels = torch.randn(4, 6, 9), torch.randint(0, 9, (4, 6))
    labels[torch.rand(4, 6) < 0.5] = IGNORE
    w, mask = torch.rand(4) * 3, torch.tensor([[1] * 6, [1] * 4 + [0] * 2, [1] * 6, [1] * 5 + [0]])
    naive = sum(w[i] * sum(-torch.log_softmax(logits[i, j], -1)[labels[i, j]] for j in range(6) if labels[i, j] != IGNORE) / mask[i].sum()
                for i in range(4)) / 4
    assert diffusion_loss(logits, labels, w, mask).item() == pytest.approx(float(naive), rel=1e-5)


def test_classification_toggles_multi_and_single_label():
    bt = ByteTokenizer()
    ds = sd.synthetic_multilabel(n_docs=50, seed=0)
    names, freq = sorted(sd.label_frequencies(ds['labels'])), sd.label_frequencies(ds['labels'])
    rows = [ds[i] for i in range(8)]
    col = ClassificationCollator(bt, names, freq=freq, max_len=32)
    multi = col(rows)
    assert multi['labels'].dtype == torch.float and multi['input_ids'].shape == (8, 32)
    col.mode = 'single'
    single = col(rows)['labels']
    assert single.dtype == torch.long and [names[i] for i in single] == [sd.most_frequent_label(r['labels'], freq) for r in rows]
    col.mode = 'multi'
    assert torch.equal(col(rows)['labels'], multi['labels'])
    with pytest.raises(StackwiseError, match="'multi' or 'single'"): col.mode = 'both'


def test_span_qa_positions_cover_the_answer(tmp_path):
    bt = ByteTokenizer()
    bpe = train_bpe(['Paris is the capital of France.', 'What is the capital of France?'] * 10, vocab_size=300, cache=tmp_path)
    row = dict(question='What is the capital?', context='Paris is the capital of France.', answers=dict(text=['France'], answer_start=[24]))
    for tok in (bt, bpe):
        b = SpanQACollator(tok)([row])
        s, e = b['labels'][0].tolist()
        assert tok.decode(b['input_ids'][0, s:e + 1]).strip() == 'France'
        assert b['input_ids'][0, 0] == tok.bos_token_id


def test_ner_alignment_first_piece_gets_the_tag(tmp_path):
    bpe = train_bpe(['EU rejects German call to boycott British lamb'] * 20, vocab_size=290, cache=tmp_path)
    row = dict(tokens=['EU', 'rejects', 'Germanic', 'call'], ner_tags=[3, 0, 7, 0])
    lab = NERCollator(bpe)([row])['labels'][0].tolist()
    assert [l for l in lab if l != IGNORE] == [3, 0, 7, 0]  # exactly one labelled piece per word, in order
    all_lab = NERCollator(bpe, label_all_tokens=True)([row])['labels'][0].tolist()
    assert all_lab.count(7) == len([t for t in bpe.offsets(' '.join(row['tokens']))[1] if 12 <= t[0] < 20 and t[1] > 12 and
                                    ' '.join(row['tokens'])[t[0]:t[1]].strip()])


# --- the command line --------------------------------------------------------------------------------------

def test_cli_data_list_and_check(tmp_path, capsys):
    "`stackwise data list` shows the registry; `data check` counts local copies and fails loudly on a mismatch."
    from stackwise.cli import main
    assert main(['data', 'list', '--data', str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert 'openwebtext' in out and 'Skylion007/openwebtext' in out and 'present' in out
    assert main(['data', 'check', '--data', str(tmp_path)]) == 1
    assert 'no registered dataset has its files' in capsys.readouterr().err
    _write(tmp_path, 'sst2/dev.tsv', 'sentence\tlabel\n' + 'good \t1\n' * 872)
    assert main(['data', 'check', '--data', str(tmp_path)]) == 0
    assert '1 counts match the registry' in capsys.readouterr().out
    _write(tmp_path, 'sst2/train.tsv', 'sentence\tlabel\nonly one row \t1\n')
    assert main(['data', 'check', 'sst2', '--data', str(tmp_path)]) == 1
    assert 'sst2/train rows 1 != 67349' in capsys.readouterr().err


def test_every_model_family_has_a_tokenizer():
    "Seed 000's auto-select: every preset's family maps to a tokenizer (a hub name, or bytes)."
    from stackwise.config import list_presets, load_config
    from stackwise.data.tokenization import FAMILY_TOKENIZERS
    assert {load_config(p).family for p in list_presets()} <= set(FAMILY_TOKENIZERS)
    assert get_tokenizer('bdh').name == 'bytes'


# --- nanoGPT's shakespeare_char: characters, a held-out end, damaged files ------------------------------------

SHAKES = 'First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n\n' * 60  # ~5 KB


@pytest.fixture
def shakes_root(tmp_path, monkeypatch):
    "A data root laid out like $STACKWISE_DATA with a few KB of Tiny Shakespeare, and a packed-token cache of its own."
    _write(tmp_path/'data', 'tinyshakespeare/input.txt', SHAKES)
    monkeypatch.setenv('STACKWISE_DATA', str(tmp_path/'data')); monkeypatch.setenv('STACKWISE_CACHE', str(tmp_path/'cache'))
    return tmp_path/'data'


def test_char_tokenizer_is_nanogpts_vocabulary():
    "Ids by sorted distinct character, no <eos>; <mask> only when asked, after the characters; unknown characters refused by name."
    from stackwise.data.tokenization import CharTokenizer, char_tokenizer
    tok = char_tokenizer([SHAKES[:len(SHAKES) // 2], SHAKES[len(SHAKES) // 2:]])
    chars = sorted(set(SHAKES))
    assert tok.chars == ''.join(chars) and tok.vocab_size == len(chars)
    assert tok.encode(['Speak']) == [[chars.index(c) for c in 'Speak']] and tok.decode(tok.encode([SHAKES])[0]) == SHAKES
    assert (tok.eos_token_id, tok.mask_token_id, tok.pad_token_id) == (None, None, None)
    masked = char_tokenizer(SHAKES, mask=True)
    assert masked.mask_token_id == len(chars) and masked.vocab_size == len(chars) + 1 and masked.encode(['All']) == tok.encode(['All'])
    assert masked.fingerprint() != tok.fingerprint() != char_tokenizer('abc').fingerprint()
    with pytest.raises(StackwiseError, match=r"character 'Z' \(U\+005A, position 4 .*not in this tokenizer's \d+-character vocabulary.*char_tokenizer"):
        tok.encode(['All Z'])
    assert get_tokenizer('chars', texts=[SHAKES]).chars == tok.chars
    with pytest.raises(StackwiseError, match='pass texts='): get_tokenizer('chars')


def test_char_tokenizer_saves_and_loads(tmp_path):
    "A character vocabulary is saved as JSON and read back by get_tokenizer, with the same ids and fingerprint."
    from stackwise.data.tokenization import CharTokenizer, char_tokenizer
    tok = char_tokenizer(SHAKES, mask=True)
    back = get_tokenizer(str(tok.save(tmp_path/'tokenizer.json')))
    assert isinstance(back, CharTokenizer) and back.fingerprint() == tok.fingerprint() and back.encode([SHAKES]) == tok.encode([SHAKES])
    assert back.mask_token_id == tok.mask_token_id


def test_packing_a_char_corpus_has_no_eos(tmp_path):
    "A tokenizer without <eos> packs one continuous stream; one with it still ends every document with it."
    from stackwise.data.tokenization import char_tokenizer
    tok = char_tokenizer('abc')
    assert packed_corpus(['ab', 'c'], tok, cache=tmp_path, progress=False).tolist() == [0, 1, 2]
    bt = ByteTokenizer()
    assert packed_corpus(['ab', 'c'], bt, cache=tmp_path, progress=False).tolist() == [97, 98, bt.eos_token_id, 99, bt.eos_token_id]
    assert packed_corpus(['ab', 'c'], bt, cache=tmp_path, progress=False, eos=False).tolist() == [97, 98, 99]


def test_lm_blocks_holds_out_the_last_tenth_without_a_validation_split(shakes_root):
    "Only a train split (the local Tiny Shakespeare): the first 90% of the characters train, the last 10% validate, as nanoGPT cuts them."
    from stackwise.data.packing import lm_blocks, validation_split
    from stackwise.data.tokenization import char_tokenizer
    assert validation_split('tinyshakespeare') is None
    lb = lm_blocks('tinyshakespeare', 'chars', 64)
    cut = int(len(SHAKES) * 0.9)
    train, val = lb
    assert lb.tokenizer.chars == ''.join(sorted(set(SHAKES))) and lb.tokenizer.eos_token_id is None
    assert lb.tokenizer.decode(train.tokens) == SHAKES[:cut] and lb.tokenizer.decode(val.tokens) == SHAKES[cut:]
    assert (len(train), len(val)) == ((cut - 1) // 64, (len(SHAKES) - cut - 1) // 64)
    assert f'({cut:,}) to train' in lb.source and f'the last 10% ({len(SHAKES) - cut:,}) to validate' in lb.source
    assert f'{len(train):,} training and {len(val):,} validation blocks of 64' in lb.source and 'no <eos>' in lb.source
    alone = lm_blocks('tinyshakespeare', 'chars', 64, validate=False)  # the same training text whether or not it validates
    assert alone.val is None and np.array_equal(alone.train.tokens, train.tokens)
    fifth = lm_blocks('tinyshakespeare', lambda texts: char_tokenizer(texts, mask=True), 64, val_fraction=0.2)  # a tokenizer factory
    assert fifth.tokenizer.mask_token_id == fifth.tokenizer.vocab_size - 1 and len(fifth.tokenizer.decode(fifth.val.tokens)) == len(SHAKES) - int(len(SHAKES) * 0.8)
    with pytest.raises(StackwiseError, match='no validation text.*val_fraction > 0, or validate=False'):
        lm_blocks('tinyshakespeare', 'chars', 64, val_fraction=0.0)
    assert lm_blocks('tinyshakespeare', 'chars', 64, val_fraction=0.0, validate=False).tokenizer.decode(alone.train.tokens[:5]) == 'First'


def test_lm_blocks_uses_a_validation_split_where_the_source_has_one(tmp_path, monkeypatch):
    "A local copy with train and validation files validates on the file; with no local copy, the hub's splits decide."
    from stackwise.data.packing import lm_blocks, validation_split
    reg = dict(sd.registry())
    reg['wikitext2'] = dict(reg['wikitext2'], local=dict(reg['wikitext2']['local'], files=dict(train='train.txt', validation='valid.txt')))
    monkeypatch.setattr(sd, 'registry', lambda: reg); monkeypatch.setenv('STACKWISE_CACHE', str(tmp_path/'cache'))
    _write(tmp_path, 'wikitext2/train.txt', ' = A = \n' + ' the cat sat on the mat . \n' * 40)
    _write(tmp_path, 'wikitext2/valid.txt', ' the mat sat on the cat . \n' * 10)
    assert validation_split('wikitext2', tmp_path) == 'validation'
    lb = lm_blocks('wikitext2', ByteTokenizer(), 16, root=tmp_path)
    assert 'split train to train, validation to validate' in lb.source
    assert ByteTokenizer().decode(lb.val.tokens).startswith(' the mat sat')
    assert validation_split('tinyshakespeare') == 'validation' and validation_split('openwebtext') is None  # no local copy: the hub's splits


def test_a_damaged_local_file_is_named_with_the_fix(shakes_root, tmp_path):
    "Random bytes for input.txt, a JSON-lines file cut mid-row: one StackwiseError naming the file, never a decoder traceback or a fallback."
    from stackwise.data.packing import lm_blocks
    path = shakes_root/'tinyshakespeare'/'input.txt'
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    for load in (lambda: sd.load_dataset('tinyshakespeare'), lambda: sd.lm_texts('tinyshakespeare'), lambda: lm_blocks('tinyshakespeare', 'chars', 64)):
        with pytest.raises(StackwiseError, match=rf'{path}: cannot be read as text \(not UTF-8 text.*copy it again.*stackwise data check tinyshakespeare') as e:
            load()
        assert e.value.__cause__ is None and '\n' not in str(e.value)
    _write(tmp_path, 'lm_eval/piqa.jsonl', '{"choices": ["x", "y"], "gold": 1, "query": "Q"}\n{"choices": ["x", "y"], "go')
    with pytest.raises(StackwiseError, match=r'piqa.jsonl: cannot be read as jsonl \(ArrowInvalid: JSON parse error.*stackwise data check piqa'):
        sd.load_dataset('piqa', 'validation', root=tmp_path)


def test_a_truncated_packed_cache_is_rebuilt(tmp_path, capsys):
    "A packed .bin shorter than its .json records: load_tokens refuses it by name, packed_corpus packs it again and says so on stderr."
    bt = ByteTokenizer()
    texts = ['first doc', 'second one']
    want = packed_corpus(texts, bt, cache=tmp_path, progress=False).tolist()
    (path,) = tmp_path.glob('*.bin')
    path.write_bytes(path.read_bytes()[:7])
    with pytest.raises(StackwiseError, match=rf'{path}: it has 7 bytes, where {path.name}.json records 21 uint16 tokens \(42 bytes\); pack it again'):
        load_tokens(path)
    assert packed_corpus(texts, bt, cache=tmp_path, progress=False).tolist() == want
    err = capsys.readouterr().err
    assert f'the packed-token cache {path} is damaged (it has 7 bytes' in err and 'tokenizing the corpus again' in err and err.count('\n') == 1
    path.unlink()
    assert packed_corpus(texts, bt, cache=tmp_path, progress=False).tolist() == want and 'it is missing' in capsys.readouterr().err
    assert packed_corpus(texts, bt, cache=tmp_path, progress=False).tolist() == want and capsys.readouterr().err == ''
