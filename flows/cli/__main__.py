"""`python -m flows.cli`: the `tunegate` command (for launchers that start a module, e.g. accelerate, torchrun)."""

import sys

from flows.cli import main

sys.exit(main())
