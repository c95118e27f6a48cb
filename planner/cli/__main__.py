"""`python -m planner.cli` == `fapool`."""

import sys

from planner.cli import main

sys.exit(main())
