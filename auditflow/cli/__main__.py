"""`python -m auditflow.cli` runs the client CLI."""

import sys

from auditflow.cli import main

sys.exit(main())
