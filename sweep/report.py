"""`python -m sweep.report`: see `sweep.readers.report`."""

import sys

from sweep.readers.report import main

if __name__ == "__main__":
    sys.exit(main())
