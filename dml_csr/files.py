"""Files the user did not make, and every file the project writes.

Reading an image (:func:`read_image`) is one rule for every reader (the tools, the loader, the
data check, the preparers, the folder scorer, the int8 calibration):

- the width and height are read from the file's header before anything is decoded
  (:func:`image_header`: JPEG, PNG, BMP, WebP, TIFF and PNM; any other format is refused);
- an image over the pixel limit (:func:`max_pixels`: :data:`DEFAULT_MAX_PIXELS`, Pillow's
  error limit, unless ``$DMLCSR_MAX_PIXELS`` or the caller says otherwise) is refused before
  decoding: a 2 MB PNG can decode to gigabytes;
- a JPEG cut before its end-of-image marker, a PNG without its end chunk and a WebP shorter than
  its header says are refused (OpenCV's file reader would fill the missing part with grey);
- the bytes are decoded by ``cv2.imdecode``; every failure is an :class:`ImageReadError` (a
  ``ValueError``) that names the file and the reason.

Writing (:func:`write_bytes`, :func:`write_text`, :func:`write_json`, :func:`write_image`,
:func:`write_npz`, :func:`save_torch`, :func:`append_line`): into a hidden temporary file beside
the target (:func:`partial_path`), then renamed over it. A failed or killed write leaves the old
file or none, never a torn or empty one under the final name; a symbolic link at the target is
replaced, never written through. A failed write raises :class:`WriteError` (an ``OSError``)
naming the file. :func:`remove_partials` deletes the temporary files of processes that died.

Paths: :func:`check_output_folder` refuses an output folder that holds inputs, comparing real
paths (symbolic links resolved).
"""
import io
import json
import logging
import os
import re
import struct
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterable, Optional, Sequence, Tuple, Union

import cv2
import numpy as np

__all__ = ["ImageReadError", "ImageTooLargeError", "WriteError", "DEFAULT_MAX_PIXELS",
           "MAX_PIXELS_ENV", "max_pixels", "image_header", "read_image_size", "read_image",
           "decode_image",
           "partial_path", "remove_partials", "write_bytes", "write_text", "write_json",
           "write_image", "write_npz", "save_torch", "append_line", "PartialFile", "real_path",
           "check_output_folder", "check_not_input", "IMAGE_EXTS"]

logger = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]

# Pillow raises DecompressionBombError above twice its MAX_IMAGE_PIXELS (2 x 89,478,485): the same
# bound here. A 179 MP colour image decodes to 537 MB.
DEFAULT_MAX_PIXELS = 178_956_970
MAX_PIXELS_ENV = "DMLCSR_MAX_PIXELS"
_HEADER_BYTES = 64 * 1024          # read before anything else; JPEG segments are walked past it
_FORMATS = "JPEG, PNG, BMP, WebP, TIFF or PNM"
# the file names a photo folder offers (infer, int8 calibration); PNM is read but not listed
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


class ImageReadError(ValueError):
    """An image file that is refused or cannot be decoded; the message names the file."""


class ImageTooLargeError(ImageReadError):
    """An image whose header declares more pixels than the limit (:func:`max_pixels`)."""


class WriteError(OSError):
    """A file that could not be written (full disk, no permission, ...); the message names it."""


# ------------------------------------------------------------------------------- the pixel limit
def max_pixels(value: Optional[int] = None) -> int:
    """The pixel limit in force: ``value`` when given, else ``$DMLCSR_MAX_PIXELS``, else
    :data:`DEFAULT_MAX_PIXELS`. ValueError naming the option or variable when it is not a
    positive integer."""
    source = "max_pixels"
    if value is None:
        text = os.environ.get(MAX_PIXELS_ENV, "").strip()
        if not text:
            return DEFAULT_MAX_PIXELS
        source = MAX_PIXELS_ENV
        try:
            value = int(text.replace("_", ""))
        except ValueError:
            raise ValueError(f"{MAX_PIXELS_ENV}={text!r} is not a whole number of pixels") from None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{source} must be a positive whole number of pixels, got {value!r}")
    return int(value)


