"""`stackwise gpu`: the CPU rehearsal of every part at tiny shapes, as the GPU machine would run it (a fresh process per
part, archives under --out), then the skip of done parts, --list, the unpack back into results/, and the refusals."""
import json, os, subprocess, sys, tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

def _gpu(*args, timeout=600):
    env = {**os.environ, 'HF_HUB_OFFLINE': '1', 'HF_DATASETS_OFFLINE': '1', 'PYTHONUNBUFFERED': '1'}
    env.pop('STACKWISE_DATA', None)  # as on CI: no local copies, every part falls back (loudly) to synthetic text
    return subprocess.run([sys.executable, '-m', 'stackwise.cli', 'gpu', *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)

def test_dry_run_every_part(tmp_path):
    from stackwise.bench.gpu import MAX_ARCHIVE_BYTES, parts, unpack
    PARTS = parts()
    out, results = tmp_path/'out', tmp_path/'results'
    r = _gpu('--dry-run', '--budget', '400', '--out', str(out), '--results', str(results))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    summary = r.stdout[r.stdout.rindex('stackwise gpu:'):]
    assert summary.count(')  complete') == len(PARTS), summary
    archives = sorted(out.glob('*.tar.gz'))
    assert len(archives) == len(PARTS)  # one per part (on the GPU the driver stops at 7, the log being the 8th file back)
    runs = {}
    for p in PARTS.values():
        (run,) = list((results/p.experiment).iterdir())
        for f in ('env.json', 'config.yaml', 'metrics.json', 'metrics.csv'): assert (run/f).exists(), (p.name, f)
        m = runs[p.name] = json.loads((run/'metrics.json').read_text())
        assert m['part'] == p.name and m['dry_run'] is True and m['wall_s'] > 0 and m['planned_s'] > 0
        (a,) = [a for a in archives if a.name == f'{p.experiment}-{run.name}.tar.gz']
        assert a.stat().st_size <= MAX_ARCHIVE_BYTES
        with tarfile.open(a) as t: names = t.getnames()
        assert all(n.startswith(f'{p.experiment}/{run.name}/') for n in names) and f'{p.experiment}/{run.name}/metrics.json' in names
    assert runs['hardware']['measured_tflops']['fp32'] > 0
    lw = runs['llama70b']
    assert lw['layers_trained'] == lw['n_layers'] == 4 and lw['reload_max_abs_diff'] < 1e-3 and lw['generated'].startswith('ROMEO:')
    assert abs(lw['heldout_reloaded'] - lw['heldout_trained']) < 1e-3 and lw['val_loss_final'] < lw['val_loss_first_layer']
    assert set(runs['trainer']['ratio']) == {'nano'} and runs['trainer']['ratio']['nano'] > 0
    assert runs['dtype_matrix']['cells'] == 36 and sum(runs['dtype_matrix']['status'].values()) == 36
    assert runs['plan_check']['n_configs'] == 2
    assert set(runs['bdh']['models']) == {'bdh', 'gpt2', 'llama'} and set(runs['backpack']['models']) == {'backpack', 'standard'}
    # the next window carries on: every part is done for this device, nothing new runs
    again = _gpu('--dry-run', '--budget', '400', '--results', str(results))
    assert again.returncode == 0 and again.stdout.count('done before') >= len(PARTS), again.stdout[-2000:]
    assert sum(1 for e in results.iterdir() for _ in e.iterdir()) == len(PARTS)
    listed = _gpu('--list', '--dry-run', '--results', str(results))
    assert listed.stdout.count('done: ') == len(PARTS) and 'to do' not in listed.stdout
    assert 'to do' in _gpu('--list', '--results', str(results)).stdout  # a rehearsal does not count for the GPU
    from stackwise.bench.gpu import evidence
    ev = evidence(results, dry=True)  # what the report's GPU page shows, here for the rehearsal's runs
    assert (ev.run != '').all() and (ev.headline.str.len() > 0).all(), ev[['part', 'headline']]
    assert [Path(c).name for c in ev.set_index('part').charts['llama70b']] == ['layers.png']
    import nbformat
    page = nbformat.read(ROOT/'nbs'/'report'/'95_gpu.ipynb', as_version=4)
    code = '\n'.join(c.source for c in page.cells if c.cell_type == 'code').replace('gpu.evidence()', f'gpu.evidence({str(results)!r}, dry=True)')
    exec(compile(code, '95_gpu.ipynb', 'exec'), {})  # the page's cells render these runs without an error
    back = unpack(out, tmp_path/'back')
    assert sorted(p.relative_to(tmp_path/'back').parts[0] for p in back) == sorted(p.experiment for p in PARTS.values())

def test_refusals_and_command(tmp_path):
    from stackwise.bench.gpu import GPU_COMMAND
    import torch
    if not torch.cuda.is_available():
        r = _gpu('--results', str(tmp_path))
        assert r.returncode == 1 and 'rehearse with --dry-run' in r.stderr and not any(tmp_path.iterdir())
    r = _gpu('--dry-run', '--only', 'hardware,nope', '--results', str(tmp_path))
    assert r.returncode == 1 and "no part 'nope'" in r.stderr and not any(tmp_path.iterdir())
    r = _gpu('--dry-run', '--budget', '1', '--only', 'dtype_matrix', '--results', str(tmp_path))
    assert 'not started: plans' in r.stdout and not any(tmp_path.iterdir())  # it does not fit: no folder is made
    help_text = _gpu('--help').stdout
    assert ' '.join(GPU_COMMAND.split()) in ' '.join(help_text.split()) and 'timeout_s=600' in help_text and '.gpu' in help_text
    assert len(GPU_COMMAND) < 2000 and GPU_COMMAND in (ROOT/'README.md').read_text()  # the README gives the same line
