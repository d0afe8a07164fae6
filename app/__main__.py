"""``python -m app`` is ``triplet-embed serve``."""

import sys

from app.cli import main

sys.exit(main(["serve", *sys.argv[1:]]))
