"""``python -m torchcfm_local.datasets.convert_gas PICKLE [NPZ]``: the GAS pickle as a safe ``.npz``.

Unpickles PICKLE (run it on a file you trust, once) and writes its column names and values to NPZ
(default: ``ethylene_CO.npz`` beside it), which ``datasets.load("gas", root=...)`` then reads
without unpickling anything.
"""
from __future__ import annotations

import argparse
import sys

from .tabular import convert_gas_pickle


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m torchcfm_local.datasets.convert_gas", description=__doc__.split("\n")[0])
    parser.add_argument("pickle", help="the MAF release's gas/ethylene_CO.pickle (a file you trust)")
    parser.add_argument("npz", nargs="?", default=None, help="output path (default: ethylene_CO.npz beside it)")
    args = parser.parse_args(argv)
    print(f"wrote {convert_gas_pickle(args.pickle, args.npz)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
