"""``dml-csr serve``: a local web page to try the face parser, and the HTTP API behind it.

- ``app.py``: :func:`build_app` (a parser and its limits -> a Starlette application: the page, the
  API ``/healthz``, ``/parse``, ``/mask``; uploads read into memory under a byte limit, one photo
  parsed at a time, a bounded queue, the last results kept in memory for ``/mask``);
- ``server.py``: the application on a socket with uvicorn (:func:`serve_forever` for the command,
  :class:`RunningServer` in a background thread for tests and scripts);
- ``static/``: the page (``index.html``, ``app.js``, ``style.css``), served by the package:
  nothing is loaded from another site.

Here, importing no web package: the server's limits (the command's defaults), the loopback test
and :func:`require_web_packages`. The web packages (starlette, uvicorn, python-multipart) are
optional: the rest of the project never imports them; ``app.py`` and ``server.py`` do, so call
:func:`require_web_packages` first for one error that names what to install. Documented in
docs/inference.md, "Try it in a browser".
"""
import importlib.util
import ipaddress

__all__ = ["WEB_PACKAGES", "MissingWebPackagesError", "require_web_packages", "is_loopback",
           "DEFAULT_MAX_UPLOAD_MB", "DEFAULT_MAX_PIXELS", "DEFAULT_QUEUE", "DEFAULT_KEEP",
           "LOOPBACK_HOSTS"]

DEFAULT_MAX_UPLOAD_MB = 32
# 40 MP: three times a 12 MP phone photo. One photo at the limit takes about 0.7 GB while it is
# parsed (BGR photo 120 MB, its label map 40 MB, the overlay and its blend 2 x 120 MB, the
# encoded PNG / JPEG and their base64), where the command line's limit (178,956,970 px) would
# allow 3 GB
DEFAULT_MAX_PIXELS = 40_000_000
DEFAULT_QUEUE = 4           # requests that may wait while one is parsed
DEFAULT_KEEP = 8            # results kept for /mask
# the Host names a loopback server answers to (a DNS-rebinding guard)
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")

# distribution -> the module it provides
WEB_PACKAGES = {"starlette": "starlette", "uvicorn": "uvicorn",
                "python-multipart": "python_multipart"}


class MissingWebPackagesError(ImportError):
    """The web packages ``dml-csr serve`` needs are not installed; the message names them."""


def require_web_packages() -> None:
    """MissingWebPackagesError naming the web packages that do not import here, with the
    ``pip install`` line for all three."""
    missing = []
    for dist, module in WEB_PACKAGES.items():
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):    # a module set to None in sys.modules
            found = False
        if not found:
            missing.append(dist)
    if missing:
        raise MissingWebPackagesError(
            f"dml-csr serve needs {', '.join(missing)} (not installed in this Python): "
            f"pip install starlette uvicorn python-multipart (or bash scripts/install.sh, which "
            f"puts them into ./.venv)")


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:
        return False
