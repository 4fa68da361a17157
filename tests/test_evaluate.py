"The evaluation CLI on tiny files in the registry's real formats (no shared data, no hub)."
import json

import pandas as pd

from stackwise.cli import main


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
