"""python -m edgeq.cli: the same as the edgeq command."""
import sys

from . import main

sys.exit(main())
