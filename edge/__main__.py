"""python -m edge ... is the same as medge ...  Usage: python -m edge --help"""
import sys

from edge.cli import main

sys.exit(main())
