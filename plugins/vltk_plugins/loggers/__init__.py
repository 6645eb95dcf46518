"""The built-in experiment loggers: ``jsonl`` (``metrics.jsonl``, on by default), ``tensorboard`` and ``wandb``."""
