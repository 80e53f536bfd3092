"""Evaluator component: scores checkpoints on val/test and names the best candidate."""
