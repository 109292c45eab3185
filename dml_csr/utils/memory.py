"""Resident memory of this process, for the benchmarks (Linux ``/proc``; zeros elsewhere).

:func:`status_bytes` reads ``VmRSS`` (resident now) or ``VmHWM`` (the peak); :func:`reset_hwm`
restarts the peak from the current resident size, so that one phase of a run can be measured.
"""

__all__ = ["status_bytes", "reset_hwm"]


def status_bytes(field: str) -> int:
    """A memory field of ``/proc/self/status`` in bytes: ``VmRSS`` (resident now) or ``VmHWM``
    (the peak since the start or the last reset); 0 where it is missing."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def reset_hwm() -> bool:
    """Reset the peak (VmHWM, and ru_maxrss with it) to the current RSS: Linux's
    ``/proc/self/clear_refs`` value 5; False where that is not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False
