"""torchrun with the project's error contract: ``python -m dml_csr.engine.launch [torchrun args]``.

The same arguments and behaviour as ``python -m torch.distributed.run``, except how a failed
worker ends it. torchrun answers a worker that exits with an error by logging its own warnings and
raising ``ChildFailedError``, a 30-line report after the worker's one ``error:`` line, and exits
with status 1. Here the first failed worker's exit status is the launcher's (2 for a user mistake,
as for a single process, dml_csr/cli.py), its ``error:`` line (one per process that hit the
mistake) stays the last thing printed, and a worker killed by a signal or failing with any other
status gets one line naming its rank. torchrun's own log messages are silenced unless LOGLEVEL
is set (torchrun's switch, e.g. LOGLEVEL=INFO). scripts/train.sh and scripts/run_table.sh launch through it.
"""
import logging
import os
import sys
from typing import List, Optional

from ..cli import run

__all__ = ["main"]


def main(argv: Optional[List[str]] = None) -> int:
    os.environ.setdefault("OMP_NUM_THREADS", "1")     # torchrun's default, without its banner
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run as elastic_run

    if "LOGLEVEL" not in os.environ:                   # torchrun's own verbosity switch
        for name in ("torch.distributed.run", "torch.distributed.elastic"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    try:
        elastic_run(parse_args(argv))
    except ChildFailedError as exc:
        rank, failure = exc.get_first_failure()
        if failure.exitcode > 0 and failure.exitcode != 1:
            return failure.exitcode                    # the worker printed its error line
        how = (f"was killed by {failure.signal_name()}" if failure.exitcode < 0
               else f"exited with status {failure.exitcode}")
        print(f"error: worker rank {rank} (local rank {failure.local_rank}) {how}; its output "
              f"above says why", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
