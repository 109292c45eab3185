"""DML-CSR and FP-LIIF face parsing: a faithful, runnable reproduction."""
__version__ = "0.1.0"
