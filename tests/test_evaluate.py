"The evaluation CLI on tiny files in the registry's real formats (no shared data, no hub)."
import json, math, re

import pandas as pd
import pytest
import torch

from stackwise.cli import main
from stackwise.core import StackwiseError


def _data(root):
    (root/'lm_eval').mkdir(parents=True); (root/'wikitext2').mkdir()
    (root/'wikitext2'/'test.txt').write_text(' = Valkyria Chronicles = \n \n The game began development in 2010 . \n' * 4)
    (root/'lm_eval'/'piqa.jsonl').write_text(''.join(json.dumps(dict(query=f'Question: q{i}?\nAnswer:', choices=['Yes.', 'No.'], gold=i % 2)) + '\n' for i in range(4)))
    return root


def test_cli_evaluate_writes_runs_and_table(tmp_path, capsys):
    data, res, out = _data(tmp_path/'data'), tmp_path/'results', tmp_path/'table.csv'
    rc = main(['evaluate', '--model', 'decoder/gpt2_family/nano', '--tokenizer', 'bytes', '--tasks', 'piqa,wikitext2,hellaswag',
               '--data', str(data), '--results', str(res), '--out', str(out), '--max-len', '64'])
    assert rc == 0
    t = pd.read_csv(out)
    assert set(t.task) == {'piqa', 'wikitext2', 'hellaswag'}
    assert t[t.task == 'hellaswag'].metric.tolist() == ['error']  # no hellaswag file: recorded, the others still ran
    assert 0 <= t[(t.task == 'piqa') & (t.metric == 'accuracy')].score.item() <= 1
    assert t[(t.task == 'piqa') & (t.metric == 'accuracy')].chance.item() == 0.5
    runs = sorted((res/'evaluate').iterdir())
    assert sum((r/'metrics.json').exists() for r in runs) == 2 and sum((r/'error.txt').exists() for r in runs) == 1
    m = json.loads(next(r for r in runs if (r/'metrics.json').exists() and 'perplexity' in (r/'metrics.json').read_text()).joinpath('metrics.json').read_text())
    assert m['n_tokens'] > 0 and m['params'] > 0 and m['scoring'] == 'log-likelihood'


def test_cli_evaluate_a_masked_lm_by_the_elbo(tmp_path, capsys):
    data, res, out = _data(tmp_path/'data'), tmp_path/'results', tmp_path/'table.csv'
    rc = main(['evaluate', '--model', 'encoder/bert_family/tiny', '--tokenizer', 'bytes', '--tasks', 'piqa,wikitext2', '--masked-scoring', 'elbo',
               '--samples', '2', '--data', str(data), '--results', str(res), '--out', str(out), '--max-len', '64'])
    assert rc == 0
    t = pd.read_csv(out)
    assert 'error' not in set(t.metric)
    assert t[t.task == 'piqa'].note.str.startswith('diffusion ELBO').all()
    assert t[t.task == 'wikitext2'].note.str.startswith('diffusion ELBO (upper bound, 2 samples').all()
    assert (t[(t.task == 'wikitext2') & (t.metric == 'perplexity')].score > 1).all()


def test_cli_evaluate_bad_input(tmp_path, capsys):
    assert main(['evaluate', '--model', 'decoder/gpt2_family/nano', '--tasks', 'boolq']) == 1
    assert 'unknown task' in capsys.readouterr().err
    assert main(['evaluate', '--model', 'no/such/model', '--tasks', 'piqa']) == 1
    assert 'is not hf:NAME, an existing folder, or a preset' in capsys.readouterr().err


def test_a_trained_run_folder_is_evaluated(tmp_path):
    "`stackwise train` writes checkpoints that `stackwise evaluate --model RUN_DIR` rebuilds (config saved beside the weights)."
    res = tmp_path/'results'
    assert main(['train', '--family', 'gpt2', '--config', 'nano', '--seq-len', '32', '--batch-size', '4', '--results', str(res),
                 'max_steps=2', 'warmup_steps=1', 'progress=false', 'mfu=false', 'tensorboard=false',
                 'model.n_layers=1', 'model.d_model=32', 'model.n_heads=2']) == 0
    run = next((res/'train').iterdir())
    data = _data(tmp_path/'data')
    assert main(['evaluate', '--model', str(run), '--tasks', 'wikitext2', '--data', str(data), '--results', str(res), '--out', str(tmp_path/'t.csv')]) == 0
    t = pd.read_csv(tmp_path/'t.csv')
    assert t.metric.tolist() == ['perplexity', 'bits_per_byte'] and t.score.notna().all()


