"""A tiny training run driven from the command line, for the trainer tests that need a process of
their own: exact resume after `kill -9`, and DDP under torchrun. Not a test module itself."""
import argparse, os, signal

import numpy as np
import torch

from stackwise.config import load_config
from stackwise.data.packing import BlockLoader, TokenBlocks
from stackwise.models.rack import Rack
from stackwise.runs import start_run
from stackwise.train.loop import TrainConfig
from stackwise.train.trainer import Trainer

p = argparse.ArgumentParser()
p.add_argument('run_dir')
p.add_argument('--steps', type=int, default=20)
p.add_argument('--kill-at', type=int, default=0, help='SIGKILL this process right after this optimizer step')
p.add_argument('--resume', action='store_true')
p.add_argument('--batch', type=int, default=8)
p.add_argument('--accum', type=int, default=1)
p.add_argument('--dropout', type=float, default=0.1)
p.add_argument('--objective', default='clm')
p.add_argument('--lr', type=float, default=3e-3)
p.add_argument('--fsdp', action='store_true', help='shard over the processes (TrainConfig.fsdp)')
a = p.parse_args()

torch.set_num_threads(1)  # same thread count in every run: CPU kernels are then deterministic
vocab, T = 64, 16
tokens = (np.random.default_rng(0).integers(0, vocab - 1, 20_000) * 7 + np.arange(20_000)) % (vocab - 1)  # id vocab-1 is the mask token
cut = 18_000
train = BlockLoader(TokenBlocks(tokens[:cut], T), a.batch, seed=1)
val = BlockLoader(TokenBlocks(tokens[cut:], T), a.batch, shuffle=False)
torch.manual_seed(0)
model = Rack(load_config('decoder/gpt2_family/nano', [f'vocab_size={vocab}', f'max_seq_len={T}', 'n_layers=2', 'd_model=32',
                                                       'n_heads=2', f'dropout={a.dropout}', f'causal={a.objective == "clm"}']))
cfg = TrainConfig(max_steps=a.steps, grad_accum=a.accum, lr=a.lr, warmup_steps=3, eval_every=5, eval_batches=2, checkpoint_every=4,
                  fsdp=a.fsdp, objective=a.objective, mask_token_id=vocab - 1 if a.objective == 'mlm' else None,
                  progress=False, tensorboard=False, mfu=False)
kill = (lambda t, step: os.kill(os.getpid(), signal.SIGKILL) if step == a.kill_at else None)
Trainer(model, train, cfg, val, start_run('t', path=a.run_dir), on_step=kill).fit(resume=a.resume)
