"""mnist-dist: data-parallel training of MNIST-family classifiers on Accelerate."""

__version__ = "0.1.0"
