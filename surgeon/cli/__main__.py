"""``python -m surgeon.cli``: the same command as the ``surgeon`` console script."""

import sys

from surgeon.cli import main

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
