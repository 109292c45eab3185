"""The web application of ``dml-csr serve``: the page and the HTTP API (docs/inference.md, "Try it
in a browser").

    app = build_app(parser, max_upload_bytes=32 << 20, max_pixels=40_000_000, queue=4)

Routes:

- ``GET /``: the page (``static/index.html``; ``/static/app.js``, ``/static/style.css``);
- ``GET /healthz``: JSON facts of the parser: label names, tokens, palette, the mask names, the
  backend and the limits;
- ``POST /parse``: multipart form, file field ``image`` (one photo) and optional fields
  ``classes`` (comma-separated mask names), ``grow``, ``feather`` (pixels) and ``detect``
  (``0`` / ``1``). JSON: ``FaceParsingResult.summary(0)`` plus ``id``, ``seconds``,
  ``wait_seconds``, ``name`` and the maps as base64 data URLs: ``label_map`` (8-bit grey PNG of
  the class ids, photo size), ``overlay`` (JPEG, photo size, no legend) and, with ``classes``,
  ``mask`` (8-bit grey PNG);
- ``GET /mask?id=..&classes=..&grow=..&feather=..`` (or ``POST /mask`` with the same form
  fields): the mask PNG of a result still kept (the last ``keep`` results, label maps only).

Errors are JSON ``{"error": "..."}``: 413 for a body over ``max_upload_bytes`` (the declared
Content-Length first, then the bytes actually streamed) and for an image whose header declares
more than ``max_pixels`` pixels; 400 for a missing ``image`` field, a file that is not an image
or is truncated or corrupt, a malformed form or value, and an unknown mask class (the message
lists the valid names); 404 for a result no longer kept; 503 with ``Retry-After`` when ``queue``
requests already wait.

Memory: an upload is read into memory (never a temporary file: Starlette's ``UploadFile`` spools
to disk past 1 MB), fed to python-multipart's parser as it arrives, so the photo's bytes are held
once. One worker thread decodes, parses and encodes one request at a time, off the event loop;
at most ``queue`` more requests are admitted to wait (reading their bodies meanwhile), later ones
get 503 at once. Nothing is written to disk.
"""
import asyncio
import base64
import contextlib
import json
import logging
import math
import os
import secrets
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, List, Optional, Tuple
from urllib.parse import parse_qsl

import cv2
import numpy as np
from python_multipart import MultipartParser
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import parse_options_header
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from ..deploy.masks import MaskClassError, check_amounts, class_ids
from ..deploy.parser import draw_overlay
from ..files import ImageReadError, ImageTooLargeError, decode_image
from . import DEFAULT_KEEP, DEFAULT_MAX_PIXELS, DEFAULT_MAX_UPLOAD_MB, DEFAULT_QUEUE

__all__ = ["build_app", "STATIC_DIR"]

logger = logging.getLogger(__name__)

