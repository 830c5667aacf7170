"""`python -m webservice ...` is `compute-webservice ...`."""

import sys

from webservice.cli import main

sys.exit(main())
