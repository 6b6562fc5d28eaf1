"""``python -m sparknet``: the same command line as the ``sparknet`` script."""
import sys

from sparknet.cli import main

sys.exit(main())
