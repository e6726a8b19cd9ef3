"""``python -m medge.train ...`` = ``medge train ...``; the form torchrun runs.

Usage: torchrun --standalone --nproc_per_node 2 -m medge.train --data data/xray --out runs/xray-ddp --device cpu

``-m medge.train`` cannot be shadowed by a ``train.py`` in the working folder.
"""
import sys

from medge.edge.apps.cli import main

sys.exit(main(["train", *sys.argv[1:]]))
