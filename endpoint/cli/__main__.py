"""`python -m endpoint.cli`: the same as `compute-endpoint`."""

import sys

from endpoint.cli.app import main

sys.exit(main())
