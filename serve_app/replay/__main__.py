"""``python -m serve_app.replay replay ...``: the replay command without the full CLI."""

import sys

from serve_app.replay.cli import main

sys.exit(main())
