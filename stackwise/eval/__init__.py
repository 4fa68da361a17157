"""Evaluation: metrics, scoring, the task harness, fine-tuning, the lm-eval adapter and paired statistics."""
