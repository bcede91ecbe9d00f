"""``python -m jaxmpc``: the command line (see :mod:`jaxmpc.cli`)."""

import sys

from jaxmpc.cli import main

sys.exit(main())
