"""``python -m stabilizer``: the command line (see stabilizer/cli/__init__.py)."""

import sys

from stabilizer.cli import main

if __name__ == "__main__":
    sys.exit(main())
