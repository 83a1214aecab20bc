"""`python -m mnist_dist.check`: see mnist_dist/check/command.py."""

import sys

from mnist_dist.check.command import main

sys.exit(main())
