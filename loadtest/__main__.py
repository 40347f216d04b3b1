"""`python -m loadtest ...` is `kvserve loadtest ...`."""

import sys

from loadtest.cli import main

sys.exit(main())
