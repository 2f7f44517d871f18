"""``python -m jaxasync.leaderboard``: the ``jaxasync-leaderboard`` command line."""

import sys

from jaxasync.leaderboard.runner import main

sys.exit(main())
