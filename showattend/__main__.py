"""``python -m showattend`` and ``torchrun ... -m showattend``: the command line."""
import sys

from .cli import main

sys.exit(main())