# ------------------------------------------------------------------------------- image headers
def _jpeg_header(f: BinaryIO) -> Tuple[int, int, int]:
    """(width, height, offset of the first scan) of a JPEG, walking its marker segments."""
    f.seek(2)
    size = None
    while True:
        byte = f.read(1)
        if not byte:
            raise ValueError("the JPEG is truncated before its first scan")
        if byte != b"\xff":
            raise ValueError("corrupt JPEG marker structure")
        marker = f.read(1)
        while marker == b"\xff":            # fill bytes
            marker = f.read(1)
        if not marker:
            raise ValueError("the JPEG is truncated before its first scan")
        m = marker[0]
        if m == 0x01 or 0xD0 <= m <= 0xD8:  # markers without a segment
            continue
        if m == 0xD9:
            raise ValueError("the JPEG is truncated before its first scan")
        raw = f.read(2)
        if len(raw) < 2 or struct.unpack(">H", raw)[0] < 2:
            raise ValueError("corrupt JPEG segment length")
        length = struct.unpack(">H", raw)[0]
        if m == 0xDA:                        # start of scan: the entropy-coded data follows
            if size is None:
                raise ValueError("the JPEG has no frame header before its scan")
            return size[0], size[1], f.tell() + length - 2
        if 0xC0 <= m <= 0xCF and m not in (0xC4, 0xC8, 0xCC):   # SOFn: a frame header
            frame = f.read(5)
            if len(frame) < 5:
                raise ValueError("the JPEG is truncated inside its frame header")
            height, width = struct.unpack(">HH", frame[1:5])
            if size is None:
                size = (width, height)
            f.seek(length - 7, 1)
        else:
            f.seek(length - 2, 1)


