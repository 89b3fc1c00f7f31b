"""``python -m dml_core``: see ``dml_core.cli``."""

import sys

from dml_core.cli import main

sys.exit(main())
