"""The command-line tools: ``dml-csr COMMAND [args]`` (the console command of an install),
``python -m dml_csr COMMAND [args]`` and the checkout's ``tools/NAME.py`` wrappers all call the
same ``main(argv)`` of one module here, through :func:`dml_csr.cli.run` (one ``error:`` line,
exit status 2).

train.py, test.py, infer.py, serve.py, export_onnx.py, prepare_data.py, evaluate.py,
make_tables.py, make_synthetic.py, complexity.py: one module per tool; :data:`COMMANDS` maps the command names to
them. Only the chosen module is imported, so ``dml-csr --help`` does not load torch.
"""
import importlib
import sys
from typing import List, Optional, Sequence

from ..cli import run

__all__ = ["COMMANDS", "main"]

PROG = "dml-csr"

# command -> (module in this package = tools/MODULE.py in a checkout, what it does)
COMMANDS = {
    "train": ("train", "train a config (multi-task stage, CSR cycles); --test scores best.pth"),
    "test": ("test", "score a checkpoint on a split with the benchmark protocol"),
    "infer": ("infer", "parse photos: label maps, overlays, per-face JSON"),
    "export": ("export_onnx", "export a checkpoint to ONNX (float32, or int8 with --int8)"),
    "prepare": ("prepare_data", "prepare a benchmark's download or your own data; check a root"),
    "evaluate": ("evaluate", "score a folder of predicted label maps"),
    "tables": ("make_tables", "the paper's Tables 1-6 from result JSON files"),
    "synthetic": ("make_synthetic", "generate the synthetic face data set"),
    "complexity": ("complexity", "parameters, FLOPs and CPU latency of a model"),
    "serve": ("serve", "a local web page and HTTP API to try the parser"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"usage: {PROG} COMMAND [args] [--debug]   (also: python -m dml_csr COMMAND ...)",
             "", "DML-CSR and FP-LIIF face parsing. Commands:"]
    lines += [f"  {name:{width}s}  {what}" for name, (_, what) in COMMANDS.items()]
    lines += ["", f"{PROG} COMMAND --help shows a command's arguments. A config is the name "
              "of a packaged one (e.g. synthetic) or a YAML path."]
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run ``dml-csr COMMAND ARGS``: the command's ``main(ARGS)`` under :func:`dml_csr.cli.run`."""
    args: List[str] = list(sys.argv[1:] if argv is None else argv)
    if not args:                                   # no command: a usage error, as argparse's
        sys.stderr.write(usage() + "\n")
        return 2
    if args[0] in ("-h", "--help"):
        print(usage())
        return 0
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        sys.stderr.write(f"error: unknown command {name!r}: choose one of "
                         f"{', '.join(COMMANDS)} ({PROG} --help)\n")
        return 2
    module = importlib.import_module(f"{__name__}.{COMMANDS[name][0]}")
    # argparse names the program after sys.argv[0]: usage lines then read "dml-csr train ..."
    program, sys.argv[0] = sys.argv[0], f"{PROG} {name}"
    try:
        return run(module.main, rest)
    finally:
        sys.argv[0] = program