def test_lm_eval_cli_runs_a_stackwise_model_on_a_local_task(tmp_path, capsys):
    "`stackwise lm-eval --model stackwise ...`: lm-eval's command line, a YAML task on a local JSON file, no hub."
    (tmp_path/'tiny.jsonl').write_text(''.join(json.dumps(dict(question=q, choices=c, label=l)) + '\n' for q, c, l in
                                               [('Which is a colour?', ['red', 'seven'], 0), ('Which is a number?', ['blue', 'three'], 1)]))
    (tmp_path/'tiny_mc.yaml').write_text(f'task: tiny_mc\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {tmp_path/"tiny.jsonl"}\n'
                                         'test_split: test\noutput_type: multiple_choice\ndoc_to_text: "Question: {{question}}\\nAnswer:"\n'
                                         'doc_to_choice: "{{choices}}"\ndoc_to_target: label\nmetric_list:\n  - metric: acc\n'
                                         '    aggregation: mean\n    higher_is_better: true\n')
    out = tmp_path/'out'
    rc = main(['lm-eval', '--model', 'stackwise', '--model_args', 'model=decoder/gpt2_family/nano,tokenizer=bytes', '--tasks', 'tiny_mc',
               '--include_path', str(tmp_path), '--device', 'cpu', '--output_path', str(out)])
    assert rc == 0
    res = json.loads(next(out.rglob('results_*.json')).read_text())
    assert res['results']['tiny_mc']['acc,none'] in (0.0, 0.5, 1.0)


def test_cli_evaluate_finetune_trains_a_head_per_task(tmp_path, capsys):
    "`--finetune`: SST-2 from a train.tsv, MNLI held out of its dev file (no train split here), a missing task recorded as an error."
    root, res, out = tmp_path/'data', tmp_path/'results', tmp_path/'table.csv'
    (root/'sst2').mkdir(parents=True); (root/'nli').mkdir()
    for f, n in (('train.tsv', 64), ('dev.tsv', 20)):
        (root/'sst2'/f).write_text('sentence\tlabel\n' + ''.join(f"{'a good film' if i % 2 else 'a bad film'} \t{i % 2}\n" for i in range(n)))
    (root/'nli'/'mnli_dev_matched.jsonl').write_text(''.join(json.dumps(dict(premise='p', hypothesis='h', label=['entailment', 'neutral', 'contradiction'][i % 3])) + '\n' for i in range(30)))
    rc = main(['evaluate', '--model', 'encoder/bert_family/tiny', '--tokenizer', 'bytes', '--tasks', 'sst2,mnli,conll2003', '--finetune',
               '--steps', '3', '--batch-size', '8', '--max-len', '32', '--data', str(root), '--results', str(res), '--out', str(out)])
    assert rc == 0
    t = pd.read_csv(out)
    assert t[t.task == 'conll2003'].metric.tolist() == ['error']
    sst = t[(t.task == 'sst2') & (t.metric == 'accuracy')]
    assert 0 <= sst.score.item() <= 1 and sst.chance.item() == 0.5 and 'fine-tuned single_label head, cls pooling, 3 steps, n=20' in sst.note.item()
    mnli = json.loads((res/'finetune'/t[t.task == 'mnli'].run.iloc[0]/'metrics.json').read_text())
    assert (mnli['n_train'], mnli['n_eval']) == (24, 6) and 'no local train split' in mnli['data']
    assert main(['evaluate', '--model', 'encoder/bert_family/tiny', '--tasks', 'lambada', '--finetune']) == 1
    assert 'no fine-tuned mode' in capsys.readouterr().err


