"""`python -m corecraft`: the same as the `corecraft` console script."""

import sys

from corecraft.cli import main

sys.exit(main())
