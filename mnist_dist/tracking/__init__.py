"""Where a run's numbers go: metrics.jsonl, Weights & Biases (sessions and media), the console a
person reads, and the facts of the machine and code that every run records.

May import: the foundation and `checkpoint`. Never train or evaluate (types only, under
TYPE_CHECKING). Nothing is imported here, so `--help` answers without torch.
"""