def test_finetune_scores_and_chance():
    from scipy import stats
    from stackwise.eval.finetune import get_finetune_task, score
    m = score(get_finetune_task('sst2'), [1, 1, 0, 1], [1, 0, 0, 0])
    assert m['accuracy'] == 0.5 and m['chance']['accuracy'] == 0.75  # majority class of the gold labels
    p, g = [0.1, 2.5, 3.9, 1.0, 4.4], [0.0, 3.0, 4.0, 2.0, 5.0]
    r = score(get_finetune_task('stsb'), p, g)
    assert abs(r['pearson'] - stats.pearsonr(p, g)[0]) < 1e-9 and abs(r['spearman'] - stats.spearmanr(p, g)[0]) < 1e-9


# -- every load of a checkpoint is verified (issue 19) ------------------------------------------------------------------

def _nano_rack(vocab_size=260):  # the byte vocabulary: its tokenizer needs no hub
    from stackwise.config import load_config
    from stackwise.models.rack import Rack
    torch.manual_seed(0)
    return Rack(load_config('decoder/gpt2_family/nano', [f'vocab_size={vocab_size}', 'n_layers=1', 'd_model=32', 'n_heads=2', 'max_seq_len=64']))


def _checkpoint_run(run, damage=None):
    "A run folder whose latest checkpoint (save_checkpoint) holds a nano Rack; damage: 'bytes' flips bytes of its weights, 'nan' saves NaN weights with a fresh hash."
    from stackwise.train.checkpoint import save_checkpoint, set_pointer
    rack = _nano_rack()
    if damage == 'nan':
        with torch.no_grad(): rack.final_norm.weight[3] = math.nan
    ck = save_checkpoint(run/'checkpoints', 'step-000002', rack, dict(step=2), dict(step=2, config_hash='x'))
    set_pointer(run/'checkpoints', 'latest', ck.name)
    if damage == 'bytes':
        with open(ck/'model.safetensors', 'r+b') as f:
            f.seek(-16, 2); tail = f.read(16); f.seek(-16, 2); f.write(bytes(b ^ 0xFF for b in tail))
    return run


REFUSAL = {'bytes': r'is corrupted: model\.safetensors', 'nan': r"model\.safetensors.*'final_norm\.weight'.*checkpoints/best"}


@pytest.mark.parametrize('damage', ['bytes', 'nan'])
def test_a_damaged_checkpoint_is_refused_by_every_loader(tmp_path, damage, capsys):
    "evaluate, load_model, the lm-eval adapter and finetune's loader refuse weights that do not match their hash or hold NaN, naming the file."
    from stackwise.eval.finetune import get_finetune_task, task_model
    from stackwise.eval.harness import load_model
    from stackwise.eval.lm_eval_adapter import StackwiseLM
    good = _checkpoint_run(tmp_path/'good')
    assert load_model(str(good))[0].cfg.d_model == 32
    run = _checkpoint_run(tmp_path/'run', damage)
    for load in (lambda: load_model(str(run)), lambda: StackwiseLM(str(run)), lambda: task_model(str(run), get_finetune_task('sst2'))):
        with pytest.raises(StackwiseError, match=REFUSAL[damage]): load()
    res = tmp_path/'results'
    assert main(['evaluate', '--model', str(run), '--tasks', 'wikitext2', '--data', str(_data(tmp_path/'data')), '--results', str(res)]) == 1
    assert re.search(REFUSAL[damage], capsys.readouterr().err) and not (res/'evaluate').exists()  # no run recorded as complete


# -- remote code only behind an explicit flag, pinned to a commit (issue 19) ---------------------------------------------

def _custom_code_repo(folder):
    "A model folder whose config names its own modelling code (as stanfordnlp/backpack-gpt2 does)."
    folder.mkdir()
    (folder/'config.json').write_text(json.dumps(dict(model_type='backpack-gpt2', architectures=['BackpackGPT2LMHeadModel'], auto_map={
        'AutoConfig': 'configuration_backpack_gpt2.BackpackGPT2Config', 'AutoModelForCausalLM': 'modeling_backpack_gpt2.BackpackGPT2LMHeadModel'})))
    return folder


