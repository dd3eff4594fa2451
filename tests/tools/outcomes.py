"""Count the outcomes of a fixed, seeded sample of calls over fisherkl's public non-network API by class
(issue 15): correct, named error, other clean error, silent, internal, slow.

    .venv/bin/python tests/tools/outcomes.py [--seed 0] [--fisher 400] [--geometry 60] [--show silent,internal]

Run it against another checkout with PYTHONPATH=<that checkout>/src (it prints which fisherkl it imported).
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
import tempfile
import time
import warnings

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/, for tools.*

import fisherkl
from tools.cases import all_cases
from tools.contract import CLASSES, classify


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fisher", type=int, default=400, help="number of Fisher-route calls")
    parser.add_argument("--geometry", type=int, default=60, help="number of geometry calls")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds before a call counts as slow")
    parser.add_argument("--show", default="silent,internal,slow", help="classes whose calls to list")
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    print(f"fisherkl from {os.path.dirname(fisherkl.__file__)}")
    counts: collections.Counter[str] = collections.Counter()
    shown = set(args.show.split(",")) if args.show else set()
    listed = []
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as directory:
        for label, call, check in all_cases(directory, args.seed, args.fisher, args.geometry):
            cls, detail = classify(call, check, args.timeout)
            counts[cls] += 1
            if cls in shown:
                listed.append(f"  [{cls}] {label}: {detail}")
    print("\n".join(listed))
    total = sum(counts.values())
    print(f"calls {total} in {time.perf_counter() - start:.0f} s")
    print(", ".join(f"{c}: {counts[c]}" for c in CLASSES))


if __name__ == "__main__":
    main()
