"""``python -m fedsim.cli``: the ``fedsim`` command."""

import sys

from fedsim.cli.main import main

sys.exit(main())