def test_remote_code_needs_the_flag_and_a_pinned_revision(tmp_path, monkeypatch, capsys):
    import transformers
    from stackwise.eval.finetune import get_finetune_task, task_model
    from stackwise.eval.harness import load_model
    from stackwise.eval.lm_eval_adapter import StackwiseLM
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    repo, sst2 = _custom_code_repo(tmp_path/'custom'), get_finetune_task('sst2')
    for load in (lambda: load_model(f'hf:{repo}'), lambda: task_model(f'hf:{repo}', sst2), lambda: StackwiseLM(f'hf:{repo}')):
        with pytest.raises(StackwiseError, match='needs its own Python code.*trust_remote_code=True.*--trust-remote-code'): load()
    def no_download(*a, **k): raise AssertionError('a download was attempted')
    for cls in ('AutoConfig', 'AutoModelForCausalLM', 'AutoModelForMaskedLM', 'AutoModelForSequenceClassification'):
        monkeypatch.setattr(getattr(transformers, cls), 'from_pretrained', no_download)
    for rev in (None, 'main', 'abc123'):
        for load in (lambda: load_model('hf:stanfordnlp/backpack-gpt2', trust_remote_code=True, revision=rev),
                     lambda: task_model('hf:stanfordnlp/backpack-gpt2', sst2, trust_remote_code=True, revision=rev),
                     lambda: StackwiseLM('hf:stanfordnlp/backpack-gpt2', trust_remote_code=True, revision=rev)):
            with pytest.raises(StackwiseError, match='revision=<40-hex commit>.*--revision'): load()
    assert 'REMOTE CODE' not in capsys.readouterr().err
    with pytest.raises(AssertionError, match='a download was attempted'):  # flag and pin: announced, then loaded
        load_model('hf:stanfordnlp/backpack-gpt2', trust_remote_code=True, revision='0123456789abcdef0123456789abcdef01234567')
    assert 'REMOTE CODE: stanfordnlp/backpack-gpt2 at revision 0123456789abcdef0123456789abcdef01234567' in capsys.readouterr().err


# -- --limit bounds a one-document corpus (issue 19) ---------------------------------------------------------------------

def test_limit_bounds_the_windows_of_a_one_document_corpus(tmp_path):
    "tinyshakespeare is one document: --limit N scores its first N windows; the rows of a many-row corpus keep their meaning."
    from stackwise.data.sources import load_dataset
    from stackwise.data.tokenization import ByteTokenizer
    from stackwise.eval.harness import evaluate_task
    (tmp_path/'tinyshakespeare').mkdir()
    (tmp_path/'tinyshakespeare'/'input.txt').write_text('First Citizen:\nBefore we proceed any further, hear me speak.\n\n' * 500)  # 30k bytes
    rack, tok = _nano_rack(), ByteTokenizer()
    for limit, max_len, stride in ((1, None, None), (3, None, None), (2, 32, 8)):
        r = evaluate_task(rack, tok, 'tinyshakespeare', limit=limit, root=tmp_path, progress=False, max_len=max_len, stride=stride)
        L = max_len or 64; S = stride or L // 2
        assert (r['n_windows'], r['n_tokens'], r['n_bytes']) == (limit, L + (limit - 1) * S - 1, L + (limit - 1) * S), r
        assert 'first' in r['scored'] and math.isfinite(r['bits_per_byte'])
    data = _data(tmp_path/'data')
    rows = [x['text'] for x in load_dataset('wikitext2', 'test', root=data)]
    r = evaluate_task(rack, tok, 'wikitext2', limit=2, root=data, progress=False)
    assert r['n'] == 2 and r['n_tokens'] == len(''.join(t if t.endswith('\n') else t + '\n' for t in rows[:2]).encode()) - 1 and 'scored' not in r
    res = tmp_path/'results'
    assert main(['evaluate', '--model', 'decoder/gpt2_family/nano', '--tokenizer', 'bytes', '--tasks', 'tinyshakespeare', '--limit', '1',
                 '--max-len', '64', '--data', str(tmp_path), '--results', str(res)]) == 0
    m = json.loads(next((res/'evaluate').glob('*/metrics.json')).read_text())
    assert (m['n_windows'], m['n_tokens']) == (1, 63)