def _tiff_size(f: BinaryIO, head: bytes) -> Tuple[int, int]:
    """Width and height from the TIFF's first image directory, wherever in the file it lies
    (libtiff writes it after the pixel data): the directory is read from its offset, which must
    lie inside the file."""
    order = "<" if head[:2] == b"II" else ">"
    (ifd,) = struct.unpack(order + "I", head[4:8])
    size = os.fstat(f.fileno()).st_size
    if ifd < 8 or ifd + 2 > size:
        raise ValueError(f"the TIFF's first directory offset {ifd} lies outside the file "
                         f"({size} bytes)")
    f.seek(ifd)
    (count,) = struct.unpack(order + "H", f.read(2))
    entries = f.read(12 * count)            # at most 786 kB: count is 16 bits
    found = {}
    for i in range(len(entries) // 12):
        entry = entries[12 * i: 12 * i + 12]
        tag, kind = struct.unpack(order + "HH", entry[:4])
        if tag in (256, 257):                # ImageWidth, ImageLength: SHORT or LONG
            fmt = order + ("H" if kind == 3 else "I")
            found[tag] = struct.unpack(fmt, entry[8:8 + struct.calcsize(fmt)])[0]
    if 256 not in found or 257 not in found:
        raise ValueError("the TIFF's first directory declares no width and height")
    return found[256], found[257]


def _webp_size(head: bytes) -> Tuple[int, int]:
    chunk = head[12:16]
    if chunk == b"VP8 " and len(head) >= 30:
        w, h = struct.unpack("<HH", head[26:30])
        return w & 0x3FFF, h & 0x3FFF
    if chunk == b"VP8L" and len(head) >= 25:
        bits = int.from_bytes(head[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X" and len(head) >= 30:
        return int.from_bytes(head[24:27], "little") + 1, int.from_bytes(head[27:30], "little") + 1
    raise ValueError("unknown WebP chunk layout")


def _pnm_size(head: bytes) -> Tuple[int, int]:
    text = re.sub(rb"#[^\n]*", b" ", head[2:256])
    fields = text.split()
    if len(fields) < 2 or not (fields[0].isdigit() and fields[1].isdigit()):
        raise ValueError("the PNM header declares no width and height")
    return int(fields[0]), int(fields[1])


def image_header(f: BinaryIO) -> Tuple[str, int, int, Optional[int]]:
    """``(format, width, height, first scan offset)`` from the header of the image file ``f``
    (opened in binary mode; the offset is the JPEG's and None for the other formats). Reads a
    few bytes only, decodes nothing. ValueError when the format is not one of JPEG, PNG, BMP,
    WebP, TIFF or PNM, or its header does not parse."""
    head = f.read(_HEADER_BYTES)
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        if len(head) < 24 or head[12:16] != b"IHDR":
            raise ValueError("the PNG has no IHDR header")
        w, h = struct.unpack(">II", head[16:24])
        return "png", w, h, None
    if head.startswith(b"\xff\xd8"):
        return ("jpeg",) + _jpeg_header(f)
    if head.startswith(b"BM") and len(head) >= 26:
        (dib,) = struct.unpack("<I", head[14:18])
        w, h = struct.unpack("<HH", head[18:22]) if dib == 12 else struct.unpack("<ii", head[18:26])
        return "bmp", abs(w), abs(h), None
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return ("webp",) + _webp_size(head) + (None,)
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return ("tiff",) + _tiff_size(f, head) + (None,)
    if len(head) > 2 and head[:1] == b"P" and head[1:2] in b"123456" and head[2:3].isspace():
        return ("pnm",) + _pnm_size(head) + (None,)
    raise ValueError(f"not a {_FORMATS} image")


def _open_image(path: PathLike) -> BinaryIO:
    path = os.fspath(path)
    if not os.path.isfile(path):
        what = "is a folder, not an image" if os.path.isdir(path) else "does not exist"
        raise FileNotFoundError(f"image {path} {what}")
    return open(path, "rb")


def _check_size(path: PathLike, fmt: str, width: int, height: int, limit: Optional[int]) -> None:
    if width < 1 or height < 1:
        raise ImageReadError(f"{path}: its {fmt.upper()} header declares an empty image "
                             f"({width} x {height})")
    limit = max_pixels(limit)
    if width * height > limit:
        raise ImageTooLargeError(
            f"{path}: its {fmt.upper()} header declares {width} x {height} = "
            f"{width * height:,} pixels, over the limit of {limit:,} (a decompression bomb, or a "
            f"genuinely huge image: raise the limit with --max-pixels or {MAX_PIXELS_ENV})")


def _checked_header(path: PathLike, f: BinaryIO,
                    limit: Optional[int]) -> Tuple[str, int, int, Optional[int]]:
    """:func:`image_header` of the open file ``f``, refused (named) when it does not parse or
    declares an empty image or more pixels than ``limit``."""
    try:
        fmt, width, height, scan = image_header(f)
    except (ValueError, struct.error) as exc:
        raise ImageReadError(f"{path}: cannot read its size from the header ({exc})") from None
    _check_size(path, fmt, width, height, limit)
    return fmt, width, height, scan


def read_image_size(path: PathLike, limit: Optional[int] = None) -> Tuple[int, int]:
    """``(height, width)`` of the image file ``path`` from its header, nothing decoded; the
    errors of :func:`read_image` for a format, header or size it refuses."""
    with _open_image(path) as f:
        _, width, height, _ = _checked_header(path, f, limit)
    return height, width


def _truncated(fmt: str, data: bytes, scan: Optional[int]) -> bool:
    if fmt == "jpeg":                       # FF D9 cannot occur inside entropy-coded data
        return data.find(b"\xff\xd9", scan) < 0
    if fmt == "png":
        return data.rfind(b"IEND") < 0
    if fmt == "webp":
        return len(data) < struct.unpack("<I", data[4:8])[0] + 8
    return False


def read_image(path: PathLike, flags: int = cv2.IMREAD_COLOR,
               limit: Optional[int] = None) -> np.ndarray:
    """The image file ``path`` decoded by ``cv2.imdecode(data, flags)`` (default: uint8 BGR
    (H, W, 3); ``cv2.IMREAD_UNCHANGED`` for label maps, ``cv2.IMREAD_GRAYSCALE``), after the
    checks of the module docstring; ``limit``: the pixel limit (default :func:`max_pixels`).

    Raises:
        FileNotFoundError: ``path`` is not a file.
        ImageTooLargeError: the header declares more pixels than the limit.
        ImageReadError: an unknown format, a header that does not parse, a truncated file, or a
            decoder failure; the message names the file.
    """
    with _open_image(path) as f:
        fmt, _, _, scan = _checked_header(path, f, limit)
        f.seek(0)
        data = f.read()
    return _decode(path, fmt, data, scan, flags)


def decode_image(data: bytes, name: str, flags: int = cv2.IMREAD_COLOR,
                 limit: Optional[int] = None) -> np.ndarray:
    """:func:`read_image` for an image already in memory (an upload): the same checks (header
    first, pixel limit before decoding, truncation) and errors, which name ``name``."""
    f = io.BytesIO(data)
    fmt, _, _, scan = _checked_header(name, f, limit)
    return _decode(name, fmt, data, scan, flags)


def _decode(path: PathLike, fmt: str, data: bytes, scan: Optional[int], flags: int) -> np.ndarray:
    if _truncated(fmt, data, scan):
        raise ImageReadError(f"{path}: the {fmt.upper()} file is truncated (it ends before its "
                             f"last part): copy it again")
    try:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    except cv2.error as exc:
        reason = (str(exc).strip().splitlines() or ["OpenCV error"])[-1][:160]
        raise ImageReadError(f"{path}: the {fmt.upper()} decoder failed ({reason})") from None
    if image is None or image.size == 0:
        raise ImageReadError(f"{path}: cannot be decoded as a {fmt.upper()} image (corrupt data)")
    return image


# ------------------------------------------------------------------------------- writing
def partial_path(path: PathLike) -> Path:
    """The hidden temporary name ``.NAME.<pid>.partial`` beside ``path``."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.partial")


# the temporary names: partial_path's, optionally + the real suffix (a video's, for FFmpeg)
_PARTIAL = re.compile(r"\..+\.(\d+)\.partial(\.[A-Za-z0-9]+)?")


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:          # exists, owned by someone else
        return True
    return True


def remove_partials(folder: PathLike) -> int:
    """Delete the temporary files (``.NAME.<pid>.partial``) in ``folder`` whose writing process
    is gone (killed mid-write); returns how many."""
    removed = 0
    if not os.path.isdir(folder):
        return 0
    for name in os.listdir(folder):
        m = _PARTIAL.fullmatch(name)
        if m and not _alive(int(m.group(1))):
            try:
                os.remove(os.path.join(folder, name))
                removed += 1
            except OSError:
                pass
    return removed


def _write_atomic(path: PathLike, write: Callable[[BinaryIO], None], fsync: bool) -> None:
    path = Path(path)
    tmp = partial_path(path)
    try:
        tmp.unlink(missing_ok=True)          # never write through a stale link
        with open(tmp, "xb") as f:
            write(f)
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, WriteError):
            raise
        error = WriteError(f"cannot write {path}: {exc.strerror or exc}")
        error.errno = exc.errno
        raise error from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes(path: PathLike, data: bytes, fsync: bool = False) -> None:
    """Write ``data`` to ``path`` atomically (module docstring); ``fsync``: flush it to the disk
    before the rename (checkpoints, results)."""
    _write_atomic(path, lambda f: f.write(data), fsync)


def write_text(path: PathLike, text: str, fsync: bool = True) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    write_bytes(path, text.encode("utf-8"), fsync)


def write_json(path: PathLike, obj: Any, indent: Optional[int] = 1, **dumps: Any) -> None:
    """Write ``obj`` as JSON (and a final newline) to ``path`` atomically."""
    write_text(path, json.dumps(obj, indent=indent, **dumps) + "\n")


def append_line(path: PathLike, line: str) -> None:
    """Append one line to the small text file ``path`` (a JSON-lines log) by rewriting it
    atomically: a failure leaves the file as it was, never with a torn last line."""
    old = b""
    if os.path.isfile(path):
        with open(path, "rb") as f:
            old = f.read()
        if old and not old.endswith(b"\n"):
            old += b"\n"
    write_bytes(path, old + line.rstrip("\n").encode("utf-8") + b"\n", fsync=True)


def write_image(path: PathLike, image: np.ndarray, params: Sequence[int] = ()) -> None:
    """Encode ``image`` in the format of ``path``'s extension and write it atomically;
    WriteError naming the file when it cannot be encoded or written."""
    ext = Path(path).suffix or ".png"
    try:
        ok, buf = cv2.imencode(ext, image, list(params))
    except cv2.error as exc:
        ok, buf = False, exc
    if not ok:
        raise WriteError(f"cannot write {path}: an array of shape {np.shape(image)} cannot be "
                         f"encoded as {ext}")
    write_bytes(path, buf.tobytes())


def write_npz(path: PathLike, **arrays: np.ndarray) -> None:
    """``numpy.savez`` of ``arrays`` into ``path``, atomically."""
    _write_atomic(path, lambda f: np.savez(f, **arrays), fsync=False)


def save_torch(obj: Any, path: PathLike) -> None:
    """``torch.save(obj)`` into ``path`` atomically, flushed to the disk before the rename: a kill
    at any moment leaves the old file or the new one."""
    import torch
    _write_atomic(path, lambda f: torch.save(obj, f), fsync=True)


class PartialFile:
    """A file written piece by piece (a video, JSON lines) under its hidden temporary name
    (:func:`partial_path`, plus ``path``'s own suffix with ``keep_suffix``: FFmpeg reads the
    container from it) and renamed into place by :meth:`commit`; :meth:`discard` removes it.
    ``text=True`` opens :attr:`file` for text (:meth:`write`); otherwise another writer (OpenCV's)
    fills :attr:`tmp`. Errors are ``WriteError`` naming ``path``."""

    def __init__(self, path: PathLike, keep_suffix: bool = False, text: bool = False):
        self.path = str(path)
        self.tmp = str(partial_path(path)) + (Path(path).suffix if keep_suffix else "")
        self.file = None
        try:
            if os.path.lexists(self.tmp):
                os.remove(self.tmp)          # never write through a stale link
            if text:
                self.file = open(self.tmp, "x", encoding="utf-8")
        except OSError as exc:
            raise WriteError(f"cannot write {self.path}: {exc.strerror or exc}") from exc

    def write(self, text: str) -> None:
        try:
            self.file.write(text)
        except OSError as exc:
            raise WriteError(f"cannot write {self.path}: {exc.strerror or exc}") from exc

    def commit(self, fsync: bool = True) -> None:
        """Flush (to the disk with ``fsync``) and rename into place; an empty or missing
        temporary file is a WriteError (nothing was written)."""
        try:
            if self.file is not None:
                self.file.flush()
                if fsync:
                    os.fsync(self.file.fileno())
                self.file.close()
            if not os.path.isfile(self.tmp) or os.path.getsize(self.tmp) == 0:
                raise WriteError(f"cannot write {self.path}: nothing was written")
            os.replace(self.tmp, self.path)
        except OSError as exc:
            self.discard()
            if isinstance(exc, WriteError):
                raise
            raise WriteError(f"cannot write {self.path}: {exc.strerror or exc}") from exc

    def discard(self) -> None:
        if self.file is not None:
            try:
                self.file.close()
            except OSError:
                pass
        try:
            os.remove(self.tmp)
        except FileNotFoundError:
            pass


# ------------------------------------------------------------------------------- paths
def real_path(path: PathLike) -> str:
    """``path`` with every symbolic link resolved (the file it reaches)."""
    return os.path.realpath(os.fspath(path))


def check_output_folder(folder: PathLike, inputs: Iterable[PathLike], what: str) -> None:
    """ValueError when the output folder ``folder`` (``what``: the option that names it) is, by
    real path, the folder of one of the ``inputs`` files: its outputs could replace them."""
    out = real_path(folder)
    for p in inputs:
        if os.path.dirname(real_path(p)) == out:
            raise ValueError(f"{what} {folder} is where input {p} lives (compared with symbolic "
                             f"links resolved): its outputs could replace the inputs; choose "
                             f"another folder")


def check_not_input(path: PathLike, inputs: Iterable[PathLike], what: str) -> None:
    """ValueError when the output file ``path`` is, by real path, one of the ``inputs``."""
    out = real_path(path)
    for p in inputs:
        if p is not None and real_path(p) == out:
            raise ValueError(f"{what} {path} is the input {p} (compared with symbolic links "
                             f"resolved): choose another output file")
