"""mnist-dist: data-parallel training of MNIST-family classifiers on Accelerate."""

__version__ = "0.1.0"


def __getattr__(name: str):
    """`from mnist_dist import load_model` (mnist_dist/evaluate/trained_model.py), imported on first use:
    the command line's `--help` and config errors answer without importing torch."""
    if name == "load_model":
        from mnist_dist.evaluate.trained_model import load_model

        return load_model
    raise AttributeError(f"module 'mnist_dist' has no attribute {name!r}")
