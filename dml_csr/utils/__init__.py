"""Measurement helpers for benchmarks and tests, not used by training or inference:
``complexity.py`` (parameters, FLOPs, CPU latency) and ``random_weights.py`` (stand-ins for
trained norms in parity tests and speed benchmarks), ``photos.py`` (turned copies of photos for
the detector tests and benchmarks), ``clips.py`` (video clips of a still photo along a known
camera path, for the video benchmark), ``memory.py`` (this process's resident memory and its peak). Inference code lives in ``dml_csr.deploy``.
"""
