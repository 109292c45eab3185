"""``dml-csr serve`` run from a checkout (the code: dml_csr/commands/serve.py)."""
import os
import sys

# this checkout's package, also where another dml_csr is installed
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dml_csr.cli import run  # noqa: E402
from dml_csr.commands.serve import main  # noqa: E402,F401

if __name__ == "__main__":
    sys.exit(run(main))