STATIC_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
MAX_FORM_PARTS = 16
# the largest grow / feather a request may ask for, in pixels: a feather of 300 px on a 12 MP
# photo takes about 1 s here (docs/inference.md, "Masks")
MAX_MASK_PIXELS = 300
MAX_NAME = 120                # characters of an upload's file name kept for messages
OVERLAY_JPEG = (cv2.IMWRITE_JPEG_QUALITY, 90)
# the page loads nothing from elsewhere; images are data: (the API's maps) or blob: (the photo)
SECURITY_HEADERS = [
    (b"content-security-policy",
     b"default-src 'self'; img-src 'self' data: blob:; script-src 'self'; style-src 'self'; "
     b"connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
     b"frame-ancestors 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
]


class HTTPError(Exception):
    """A request refused with ``status`` and a JSON ``{"error": message}``."""

    def __init__(self, status: int, message: str, headers: Optional[Dict[str, str]] = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def error_response(exc: HTTPError) -> JSONResponse:
    return JSONResponse({"error": exc.message}, status_code=exc.status, headers=exc.headers)


# ------------------------------------------------------------------------------ the request body
class Form:
    """The fields of a request body: ``fields`` (name -> text) and ``files`` (name -> (file
    name, bytes)); the first value of a repeated name wins."""

    def __init__(self):
        self.fields: Dict[str, str] = {}
        self.files: Dict[str, Tuple[str, bytes]] = {}


class _MultipartCollector:
    """python-multipart callbacks that keep every part in memory."""

    def __init__(self, form: Form):
        self.form = form
        self.parts = 0
        self._header = [b"", b""]
        self._disposition = b""
        self._data = bytearray()

    def callbacks(self):
        return {"on_part_begin": self.begin, "on_part_data": self.data,
                "on_part_end": self.end, "on_header_field": self.header_field,
                "on_header_value": self.header_value, "on_header_end": self.header_end}

    def begin(self) -> None:
        self.parts += 1
        if self.parts > MAX_FORM_PARTS:
            raise HTTPError(400, f"the form has more than {MAX_FORM_PARTS} parts")
        self._disposition = b""
        self._data = bytearray()

    def data(self, data: bytes, start: int, end: int) -> None:
        self._data += data[start:end]

    def header_field(self, data: bytes, start: int, end: int) -> None:
        self._header[0] += data[start:end]

    def header_value(self, data: bytes, start: int, end: int) -> None:
        self._header[1] += data[start:end]

    def header_end(self) -> None:
        if self._header[0].lower() == b"content-disposition":
            self._disposition = self._header[1]
        self._header = [b"", b""]

    def end(self) -> None:
        _, options = parse_options_header(self._disposition)
        if b"name" not in options:
            raise HTTPError(400, "a form part has no name (Content-Disposition: form-data; "
                                 "name=...)")
        name = options[b"name"].decode("utf-8", "replace")
        if b"filename" in options:
            filename = options[b"filename"].decode("utf-8", "replace")
            self.form.files.setdefault(name, (filename, bytes(self._data)))
        else:
            self.form.fields.setdefault(name, self._data.decode("utf-8", "replace"))
        self._data = bytearray()


def _too_large(size: str, limit: int) -> HTTPError:
    return HTTPError(413, f"the upload is {size} bytes, over the limit of {limit:,} bytes "
                          f"({limit / 2 ** 20:g} MB, --max-upload-mb)",
                     {"Connection": "close"})


async def read_form(request: Request, limit: int) -> Form:
    """The form of ``request``'s body (multipart/form-data or x-www-form-urlencoded), read into
    memory. HTTPError 413 when the declared Content-Length or the bytes actually streamed
    (chunked bodies) exceed ``limit``; 400 for another content type or a body that does not
    parse."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.strip().isdigit():
            raise HTTPError(400, f"Content-Length {declared!r} is not a number of bytes")
        if int(declared) > limit:
            raise _too_large(f"{int(declared):,}", limit)
    kind, options = parse_options_header(request.headers.get("content-type", ""))
    form = Form()
    if kind == b"multipart/form-data":
        if not options.get(b"boundary"):
            raise HTTPError(400, "multipart/form-data without a boundary")
        collector = _MultipartCollector(form)
        parser = MultipartParser(options[b"boundary"], collector.callbacks())
        feed, finish = parser.write, parser.finalize
    elif kind == b"application/x-www-form-urlencoded":
        text = bytearray()
        feed, finish = text.extend, lambda: form.fields.update(
            (k, v) for k, v in reversed(parse_qsl(text.decode("utf-8", "replace"),
                                                  keep_blank_values=True)))
    else:
        raise HTTPError(400, f"expected a form (multipart/form-data with the photo in the field "
                             f"'image'), got Content-Type "
                             f"{request.headers.get('content-type', 'none')!r}")
    received = 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > limit:
                raise _too_large(f"more than {limit:,}", limit)
            feed(chunk)
        finish()
    except FormParserError as exc:
        raise HTTPError(400, f"the form does not parse ({exc})") from None
    return form


# ------------------------------------------------------------------------------ form values
def _number(form: Form, name: str, default: float = 0.0) -> float:
    text = form.fields.get(name, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        raise HTTPError(400, f"{name} must be a number of pixels, got {text[:40]!r}") from None
    if not math.isfinite(value):
        raise HTTPError(400, f"{name} must be a finite number of pixels, got {text[:40]!r}")
    return value


def _switch(form: Form, name: str, default: bool) -> bool:
    text = form.fields.get(name, "").strip().lower()
    if not text:
        return default
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise HTTPError(400, f"{name} must be 0 or 1, got {text[:40]!r}")


class MaskRequest:
    """The mask fields of a form: ``classes`` (as given), ``grow``, ``feather``; ``ids``: the
    class ids, checked against the labels' names (400 listing them for an unknown one)."""

    def __init__(self, form: Form, names: Dict[str, Tuple[int, ...]], num_classes: int,
                 required: bool):
        self.classes = form.fields.get("classes", "").strip()
        self.grow = _number(form, "grow")
        self.feather = _number(form, "feather")
        try:
            check_amounts(self.grow, self.feather)
        except ValueError as exc:
            raise HTTPError(400, str(exc)) from None
        for name, value in (("grow", self.grow), ("feather", self.feather)):
            if abs(value) > MAX_MASK_PIXELS:
                raise HTTPError(400, f"{name} {value:g} px is over this server's limit of "
                                     f"{MAX_MASK_PIXELS} px")
        self.ids: Tuple[int, ...] = ()
        if not self.classes:
            if required:
                raise HTTPError(400, f"no mask classes given (field 'classes', comma-separated): "
                                     f"choose from {', '.join(names)}")
            return
        try:
            self.ids = class_ids(self.classes, names, num_classes)
        except MaskClassError as exc:
            raise HTTPError(400, str(exc)) from None

    def __bool__(self) -> bool:
        return bool(self.ids)

    def make(self, res) -> np.ndarray:
        """The mask of the one-photo result ``res``; 400 for amounts the photo cannot take (a
        grow longer than the photo)."""
        try:
            return res.mask(0, list(self.ids), grow=self.grow, feather=self.feather)
        except ValueError as exc:
            raise HTTPError(400, str(exc)) from None


# ------------------------------------------------------------------------------ the worker
class Worker:
    """One request's work at a time in one thread, off the event loop, and a bounded number
    admitted to wait: :meth:`slot` refuses with 503 when ``1 + queue`` requests are already in.
    ``admitted`` and ``_seconds`` change on the event loop only."""

    def __init__(self, queue: int):
        self.capacity = 1 + queue
        self.admitted = 0
        self._seconds = 1.0             # the last job's duration: the Retry-After estimate
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dml-csr-serve")

    @contextlib.contextmanager
    def slot(self):
        if self.admitted >= self.capacity:
            wait = max(1, math.ceil(self._seconds * self.admitted))
            raise HTTPError(503, f"busy: {self.admitted} requests are being served or waiting "
                                 f"(one at a time, --queue {self.capacity - 1}); try again in "
                                 f"{wait} s",
                            {"Retry-After": str(wait), "Connection": "close"})
        self.admitted += 1
        try:
            yield
        finally:
            self.admitted -= 1

    async def run(self, fn, *args):
        """``fn(*args)`` in the worker thread, after the jobs queued before it."""
        start = time.perf_counter()
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)
        finally:
            self._seconds = time.perf_counter() - start

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


class Results:
    """The last ``keep`` one-photo results by id (label maps only: parsed without logits), for
    ``/mask``; used from the worker thread and the event loop."""

    def __init__(self, keep: int):
        self.keep = keep
        self._items: "OrderedDict[str, object]" = OrderedDict()
        self._lock = threading.Lock()

    def add(self, res) -> str:
        key = secrets.token_hex(8)
        with self._lock:
            self._items[key] = res
            while len(self._items) > self.keep:
                self._items.popitem(last=False)
        return key

    def get(self, key: str):
        with self._lock:
            res = self._items.get(key)
            if res is not None:
                self._items.move_to_end(key)
        if res is None:
            raise HTTPError(404, f"result {key[:40]!r} is not kept (the server keeps the last "
                                 f"{self.keep} results, in memory only): parse the photo again")
        return res


def _encode(ext: str, image: np.ndarray, params: Tuple[int, ...] = ()) -> bytes:
    ok, buf = cv2.imencode(ext, image, list(params))
    if not ok:
        raise RuntimeError(f"cannot encode an array of shape {image.shape} as {ext}")
    return buf.tobytes()


def _png(image: np.ndarray) -> bytes:
    return _encode(".png", image)


def _data_url(data: bytes, mime: str) -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode("ascii")


# ------------------------------------------------------------------------------ the application
def build_app(parser, *, max_upload_bytes: int = DEFAULT_MAX_UPLOAD_MB << 20,
              max_pixels: int = DEFAULT_MAX_PIXELS, queue: int = DEFAULT_QUEUE,
              keep: int = DEFAULT_KEEP, detect: bool = True,
              allowed_hosts: Optional[List[str]] = None) -> Starlette:
    """The Starlette application serving ``parser`` (a :class:`dml_csr.FaceParser`; module
    docstring for the routes).

    Args:
        max_upload_bytes: the largest request body (413 beyond).
        max_pixels: the largest image, by its header's width x height (413 beyond, before
            decoding).
        queue: requests that may wait while one is served (503 with Retry-After beyond).
        keep: results kept for ``/mask``.
        detect: the default of the ``detect`` field (False: each photo is one face).
        allowed_hosts: the ``Host`` header's names answered (a DNS-rebinding guard for a server
            on the loopback: ``dml_csr.serve.LOOPBACK_HOSTS``); None answers any.
    """
    for name, value, low in (("max_upload_bytes", max_upload_bytes, 1),
                             ("max_pixels", max_pixels, 1), ("queue", queue, 0),
                             ("keep", keep, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be a whole number >= {low}, got {value!r}")
    worker = Worker(queue)
    results = Results(keep)
    schema = parser.schema
    names = schema.named_sets()
    num_classes = schema.num_classes

    def parse_job(data: bytes, name: str, detect_faces: bool, mask: MaskRequest,
                  queued: float) -> bytes:
        """The JSON answer of one photo (rendered here, off the event loop: megabytes of
        base64 for a large photo)."""
        started = time.perf_counter()
        image = decode_image(data, name, limit=max_pixels)
        del data
        photo = parser.as_photo(image)
        del image
        faces = parser.faces(photo, detect=detect_faces)
        res = parser.parse_faces([photo], [faces], detect=detect_faces)
        seconds = time.perf_counter() - started
        key = results.add(res)
        detected = detect_faces and parser.detector is not None
        out = dict(res.summary(0), id=key, name=name, seconds=round(seconds, 4),
                   wait_seconds=round(started - queued, 4), detect=detected)
        label_map = res.combined[0]
        out["label_map"] = _data_url(_png(label_map), "image/png")
        boxes = res.boxes if detected else None
        overlay = draw_overlay(photo, label_map, res.class_names, res.palette, boxes=boxes,
                               legend=False)
        del photo
        out["overlay"] = _data_url(_encode(".jpg", overlay, OVERLAY_JPEG), "image/jpeg")
        del overlay
        if mask:
            out.update(mask=_data_url(_png(mask.make(res)), "image/png"),
                       classes=mask.classes, grow=mask.grow, feather=mask.feather)
        return json.dumps(out, ensure_ascii=False, separators=(",", ":")).encode("utf-8")

    def mask_job(res, mask: MaskRequest) -> bytes:
        return _png(mask.make(res))

    async def healthz(request: Request) -> Response:
        return JSONResponse({
            "status": "ok", "dataset": schema.name, "class_names": list(schema.class_names),
            "tokens": list(schema.tokens), "palette": [list(c) for c in schema.palette],
            "mask_names": {k: list(v) for k, v in names.items()},
            "backend": parser.backend_name, "device": str(parser.device),
            "detector": None if parser.detector is None else type(parser.detector).__name__,
            "detect": detect, "crop_size": list(parser.crop_size), "flip": parser.flip,
            "scales": list(parser.scales),
            "limits": {"max_upload_bytes": max_upload_bytes, "max_pixels": max_pixels,
                       "queue": queue, "keep": keep},
            "busy": worker.admitted})

    async def parse(request: Request) -> Response:
        queued = time.perf_counter()
        with worker.slot():
            form = await read_form(request, max_upload_bytes)
            if "image" not in form.files:
                what = "a text field" if "image" in form.fields else "no field"
                raise HTTPError(400, f"no photo: the form has {what} 'image' (send the photo as "
                                     f"a file in the multipart field 'image')")
            filename, data = form.files.pop("image")
            filename = os.path.basename(filename.replace("\\", "/"))[:MAX_NAME] or "upload"
            mask = MaskRequest(form, names, num_classes, required=False)
            detect_faces = _switch(form, "detect", detect)
            del form
            try:
                body = await worker.run(parse_job, data, filename, detect_faces, mask, queued)
            except ImageTooLargeError as exc:
                raise HTTPError(413, str(exc)) from None
            except ImageReadError as exc:
                raise HTTPError(400, str(exc)) from None
        return Response(body, media_type="application/json")

    async def mask(request: Request) -> Response:
        with worker.slot():
            if request.method == "GET":
                form = Form()
                form.fields.update((k, v) for k, v in reversed(request.query_params.multi_items()))
            else:
                form = await read_form(request, max_upload_bytes)
            key = form.fields.get("id", "").strip()
            if not key:
                raise HTTPError(400, "no result id (field 'id': the 'id' of a /parse answer)")
            res = results.get(key)
            wanted = MaskRequest(form, names, num_classes, required=True)
            png = await worker.run(mask_job, res, wanted)
        return Response(png, media_type="image/png", headers={"Cache-Control": "no-store"})

    async def index(request: Request) -> Response:
        return FileResponse(os.path.join(STATIC_DIR, "index.html"),
                            headers={"Cache-Control": "no-cache"})

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        worker.close()

    return Starlette(
        routes=[Route("/", index), Route("/healthz", _json_errors(healthz)),
                Route("/parse", _json_errors(parse), methods=["POST"]),
                Route("/mask", _json_errors(mask), methods=["GET", "POST"]),
                Mount("/static", app=StaticFiles(directory=STATIC_DIR), name="static")],
        middleware=[Middleware(GuardMiddleware, allowed_hosts=allowed_hosts)],
        exception_handlers={404: _not_found, 405: _not_allowed},
        lifespan=lifespan)


def _json_errors(endpoint):
    """``endpoint`` with its HTTPError, client disconnects and unexpected errors answered as
    JSON (an unexpected one: 500, logged with its traceback); the server goes on."""
    async def wrapped(request: Request) -> Response:
        try:
            return await endpoint(request)
        except HTTPError as exc:
            return error_response(exc)
        except ClientDisconnect:
            return JSONResponse({"error": "the client went away"}, status_code=400)
        except MemoryError:
            logger.exception("out of memory on %s", request.url.path)
            return JSONResponse({"error": "out of memory on this request: try a smaller photo "
                                          "(or lower --max-pixels)"}, status_code=500)
        except Exception as exc:  # noqa: BLE001 - one failed request must not stop the server
            logger.exception("failed: %s", request.url.path)
            return JSONResponse({"error": f"internal error: {type(exc).__name__}: {exc}"},
                                status_code=500)
    wrapped.__name__ = endpoint.__name__
    return wrapped


async def _not_found(request: Request, exc) -> Response:
    return JSONResponse({"error": f"no such page: {request.url.path[:100]}"}, status_code=404)


async def _not_allowed(request: Request, exc) -> Response:
    return JSONResponse({"error": f"{request.method} is not allowed on {request.url.path[:100]}"},
                        status_code=405)


def host_name(header: str) -> str:
    """The name of a ``Host`` header, without its port (``[::1]:8000`` -> ``::1``)."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:].split("]", 1)[0]
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


class GuardMiddleware:
    """Every response gets :data:`SECURITY_HEADERS` (the page may load nothing from elsewhere);
    with ``allowed_hosts``, a request whose ``Host`` is another name is refused with 400 (a web
    page elsewhere cannot reach a loopback server through a rebound DNS name)."""

    def __init__(self, app, allowed_hosts: Optional[List[str]] = None):
        self.app = app
        self.allowed = None if allowed_hosts is None else {h.lower() for h in allowed_hosts}

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if self.allowed is not None:
            host = dict(scope["headers"]).get(b"host", b"").decode("latin-1")
            if host_name(host) not in self.allowed:
                response = JSONResponse(
                    {"error": f"host {host[:100]!r} is not served here (this server answers to "
                              f"{', '.join(sorted(self.allowed))})"}, status_code=400)
                return await response(scope, receive, self._secured(send))
        await self.app(scope, receive, self._secured(send))

    @staticmethod
    def _secured(send):
        async def wrapped(message):
            if message["type"] == "http.response.start":
                message = dict(message, headers=list(message.get("headers", [])) +
                               SECURITY_HEADERS)
            await send(message)
        return wrapped
