"""The data: named datasets read from their official files (or drawn, for `digits`), the validation
split held out of the training split, which samples each process sees, the training batches on the
device and their augmentation, and a user's own image files prepared like a dataset's.

May import: `mnist_dist.errors` and `mnist_dist.config` only (the foundation; see docs/ARCHITECTURE.md).
Nothing is imported here, so `--help` answers without torch.
"""
