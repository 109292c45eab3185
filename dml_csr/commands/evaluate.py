"""Score a folder of predicted label PNGs against a split with the release's pooled-F1 protocol.

    dml-csr evaluate --data-root data/lapa --split test --pred-dir runs/x/pred \
        --out runs/x/metrics.json --meta method=dml-csr --meta row=dml-csr

See docs/evaluation.md for the protocol, the prediction folder and the JSON format.
"""
import argparse
import sys

from ..cli import add_debug_argument
from ..eval.evaluate import evaluate_folder, parse_meta, write_result
from ..eval.paper import result_row, table_for_dataset
from ..eval.tables import format_class_table, format_result_table


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", required=True, help="ROOT with label_names.txt and lists")
    parser.add_argument("--split", default="test", help="split name: ROOT/<split>_list.txt")
    parser.add_argument("--pred-dir", required=True, help="folder of predicted id PNGs")
    parser.add_argument("--out", help="write the result JSON here")
    parser.add_argument("--dataset",
                        help="data set (default: the data root's dataset.json, written by "
                             "dml-csr prepare and dml-csr synthetic; older roots: "
                             "synthetic_info.json, else a guess from the folder name, with a "
                             "warning)")
    parser.add_argument("--map", metavar="MAP",
                        help="the predictions are in another id order: a class map (a YAML path "
                             "or a shipped name: celebamask_hq_bisenet, celebamask_hq_farl, "
                             "celebamask_hq_official; dml_csr/eval/classmap.py)")
    parser.add_argument("--meta", action="append", default=[], metavar="KEY=VALUE",
                        help="extra meta entries, e.g. method=dml-csr row=ddgcn (repeatable)")
    parser.add_argument("--max-listed", type=int, default=20, help="problems listed on failure")
    add_debug_argument(parser)
    args = parser.parse_args(argv)

    result = evaluate_folder(args.data_root, args.split, args.pred_dir, dataset=args.dataset,
                             class_map=args.map,
                             meta=parse_meta(args.meta), max_listed=args.max_listed)
    print(format_class_table(result))
    if table_for_dataset(result["meta"]["dataset"]) is not None:
        print()
        print(format_result_table(result))
    if args.out:
        write_result(result, args.out)
        print(f"\nwrote {args.out}")
        try:
            result_row(result["meta"].get("row"), result["meta"].get("model"))
        except ValueError as err:
            print(f"note: {err}; dml-csr tables refuses the result without one",
                  file=sys.stderr)
    return 0
