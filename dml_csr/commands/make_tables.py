"""Assemble result JSONs (dml-csr evaluate, dml-csr test) into the paper's Tables 1 to 6.

    dml-csr tables runs/*/metrics.json --table all [--latex] [--out tables.md]

Each result goes to data set ``meta.dataset``, row ``meta.row`` or, without one, the row of its
model family ``meta.model`` (dml_csr -> dml-csr, fp_liif -> fp-liif); a result with neither is an
error. See docs/evaluation.md for the row keys and the layout.
"""
import argparse

from ..cli import add_debug_argument
from ..eval.evaluate import load_result
from ..eval.tables import TABLE_NUMBERS, make_tables
from ..files import write_text


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="*", help="result JSON files")
    parser.add_argument("--table", default="all", choices=["all"] + [str(n) for n in TABLE_NUMBERS])
    parser.add_argument("--latex", action="store_true", help="LaTeX tabulars (booktabs)")
    parser.add_argument("--out", help="also write the tables to this file")
    add_debug_argument(parser)
    args = parser.parse_args(argv)

    results = [load_result(path) for path in args.results]
    text = make_tables(results, sources=args.results,
                       tables=args.table if args.table == "all" else int(args.table),
                       latex=args.latex)
    print(text, end="")
    if args.out:
        write_text(args.out, text)
    return 0
