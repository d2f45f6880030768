"""`python -m sweeps.cli ...` is `dals ...`."""
import sys

from sweeps.cli.main import main

sys.exit(main())
