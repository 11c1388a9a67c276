"""``python -m inferis.engine worker --redis URL`` and the other subcommands."""

import sys

from .cli.main import main

sys.exit(main())
