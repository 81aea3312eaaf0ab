"""`python -m sweep.query`: see `sweep.readers.query`."""

import sys

from sweep.readers.query import main

if __name__ == "__main__":
    sys.exit(main())
