"""``python -m stprivacy``: the same command line as the ``stprivacy`` script."""
import sys

from .cli import main

sys.exit(main())
