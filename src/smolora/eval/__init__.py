"""Evaluation: base vs tuned on held-out prompts, metrics, the report, lm-eval."""
