"""How every command-line tool ends: a result, or one line on stderr that says what went wrong.

    if __name__ == "__main__":
        sys.exit(run(main))

:func:`run` calls the tool's ``main(argv)`` and turns an exception into exactly one line
``error: MESSAGE`` on stderr and exit status 2 (:data:`ERROR_STATUS`). The messages of the
project's own error types (any exception class defined in ``dml_csr``: ``ConfigError``,
``RunDirError``, ``CheckpointMismatchError``, ``DataCheckError``, ...) and of the built-in
user-input errors (``ValueError``, ``KeyError``, ``OSError`` such as a missing file) name the file
or key and say what to do, so they are printed as they are. Any other exception is a bug or an
environment problem: its one line adds its type and ``(rerun with --debug for the traceback)``.

``--debug`` anywhere on the command line (it is removed before ``main`` parses its arguments) or
``DMLCSR_DEBUG=1`` in the environment prints the full traceback instead, with the same status.
Usage errors of argparse keep their own exit status 2; Ctrl-C ends with 130.
"""
import os
import sys
import traceback
from typing import Callable, List, Optional, Sequence, Tuple

__all__ = ["run", "strip_debug", "debug_enabled", "format_error", "add_debug_argument",
           "add_precision_arguments", "check_precision_arguments", "add_trust_argument",
           "add_max_pixels_argument", "env_flag", "ERROR_STATUS", "DEBUG_FLAG", "DEBUG_ENV"]

ERROR_STATUS = 2
DEBUG_FLAG = "--debug"
DEBUG_ENV = "DMLCSR_DEBUG"
DEBUG_HINT = "(rerun with --debug for the traceback)"
_USER_ERRORS = (ValueError, KeyError, OSError)


def strip_debug(argv: Sequence[str]) -> Tuple[List[str], bool]:
    """``argv`` without its ``--debug`` flags (those before a ``--`` separator), and whether
    there was one."""
    argv = list(argv)
    cut = argv.index("--") if "--" in argv else len(argv)
    head = [a for a in argv[:cut] if a != DEBUG_FLAG]
    return head + argv[cut:], len(head) < cut


_ON = ("1", "true", "yes", "on")
_OFF = ("", "0", "false", "no", "off")


def env_flag(name: str) -> bool:
    """The switch ``$name``: on for ``1``, ``true``, ``yes``, ``on``; off when unset or ``0``,
    ``false``, ``no``, ``off`` (any case, spaces ignored). Any other value is a ValueError that
    names the variable: a typo in a switch (a security one among them) must not pick a side."""
    value = os.environ.get(name, "")
    word = value.strip().lower()
    if word in _ON:
        return True
    if word in _OFF:
        return False
    raise ValueError(f"{name}={value!r} is neither on ({', '.join(_ON)}) nor off (unset, "
                     f"{', '.join(repr(w) for w in _OFF)}): set it to one of them")


def debug_enabled(flag: bool = False) -> bool:
    """``flag`` or the switch ``DMLCSR_DEBUG`` (:func:`env_flag`)."""
    return flag or env_flag(DEBUG_ENV)


def is_user_error(exc: BaseException) -> bool:
    """True for the project's own error types and the built-in bad-input ones (module docstring)."""
    if isinstance(exc, _USER_ERRORS):
        return True
    return any(cls.__module__.split(".")[0] == "dml_csr" for cls in type(exc).__mro__)


def format_error(exc: BaseException) -> str:
    """The one line printed for ``exc``: ``error: MESSAGE`` (newlines folded into ``; ``)."""
    if isinstance(exc, KeyError) and len(exc.args) == 1 and isinstance(exc.args[0], str):
        message = exc.args[0]          # str(KeyError) would add quotes
    else:
        message = str(exc)
    message = "; ".join(line.strip() for line in message.splitlines() if line.strip())
    if not is_user_error(exc):
        message = f"{type(exc).__name__}: {message or 'no message'} {DEBUG_HINT}"
    return f"error: {message or type(exc).__name__}"


def add_debug_argument(parser) -> None:
    """List ``--debug`` in a tool's ``--help`` (:func:`run` removes the flag before parsing)."""
    parser.add_argument(DEBUG_FLAG, action="store_true",
                        help=f"show the full traceback of an error (also: {DEBUG_ENV}=1)")


def _write_line(line: str) -> None:
    """One write of the whole line: the processes of a torchrun job share stderr, and print()'s
    separate write of the newline lets their lines run into each other."""
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def run(main: Callable[[Optional[List[str]]], object], argv: Optional[Sequence[str]] = None) -> int:
    """Run ``main(argv)`` (default ``sys.argv[1:]``) and return the process's exit status: the int
    it returns (anything else counts as 0), or 2 after one ``error:`` line for an exception."""
    args, flag = strip_debug(sys.argv[1:] if argv is None else argv)
    try:
        debug = debug_enabled(flag)
    except ValueError as exc:
        _write_line(format_error(exc))
        return ERROR_STATUS
    try:
        code = main(args)
    except SystemExit:
        raise
    except KeyboardInterrupt:
        if debug:
            traceback.print_exc()
        _write_line("error: interrupted")
        return 130
    except Exception as exc:  # noqa: BLE001 - the point of this module
        if debug:
            traceback.print_exc()
        else:
            _write_line(format_error(exc))
        return ERROR_STATUS
    return code if isinstance(code, int) and not isinstance(code, bool) else 0


def add_precision_arguments(parser) -> None:
    """``--precision fp32|bf16|int8``, ``--calibrate DIR`` and ``--calibrate-count N`` (the
    parser's ``precision``, ``calibrate`` and ``calibrate_count``; docs/inference.md); a
    ``--calibrate`` without ``--precision int8`` is checked by :func:`check_precision_arguments`."""
    parser.add_argument("--precision", choices=("fp32", "bf16", "int8"), default="fp32",
                        help="bf16: bfloat16 on the CPU, autocast on CUDA; int8: an int8 ONNX "
                             "file run by onnxruntime on the CPU, calibrated once (faster, not "
                             "exact; docs/inference.md)")
    parser.add_argument("--calibrate", metavar="DIR",
                        help="int8 calibration images: a data root or an image folder (needed "
                             "the first time for a model; the calibrated file is cached)")
    parser.add_argument("--calibrate-count", type=int, default=32,
                        help="int8: calibration images used (default 32)")


def check_precision_arguments(parser, args) -> None:
    if args.calibrate and args.precision != "int8":
        parser.error("--calibrate goes with --precision int8")


def add_trust_argument(parser) -> None:
    """``--trust-checkpoint`` (``args.trust_checkpoint``): unpickle a checkpoint that
    ``torch.load(weights_only=True)`` refuses (``dml_csr/models/checkpoint.py``)."""
    parser.add_argument("--trust-checkpoint", action="store_true",
                        help="load a checkpoint that needs full unpickling (an older file of "
                             "ours): this runs any code the file holds, so only for files whose "
                             "source you trust (also: DMLCSR_TRUST_CHECKPOINT=1)")


def add_max_pixels_argument(parser) -> None:
    """``--max-pixels N`` (``args.max_pixels``): the image pixel limit (``dml_csr/files.py``)."""
    parser.add_argument("--max-pixels", type=int, default=None, metavar="N",
                        help="refuse images whose header declares more pixels (default "
                             "178956970, or DMLCSR_MAX_PIXELS): decompression bombs")
