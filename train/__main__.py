"""python -m train ... = medge train ... (this form is what torchrun runs).

Usage: torchrun --standalone --nproc_per_node 2 -m train --data data/xray --out runs/xray-ddp --device cpu
"""
import sys

from edge.cli import main

sys.exit(main(["train", *sys.argv[1:]]))
