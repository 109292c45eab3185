"""A small three-stage pipeline that keeps every CPU core busy while the network runs.

    reader thread:  decode the next photos / frames and find their faces   (:func:`prefetch`)
    caller:         the network                                            (the loop body)
    writer thread:  overlays, encoding and writing the outputs             (:class:`Writer`)

OpenCV's decoding, resizing and encoding, the YuNet library and onnxruntime release Python's lock
while they work, so on a 2-core machine the reader and the writer run on the core the network
leaves idle between its parallel sections (docs/inference.md, "Video": frames per second with and
without the threads). Both queues are bounded (``depth`` items), so memory does not grow with the
number of photos or the length of a clip.

Errors: an exception in the reader is raised in the caller at the item where it happened; an
exception in the writer is raised at the caller's next :meth:`Writer.submit` (or at
:meth:`Writer.close`), and the writer runs nothing after it. Ctrl-C in the caller stops both
threads: the reader at its next item, the writer after the write it is doing (every write is
atomic, ``dml_csr/files.py``), dropping those still queued.
"""
import queue
import threading
from typing import Any, Callable, Iterable, Iterator, Optional, TypeVar

__all__ = ["prefetch", "Writer"]

T = TypeVar("T")
U = TypeVar("U")

_DONE = object()


class _Failure:
    def __init__(self, exc: BaseException):
        self.exc = exc


def _put(q: "queue.Queue", item: Any, stop: threading.Event) -> bool:
    """Put ``item`` unless ``stop`` is set first; True when it went in."""
    while not stop.is_set():
        try:
            q.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


def prefetch(items: Iterable[T], prepare: Callable[[T], U] = lambda x: x,
             depth: int = 2, threaded: bool = True) -> Iterator[U]:
    """``prepare(item)`` for each of ``items``, computed up to ``depth`` items ahead in a reader
    thread (the iteration of ``items`` too); yields the results in order. ``threaded=False``: the
    same, in the caller's thread (the reference the threaded form is measured against)."""
    if not threaded:
        for item in items:
            yield prepare(item)
        return
    q: "queue.Queue" = queue.Queue(maxsize=max(1, int(depth)))
    stop = threading.Event()

    def work():
        try:
            for item in items:
                if not _put(q, prepare(item), stop):
                    return
        except BaseException as exc:           # raised again in the caller
            _put(q, _Failure(exc), stop)
            return
        _put(q, _DONE, stop)

    thread = threading.Thread(target=work, name="dml_csr-reader", daemon=True)
    thread.start()
    try:
        while True:
            got = q.get()
            if got is _DONE:
                break
            if isinstance(got, _Failure):
                raise got.exc
            yield got
    finally:
        stop.set()
        thread.join(timeout=5.0)


class Writer:
    """Runs ``submit``-ted calls in order in a writer thread (``threaded=False``: at once, in the
    caller's thread). Use as a context manager, or call :meth:`close`: it waits for the queued
    calls and raises the first error; leaving the block by an exception drops the queued ones."""

    def __init__(self, depth: int = 2, threaded: bool = True):
        self.threaded = threaded
        self._q: "queue.Queue" = queue.Queue(maxsize=max(1, int(depth)))
        self._stop = threading.Event()
        self._error: Optional[BaseException] = None
        self._thread: Optional[threading.Thread] = None
        if threaded:
            self._thread = threading.Thread(target=self._work, name="dml_csr-writer", daemon=True)
            self._thread.start()

    def _work(self) -> None:
        while True:
            try:
                got = self._q.get(timeout=0.1)
            except queue.Empty:
                if self._stop.is_set():
                    return
                continue
            if got is _DONE:
                return
            if self._error is not None or self._stop.is_set():
                continue                      # drop what follows an error or a stop
            fn, args, kwargs = got
            try:
                fn(*args, **kwargs)
            except BaseException as exc:
                self._error = exc

    def _raise(self) -> None:
        if self._error is not None:
            exc, self._error = self._error, None
            self._stop.set()
            raise exc

    def submit(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        """Queue ``fn(*args, **kwargs)`` (waits while ``depth`` calls are queued); raises an
        earlier call's error."""
        self._raise()
        if not self.threaded:
            fn(*args, **kwargs)
            return
        while True:
            try:
                self._q.put((fn, args, kwargs), timeout=0.1)
                break
            except queue.Full:
                if not self._thread.is_alive():
                    raise RuntimeError("the writer thread has stopped") from None
        self._raise()

    def close(self) -> None:
        """Wait for the queued calls; raise the first error among them."""
        if self._thread is not None and self._thread.is_alive():
            while self._thread.is_alive():
                try:
                    self._q.put(_DONE, timeout=0.1)
                    break
                except queue.Full:
                    continue
            self._thread.join()
        self._raise()

    def abort(self) -> None:
        """Drop the queued calls and stop after the one running (Ctrl-C, an error elsewhere)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30.0)

    def __enter__(self) -> "Writer":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
