"""``python -m xmodal.data``: import, check or generate catalogues.

    python -m xmodal.data import kaggle SRC [--out NEW_DIR] [--overwrite]
    python -m xmodal.data import research SRC [--out NEW_DIR] [--overwrite]
    python -m xmodal.data check DIR
    python -m xmodal.data demo --out NEW_DIR [--n 2000] [--seed 0] [--overwrite]

A command that writes a catalogue never replaces one that is there (a hand-edited captions.csv included)
unless you pass --overwrite, and never a folder that holds other files.
"""
from __future__ import annotations

import argparse
import sys

from .catalogue import CatalogueError, load_catalogue
from .splits import describe_split, make_splits
from .demo import generate_demo
from .importers import IMPORTERS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m xmodal.data", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    imp = sub.add_parser("import", help="convert another layout into captions.csv")
    imp.add_argument("layout", choices=sorted(IMPORTERS))
    imp.add_argument("src", help="the folder to import")
    imp.add_argument("--out", help="a new catalogue folder to write (default: in place: only captions.csv is "
                                   "written into SRC, refused if it has one)")
    imp.add_argument("--overwrite", action="store_true", help="replace a catalogue already at the target")
    chk = sub.add_parser("check", help="validate a catalogue and print the loader's report")
    chk.add_argument("dir")
    demo = sub.add_parser("demo", help="generate the synthetic demo catalogue")
    demo.add_argument("--out", required=True)
    demo.add_argument("--n", type=int, default=2000)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--overwrite", action="store_true", help="replace a catalogue already at --out")
    args = parser.parse_args(argv)
    try:
        if args.cmd == "import":
            res = IMPORTERS[args.layout](args.src, args.out, overwrite=args.overwrite)
            print(f"wrote {res.rows} rows to {res.out_dir / 'captions.csv'}"
                  + "".join(f"; dropped {n} ({why})" for why, n in res.dropped.items()))
            print(load_catalogue(res.out_dir).report.summary())
        elif args.cmd == "check":
            cat = load_catalogue(args.dir)
            print(cat.report.summary())
            print(f"fingerprint {cat.fingerprint}")
            try:
                sizes = {s: len(v) for s, v in make_splits(cat).items()}
                print(f"split: {describe_split(cat)}: " + ", ".join(f"{s} {n}" for s, n in sizes.items()))
            except CatalogueError as err:
                print(f"split: cannot train on it yet: {err}")
        else:
            path = generate_demo(args.out, n=args.n, seed=args.seed, overwrite=args.overwrite)
            print(f"wrote {args.n} demo items to {path}")
    except (CatalogueError, OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
