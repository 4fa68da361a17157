"""stackwise: train and benchmark transformer language models, end to end or a Block, Stack or layer at a time.

The names a user starts from are importable from here; each loads its subpackage on first use, so
`import stackwise` (and the CLI) stays fast. The rest lives in the subpackages:
`data` (sources, tokenization, packing, collators), `models` (attention, blocks, Rack, families,
encoders, heads, generation, Backpack, BDH), `train` (dtype policy, trainer, depth-as-time,
cache, planner), `eval` (metrics, scoring, harness, fine-tuning), `bench` (timing, scaling,
dtype matrix, seed studies, GPU evidence) and `report` (experiments, site).
"""
__version__ = "0.0.1"

_EXPORTS = {
    'StackwiseError': 'core', 'ModelConfig': 'config', 'load_config': 'config',
    'load_run': 'runs', 'load_runs': 'runs', 'load_steps': 'runs',
    'load_dataset': 'data.sources', 'get_tokenizer': 'data.tokenization',
    'Rack': 'models.rack', 'count_parameters': 'models.counting', 'load_hf': 'models.families',
    'save_rack': 'models.families', 'load_rack': 'models.families',
    'TrainConfig': 'train.loop', 'Trainer': 'train.trainer',
    'DepthConfig': 'train.curricula', 'DepthTrainer': 'train.depth', 'plan': 'train.plan',
    'evaluate': 'eval.harness', 'finetune': 'eval.finetune', 'run_experiment': 'report.experiments',
}
__all__ = ['__version__', *_EXPORTS]

def __getattr__(name:str):
    "Import a curated name's module on first use (PEP 562)."
    if name not in _EXPORTS: raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
    import importlib
    value = getattr(importlib.import_module(f'{__name__}.{_EXPORTS[name]}'), name)
    globals()[name] = value
    return value

def __dir__(): return sorted([*globals(), *_EXPORTS])
