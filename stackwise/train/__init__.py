"""Training: the dtype policy, the trainer, QLoRA, depth-as-time (noise bands, curricula, cached activations, DepthTrainer) and the memory/time planner."""
