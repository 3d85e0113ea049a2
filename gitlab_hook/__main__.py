"""``python -m gitlab_hook`` runs the command line."""

import sys

from gitlab_hook.cli import main

sys.exit(main())
