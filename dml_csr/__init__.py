"""DML-CSR and FP-LIIF face parsing: a faithful, runnable reproduction."""
__version__ = "0.1.0"

__all__ = ["FaceParser"]


def __getattr__(name):  # the user API imports torch and OpenCV: only when asked for
    if name == "FaceParser":
        from .deploy import FaceParser
        return FaceParser
    raise AttributeError(f"module 'dml_csr' has no attribute {name!r}")
