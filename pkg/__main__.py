"""``python -m medge ...`` is the same as ``medge ...``.  Usage: python -m medge --help"""
import sys

from medge.edge.apps.cli import main

sys.exit(main())
