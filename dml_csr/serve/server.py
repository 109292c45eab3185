"""The application on a socket, served by uvicorn: :func:`serve_forever` (the command; Ctrl-C
stops it) and :class:`RunningServer` (a background thread: tests, the screenshot and the
benchmark).

The socket is bound here, before uvicorn starts, so that port 0 (any free port) is known and
printed as the real one.
"""
import socket
import threading
import time
from typing import Optional

import uvicorn

__all__ = ["bind", "url_of", "serve_forever", "RunningServer"]


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host``:``port`` (0: any free port); OSError naming the
    address when it cannot be bound (the port taken, say)."""
    infos = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM,
                               flags=socket.AI_PASSIVE)
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, f"cannot listen on {host}:{port}: {exc.strerror or exc}") \
            from None
    sock.set_inheritable(True)
    return sock


def url_of(sock: socket.socket) -> str:
    """``http://HOST:PORT`` of a bound socket (IPv6 hosts in brackets)."""
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _config(app, log_level: str) -> "uvicorn.Config":
    # no access log lines: they would name every upload; errors are logged by the application
    return uvicorn.Config(app, log_level=log_level, access_log=False, lifespan="on",
                          timeout_keep_alive=5)


def serve_forever(app, sock: socket.socket, log_level: str = "warning") -> None:
    """Serve ``app`` on ``sock`` until Ctrl-C (returns) or SIGTERM; the requests under way are
    finished first."""
    try:
        uvicorn.Server(_config(app, log_level)).run(sockets=[sock])
    except KeyboardInterrupt:       # uvicorn shuts down on Ctrl-C, then raises it again
        pass


class RunningServer:
    """``app`` served in a background thread on ``host``:``port`` (0: a free port): ``url``;
    :meth:`stop` (or the ``with`` block's end) shuts it down."""

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0,
                 log_level: str = "warning", timeout: float = 30.0):
        self.sock = bind(host, port)
        self.url = url_of(self.sock)
        self.server = uvicorn.Server(_config(app, log_level))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]},
                                       name="dml-csr-serve", daemon=True)
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the server on {self.url} did not start")
            time.sleep(0.01)

    def stop(self, timeout: Optional[float] = 30.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)
        self.sock.close()

    def __enter__(self) -> "RunningServer":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
