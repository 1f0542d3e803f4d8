"""Entry point for ``python -m canaryflow_stack``."""

import sys

from .cli import main

sys.exit(main())
