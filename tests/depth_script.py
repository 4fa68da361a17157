"""A tiny depth-as-time run driven from the command line, for the test that runs it under torchrun: one process against two.
Not a test module itself."""
import argparse, os
import numpy as np
import torch
from stackwise.config import load_config
from stackwise.data.packing import BlockLoader, TokenBlocks
from stackwise.models.rack import Rack
from stackwise.runs import start_run
from stackwise.train.curricula import DepthConfig
from stackwise.train.depth import DepthTrainer
from stackwise.train.loop import TrainConfig

p = argparse.ArgumentParser()
p.add_argument('run_dir')
p.add_argument('--objective', default='clm')
p.add_argument('--mode', default='layerwise')
p.add_argument('--steps', type=int, default=4)
a = p.parse_args()
torch.set_num_threads(1)
vocab, T = 64, 16
tokens = (np.random.default_rng(0).integers(0, vocab - 1, 12_000) * 7 + np.arange(12_000)) % (vocab - 1)  # id vocab-1 is the mask token
train = BlockLoader(TokenBlocks(tokens[:10_000], T), 8, seed=1)
val = BlockLoader(TokenBlocks(tokens[10_000:], T), 8, shuffle=False)
torch.manual_seed(0)
rack = Rack(load_config('decoder/gpt2_family/nano', [f'vocab_size={vocab}', f'max_seq_len={T}', 'n_layers=2', 'd_model=32', 'n_heads=2',
                                                      'dropout=0.0', 'stack_sizes=[1,1]', f'causal={a.objective == "clm"}']))
depth = DepthConfig(mode=a.mode, curriculum='left2right', objective=a.objective, mask_token_id=vocab - 1)
cfg = TrainConfig(max_steps=a.steps, lr=3e-3, warmup_steps=1, eval_every=2, eval_batches=2, progress=False, tensorboard=False, mfu=False)
run = start_run('d', path=a.run_dir) if int(os.environ.get('RANK', '0')) == 0 else None  # one process makes the run folder
DepthTrainer(rack, train, depth, cfg, val, run).fit()
