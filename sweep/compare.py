"""`python -m sweep.compare`: see `sweep.readers.compare`."""

import sys

from sweep.readers.compare import main

if __name__ == "__main__":
    sys.exit(main())
