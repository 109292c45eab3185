"""``python -m dml_csr COMMAND [args]``: the same commands as ``dml-csr`` (dml_csr/commands)."""
import sys

from .commands import main

sys.exit(main())
