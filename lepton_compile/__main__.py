"""``python -m lepton_compile`` runs the command line."""

import sys

from lepton_compile.cli import main

sys.exit(main())
