"""``python -m popoto.ops``: the operator CLI (same as ``popoto-ops``)."""

import sys

from .cli import main

sys.exit(main())
