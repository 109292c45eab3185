"""A local web page and HTTP API to try the parser on your own photos.

    dml-csr serve (--checkpoint CKPT | --model NAME [--weights-dir DIR] | --onnx FILE)
        [--host 127.0.0.1] [--port 8000] [--max-upload-mb 32] [--max-pixels 40000000]
        [--queue 4] [--dataset NAME] [--detector auto|yunet|haar] [--no-detect] [--margin M]
        [--batch-size N] [--flip] [--scales 0.75 1.0 1.25] [--device cpu]
        [--precision fp32|bf16|int8 [--calibrate DIR]] [--threads N] [--trust-checkpoint]

Open the printed address in a browser: drop photos on the page; each gets its overlay, the faces
found, the time taken, per-class toggles, a mask panel (classes, grow, feather) and downloads.
The same server answers ``GET /healthz``, ``POST /parse`` and ``GET|POST /mask``
(``dml_csr/serve/app.py``; docs/inference.md, "Try it in a browser").

The server listens on 127.0.0.1 (this machine only) unless ``--host`` says otherwise: it has no
authentication and no TLS, so another address is opt-in and warned about. Uploads stay in memory
(nothing is written to disk); one photo is parsed at a time, ``--queue`` more may wait, later ones
are answered 503. An upload over ``--max-upload-mb`` or an image whose header declares more than
``--max-pixels`` pixels (default 40,000,000: a photo at the limit takes about 0.7 GB while it is
parsed; ``$DMLCSR_MAX_PIXELS`` when set) is refused with 413 before it is decoded.

Needs the web packages: ``pip install starlette uvicorn python-multipart`` (``scripts/install.sh``
puts them into ./.venv).
"""
import argparse
import logging
import os
import sys
from typing import Optional

from ..cli import add_debug_argument
from ..serve import (DEFAULT_MAX_PIXELS, DEFAULT_MAX_UPLOAD_MB, DEFAULT_QUEUE, LOOPBACK_HOSTS,
                     is_loopback, require_web_packages)
from .infer import add_model_arguments, check_model_arguments, parser_from_args

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_model_arguments(ap)
    ap.add_argument("--host", default=DEFAULT_HOST,
                    help=f"address to listen on (default {DEFAULT_HOST}: this machine only; "
                         f"another address lets others upload photos: no authentication, no TLS)")
    ap.add_argument("--port", type=int, default=DEFAULT_PORT,
                    help=f"port (default {DEFAULT_PORT}; 0: any free port, printed)")
    ap.add_argument("--max-upload-mb", type=float, default=DEFAULT_MAX_UPLOAD_MB, metavar="MB",
                    help=f"largest upload, in MB (default {DEFAULT_MAX_UPLOAD_MB}): larger "
                         f"bodies are refused with 413")
    ap.add_argument("--max-pixels", type=int, default=None, metavar="N",
                    help=f"refuse images whose header declares more pixels, before decoding "
                         f"(default {DEFAULT_MAX_PIXELS:,}, or DMLCSR_MAX_PIXELS): memory per "
                         f"photo grows with its pixels")
    ap.add_argument("--queue", type=int, default=DEFAULT_QUEUE, metavar="N",
                    help=f"requests that may wait while one photo is parsed (default "
                         f"{DEFAULT_QUEUE}); more are answered 503 with Retry-After")
    add_debug_argument(ap)
    args = ap.parse_args(argv)
    check_model_arguments(ap, args)
    if not 0 <= args.port <= 65535:
        ap.error(f"--port must be in 0..65535, got {args.port}")
    if not args.max_upload_mb > 0:
        ap.error(f"--max-upload-mb must be positive, got {args.max_upload_mb:g}")
    if args.max_pixels is not None and args.max_pixels < 1:
        ap.error(f"--max-pixels must be a positive number of pixels, got {args.max_pixels}")
    if args.queue < 0:
        ap.error(f"--queue must be 0 or more, got {args.queue}")
    return args


def server_max_pixels(value: Optional[int]) -> int:
    """The pixel limit of the server: ``--max-pixels``, else ``$DMLCSR_MAX_PIXELS`` when set,
    else :data:`DEFAULT_MAX_PIXELS` (lower than the command line's: a server holds the photo, its
    maps and its overlay for any upload)."""
    from ..files import MAX_PIXELS_ENV, max_pixels
    if value is None and not os.environ.get(MAX_PIXELS_ENV, "").strip():
        return DEFAULT_MAX_PIXELS
    return max_pixels(value)


def host_warning(host: str) -> Optional[str]:
    """The warning printed for a server that listens beyond this machine, None on a loopback
    address."""
    if is_loopback(host):
        return None
    return (f"warning: listening on {host}: anyone who can reach this machine can upload photos "
            f"to this server (no authentication, no TLS); use the default --host "
            f"{DEFAULT_HOST} to keep it to this machine")


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    require_web_packages()              # before the model loads: a missing package fails fast
    from ..deploy import set_inference_threads
    from ..serve.app import build_app
    from ..serve.server import bind, serve_forever, url_of

    limit = server_max_pixels(args.max_pixels)
    sock = bind(args.host, args.port)          # a taken port fails before the model loads
    try:
        set_inference_threads(args.threads)
        parser = parser_from_args(args)
        app = build_app(parser, max_upload_bytes=int(args.max_upload_mb * 2 ** 20),
                        max_pixels=limit, queue=args.queue, detect=not args.no_detect,
                        allowed_hosts=list(LOOPBACK_HOSTS) if is_loopback(args.host) else None)
        warning = host_warning(args.host)
        if warning:
            sys.stderr.write(warning + "\n")
        print(f"dml-csr serve: {parser.schema.name} labels, {parser.backend_name} backend on "
              f"{parser.device}; open {url_of(sock)}/ (Ctrl-C stops)", flush=True)
        serve_forever(app, sock)
    finally:
        sock.close()
    print("dml-csr serve: stopped", flush=True)
    return 0
