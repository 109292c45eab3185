# Sourced by the scripts (from the repository root): installs what is missing (scripts/install.sh)
# and sets PY, the interpreter every step runs: $DMLCSR_PYTHON as it is, with the project put on
# PYTHONPATH, or ./.venv/bin/python.
bash scripts/install.sh
if [ -n "${DMLCSR_PYTHON:-}" ]; then
  PY="$DMLCSR_PYTHON"
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
  PY=.venv/bin/python
fi
