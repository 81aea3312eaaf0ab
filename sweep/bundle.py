"""`python -m sweep.bundle`: see `sweep.offline.bundle`."""

import sys

from sweep.offline.bundle import main

if __name__ == "__main__":
    sys.exit(main())
