"""``python -m bot [--console]``: the same as ``gitlab-hook bot [--console]``."""

import sys

from gitlab_hook.cli import main

sys.exit(main(["bot", *sys.argv[1:]]))
