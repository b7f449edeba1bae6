"""``python -m process_comms.cli``: the same as the ``process-comms`` command."""

import sys

from .main import main

sys.exit(main())
