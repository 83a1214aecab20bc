"""`python -m mnist_dist.sweep`: see mnist_dist/sweep/command.py."""

import sys

from mnist_dist.sweep.command import main

sys.exit(main())
