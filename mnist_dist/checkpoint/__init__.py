"""A run's folder on disk, apart from its logs: checkpoints (the training state, writing them
atomically across ranks, finding, checking and loading them), the weights file format
(safetensors with metadata), and the lock that keeps one job per run folder.

May import: the foundation (errors, config, atomic, distributed, models, data). Never train,
evaluate or tracking. Nothing is imported here, so `--help` answers without torch.
"""
