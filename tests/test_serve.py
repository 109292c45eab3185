"""Contracts of ``dml-csr serve`` (dml_csr/serve, dml_csr/commands/serve.py): the real uvicorn
server on a free port in a background thread, a tiny parser whose label maps follow the photo's
colours, the real photos of tests/data/photos, and raw HTTP requests (http.client), so the size
limits are exercised end to end, chunked bodies included."""
import base64
import http.client
import json
import re
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

pytest.importorskip("starlette", reason="dml-csr serve needs starlette, uvicorn, python-multipart")
pytest.importorskip("uvicorn", reason="dml-csr serve needs starlette, uvicorn, python-multipart")
pytest.importorskip("python_multipart", reason="dml-csr serve needs python-multipart")

from dml_csr.cli import run  # noqa: E402
from dml_csr.commands import serve as serve_command  # noqa: E402
from dml_csr.data.schemas import get_schema  # noqa: E402
from dml_csr.files import read_image  # noqa: E402
from dml_csr.serve import MissingWebPackagesError, require_web_packages  # noqa: E402
from dml_csr.serve.app import STATIC_DIR, build_app, host_name  # noqa: E402
from dml_csr.serve.server import RunningServer  # noqa: E402
from test_api import _colour_parser, ckpt  # noqa: E402,F401  (a fixture)

REPO = Path(__file__).resolve().parents[1]
PHOTOS = sorted((REPO / "tests" / "data" / "photos").glob("*.jpg"))
CROP = (64, 64)
MAX_UPLOAD = 3 << 20
MAX_PIXELS = 2_000_000


class Recording:
    """A parser whose ``parse_faces`` records how many run at once (and can be held at a gate
    or slowed); everything else is the wrapped parser's."""

    def __init__(self, parser, delay=0.0):
        self._parser = parser
        self.delay = delay
        self.gate = None
        self.running = 0
        self.most = 0
        self.calls = 0
        self._lock = threading.Lock()

    def __getattr__(self, name):
        return getattr(self._parser, name)

    def parse_faces(self, *args, **kwargs):
        with self._lock:
            self.running += 1
            self.calls += 1
            self.most = max(self.most, self.running)
        try:
            if self.gate is not None:
                assert self.gate.wait(30), "the gate was never opened"
            time.sleep(self.delay)
            return self._parser.parse_faces(*args, **kwargs)
        finally:
            with self._lock:
                self.running -= 1


# ------------------------------------------------------------------------------ HTTP helpers
class Client:
    def __init__(self, url):
        host, port = url[len("http://"):].rsplit(":", 1)
        self.host, self.port = host, int(port)

    def connection(self):
        return http.client.HTTPConnection(self.host, self.port, timeout=60)

    def request(self, method, path, body=None, headers=None):
        """(status, headers dict, body bytes)."""
        conn = self.connection()
        try:
            conn.request(method, path, body=body, headers=headers or {})
            r = conn.getresponse()
            return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
        finally:
            conn.close()

    def json(self, method, path, body=None, headers=None):
        status, head, data = self.request(method, path, body, headers)
        return status, head, json.loads(data)

    def parse(self, image: bytes, name="photo.jpg", **fields):
        body, ctype = multipart({"image": (name, image), **fields})
        return self.json("POST", "/parse", body, {"Content-Type": ctype})


def multipart(fields):
    """(body, Content-Type) of a multipart/form-data form; a (name, bytes) value is a file."""
    boundary = "----dmlcsr-test-boundary-7f3a"
    out = bytearray()
    for key, value in fields.items():
        out += f"--{boundary}\r\n".encode()
        if isinstance(value, tuple):
            out += (f'Content-Disposition: form-data; name="{key}"; filename="{value[0]}"\r\n'
                    f"Content-Type: application/octet-stream\r\n\r\n").encode() + value[1]
        else:
            out += f'Content-Disposition: form-data; name="{key}"\r\n\r\n{value}'.encode()
        out += b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return bytes(out), f"multipart/form-data; boundary={boundary}"


def decode_data_url(url, flags=cv2.IMREAD_UNCHANGED):
    head, data = url.split(",", 1)
    assert head in ("data:image/png;base64", "data:image/jpeg;base64"), head
    return cv2.imdecode(np.frombuffer(base64.b64decode(data), np.uint8), flags)


def png_bytes(image):
    ok, buf = cv2.imencode(".png", image)
    assert ok
    return buf.tobytes()


def huge_png(width=20000, height=20000):
    """A whole, valid 8-bit grey PNG of width x height, all black: 0.4 MB that decodes to
    width x height bytes (400 MB at 20000 x 20000), a decompression bomb."""
    def chunk(kind, data):
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    packer = zlib.compressobj(9)
    rows = b"\x00" * (width + 1) * 500            # filter byte + pixels, 500 rows at a time
    idat = b"".join(packer.compress(rows) for _ in range(height // 500))
    idat += packer.compress(b"\x00" * (width + 1) * (height % 500)) + packer.flush()
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat)
            + chunk(b"IEND", b""))


# ------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def parser():
    return Recording(_colour_parser(), delay=0.0)


@pytest.fixture(scope="module")
def server(parser):
    app = build_app(parser, max_upload_bytes=MAX_UPLOAD, max_pixels=MAX_PIXELS, queue=2, keep=3)
    with RunningServer(app) as running:
        yield running


@pytest.fixture
def client(server):
    return Client(server.url)


def _reference(path):
    """The same parser's result for the photo, parsed directly (whole photo, no detector)."""
    return _colour_parser()(read_image(path), detect=False)


# ------------------------------------------------------------------------------ the API
def test_healthz_describes_the_labels_and_the_limits(client):
    status, _, info = client.json("GET", "/healthz")
    schema = get_schema("helen")
    assert status == 200 and info["status"] == "ok" and info["dataset"] == "helen"
    assert info["class_names"] == list(schema.class_names)
    assert info["tokens"] == list(schema.tokens)
    assert info["palette"] == [list(c) for c in schema.palette]
    assert info["mask_names"]["nose"] == [schema.class_names.index("nose")]
    assert info["mask_names"] == {k: list(v) for k, v in schema.named_sets().items()}
    assert info["limits"] == {"max_upload_bytes": MAX_UPLOAD, "max_pixels": MAX_PIXELS,
                              "queue": 2, "keep": 3}
    assert info["detector"] is None and info["crop_size"] == list(CROP)


@pytest.mark.parametrize("photo", PHOTOS, ids=lambda p: p.name)
def test_parse_returns_the_parsers_label_map_overlay_and_mask(client, photo):
    status, _, out = client.parse(photo.read_bytes(), photo.name, classes="lips,nose", grow="2",
                                  feather="3")
    assert status == 200, out
    ref = _reference(photo)
    h, w = ref.image_sizes[0]
    # the facts are the result's summary, plus the request's own
    summary = ref.summary(0)
    assert {k: out[k] for k in summary} == summary
    assert out["name"] == photo.name and len(out["id"]) >= 16 and out["detect"] is False
    assert 0 < out["seconds"] < 60 and out["wait_seconds"] >= 0
    labels = decode_data_url(out["label_map"])
    assert labels.dtype == np.uint8 and labels.shape == (h, w)       # 8-bit grey, photo size
    np.testing.assert_array_equal(labels, ref.combined[0])
    assert len(np.unique(labels)) >= 3
    overlay = decode_data_url(out["overlay"], cv2.IMREAD_COLOR)
    assert overlay.shape == (h, w, 3)
    mask = decode_data_url(out["mask"])
    expected = ref.mask(0, "lips,nose", grow=2, feather=3)
    assert mask.shape == (h, w) and 0 < (mask > 0).mean() < 1
    np.testing.assert_array_equal(mask, expected)


def test_mask_recomputes_from_the_kept_result(client):
    photo = PHOTOS[0]
    status, _, out = client.parse(photo.read_bytes(), photo.name)
    assert status == 200 and "mask" not in out
    ref = _reference(photo)
    for grow, feather in ((0, 0), (4, 0), (-2, 5)):
        status, head, png = client.request(
            "GET", f"/mask?id={out['id']}&classes=skin,hair&grow={grow}&feather={feather}")
        assert status == 200 and head["content-type"] == "image/png"
        mask = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED)
        np.testing.assert_array_equal(mask, ref.mask(0, "skin,hair", grow=grow, feather=feather))
    body = f"id={out['id']}&classes=inner_face&grow=1".encode()
    status, _, png = client.request("POST", "/mask", body,
                                    {"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 200
    mask = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(mask, ref.mask(0, "inner_face", grow=1))


def test_masks_do_not_run_the_network(client, parser):
    status, _, out = client.parse(PHOTOS[1].read_bytes(), PHOTOS[1].name)
    assert status == 200
    before = parser.calls
    for grow in (1, 2, 3):
        assert client.request("GET", f"/mask?id={out['id']}&classes=hair&grow={grow}")[0] == 200
    assert parser.calls == before


def test_unknown_classes_and_forgotten_results_are_named(client):
    status, _, out = client.parse(PHOTOS[0].read_bytes(), classes="nose,tail")
    assert status == 400 and "'tail'" in out["error"]
    assert all(name in out["error"] for name in ("skin", "nose", "hair", "lips", "inner_face"))
    status, _, out = client.parse(PHOTOS[0].read_bytes())
    status, _, err = client.json("GET", f"/mask?id={out['id']}&classes=whiskers")
    assert status == 400 and "'whiskers'" in err["error"] and "lower lip" in err["error"]
    status, _, err = client.json("GET", f"/mask?id={out['id']}&classes=")
    assert status == 400 and "no mask classes" in err["error"]
    status, _, err = client.json("GET", f"/mask?id={out['id']}&classes=nose&grow=wide")
    assert status == 400 and "grow" in err["error"] and "'wide'" in err["error"]
    status, _, err = client.json("GET", f"/mask?id={out['id']}&classes=nose&feather=-1")
    assert status == 400 and "feather must be 0 or more pixels" in err["error"]
    status, _, err = client.json("GET", f"/mask?id={out['id']}&classes=nose&feather=1e9")
    assert status == 400 and "feather 1e+09 px is over this server's limit" in err["error"]
    status, _, err = client.json("GET", f"/mask?id={out['id']}&classes=nose&grow=-257")
    assert status == 400 and "longer side (256 px)" in err["error"]
    status, _, err = client.json("GET", "/mask?id=0123456789abcdef&classes=nose")
    assert status == 404 and "'0123456789abcdef'" in err["error"] and "last 3" in err["error"]
    # the LRU keeps the last 3 results: the first of four is gone
    ids = [client.parse(PHOTOS[0].read_bytes())[2]["id"] for _ in range(4)]
    assert client.request("GET", f"/mask?id={ids[0]}&classes=nose")[0] == 404
    assert client.request("GET", f"/mask?id={ids[-1]}&classes=nose")[0] == 200


def test_a_header_declaring_too_many_pixels_is_refused_before_decoding(client):
    bomb = huge_png(20000, 20000)
    assert len(bomb) < MAX_UPLOAD
    status, _, out = client.parse(bomb, "bomb.png")
    assert status == 413, out
    assert "bomb.png" in out["error"] and "20000 x 20000" in out["error"]
    assert f"{MAX_PIXELS:,}" in out["error"]
    status, _, out = client.parse(PHOTOS[0].read_bytes())          # the server goes on
    assert status == 200 and out["image_size"] == [256, 256]


def test_bodies_over_the_upload_limit_are_refused(client):
    # a declared Content-Length over the limit: refused before the body is read
    conn = client.connection()
    body, ctype = multipart({"image": ("big.jpg", b"\xff" * 1024)})
    conn.putrequest("POST", "/parse")
    conn.putheader("Content-Type", ctype)
    conn.putheader("Content-Length", str(MAX_UPLOAD + 1))
    conn.endheaders()
    conn.send(body)
    r = conn.getresponse()
    out = json.loads(r.read())
    conn.close()
    assert r.status == 413 and f"{MAX_UPLOAD:,} bytes" in out["error"]
    assert f"{MAX_UPLOAD + 1:,}" in out["error"]
    # a chunked body (no Content-Length): the bytes streamed are counted
    big = b"\x89PNG\r\n\x1a\n" + b"\0" * (MAX_UPLOAD + 10)
    body, ctype = multipart({"image": ("big.png", big)})
    conn = client.connection()
    conn.putrequest("POST", "/parse")
    conn.putheader("Content-Type", ctype)
    conn.putheader("Transfer-Encoding", "chunked")
    conn.endheaders()
    step = 256 << 10
    for start in range(0, len(body), step):
        piece = body[start:start + step]
        conn.send(b"%x\r\n" % len(piece) + piece + b"\r\n")
    conn.send(b"0\r\n\r\n")
    r = conn.getresponse()
    out = json.loads(r.read())
    conn.close()
    assert r.status == 413 and f"more than {MAX_UPLOAD:,}" in out["error"]
    status, _, out = client.parse(PHOTOS[0].read_bytes())          # the server goes on
    assert status == 200


def test_broken_uploads_are_400_naming_the_reason(client):
    data = PHOTOS[0].read_bytes()
    status, _, out = client.parse(data[:len(data) // 2], "cut.jpg")
    assert status == 400 and "cut.jpg" in out["error"] and "truncated" in out["error"]
    status, _, out = client.parse(b"hello, not a photo", "notes.txt")
    assert status == 400 and "notes.txt" in out["error"] and "JPEG, PNG" in out["error"]
    body, ctype = multipart({"photo": ("a.jpg", data)})
    status, _, _, = client.request("POST", "/parse", body, {"Content-Type": ctype})
    assert status == 400
    status, _, out = client.json("POST", "/parse", body, {"Content-Type": ctype})
    assert "'image'" in out["error"]
    status, _, out = client.json("POST", "/parse", b'{"image": 1}',
                                 {"Content-Type": "application/json"})
    assert status == 400 and "multipart/form-data" in out["error"]
    status, _, out = client.parse(data, detect="maybe")
    assert status == 400 and "detect" in out["error"]
    status, _, out = client.parse(data, **{f"note{k}": "x" for k in range(20)})
    assert status == 400 and "more than 16 parts" in out["error"]
    assert client.json("GET", "/parse")[0] == 405
    assert client.json("GET", "/nowhere")[0] == 404
    assert client.parse(data)[0] == 200                                # and it goes on


def test_two_uploads_at_once_are_parsed_one_after_the_other(client, parser):
    parser.delay, parser.most = 0.4, 0
    answers = []

    def upload(photo):
        answers.append(client.parse(photo.read_bytes(), photo.name))
    threads = [threading.Thread(target=upload, args=(p,)) for p in PHOTOS[:2]]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    finally:
        parser.delay = 0.0
    assert [a[0] for a in answers] == [200, 200]
    assert parser.most == 1
    # they did arrive together: the later one waited for the earlier one's parse
    assert max(a[2]["wait_seconds"] for a in answers) > 0.2


def test_a_full_queue_is_503_with_retry_after():
    slow = Recording(_colour_parser())
    slow.gate = threading.Event()
    app = build_app(slow, max_upload_bytes=MAX_UPLOAD, max_pixels=MAX_PIXELS, queue=1)
    with RunningServer(app) as running:
        client = Client(running.url)
        data = PHOTOS[0].read_bytes()
        answers = {}
        threads = [threading.Thread(target=lambda k=k: answers.__setitem__(k, client.parse(data)))
                   for k in ("first", "second")]
        for t in threads:
            t.start()
            deadline = time.monotonic() + 20
            while client.json("GET", "/healthz")[2]["busy"] < len(answers) + 1 \
                    and time.monotonic() < deadline:
                time.sleep(0.02)
        assert client.json("GET", "/healthz")[2]["busy"] == 2     # one parsing, one waiting
        status, head, out = client.parse(data)
        assert status == 503 and int(head["retry-after"]) >= 1
        assert "--queue 1" in out["error"]
        slow.gate.set()
        for t in threads:
            t.join(60)
        assert answers["first"][0] == answers["second"][0] == 200
        assert slow.most == 1
        assert client.parse(data)[0] == 200


def test_uploads_are_never_written_to_disk(client, tmp_path, monkeypatch):
    """An upload over Starlette's 1 MB spooling threshold creates no temporary file (the
    probe below sees a SpooledTemporaryFile roll over to disk, so it can tell)."""
    made = []
    for name in ("TemporaryFile", "NamedTemporaryFile", "mkstemp", "mkdtemp"):
        original = getattr(tempfile, name)

        def probe(*args, _original=original, _name=name, **kwargs):
            made.append(_name)
            return _original(*args, **kwargs)
        monkeypatch.setattr(tempfile, name, probe)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    spooled = tempfile.SpooledTemporaryFile(max_size=10)
    spooled.write(b"x" * 11)                   # rolls over: the probe sees it
    spooled.close()
    assert made == ["TemporaryFile"]
    made.clear()
    noise = np.random.default_rng(0).integers(0, 256, (720, 720, 3), np.uint8)
    data = png_bytes(noise)
    assert 1 << 20 < len(data) < MAX_UPLOAD
    status, _, out = client.parse(data, "noise.png")
    assert status == 200 and out["image_size"] == [720, 720]
    assert made == [] and list(tmp_path.iterdir()) == []


def test_the_page_loads_nothing_from_elsewhere(client):
    static = Path(STATIC_DIR)
    names = sorted(p.name for p in static.iterdir())
    assert names == ["app.js", "index.html", "style.css"]
    for path in static.iterdir():
        text = path.read_text()
        assert not re.search(r"(?i)https?:|ftp:|wss?:", text), path.name
        assert not re.search(r"""(?i)(src|href)\s*=\s*["']?\s*//""", text), path.name
        if path.suffix == ".css":              # url(...) and @import load from elsewhere too
            assert "url(" not in text.lower() and "@import" not in text, path.name
    status, head, page = client.request("GET", "/")
    assert status == 200 and b'id="file-input"' in page and b"/static/app.js" in page
    assert "default-src 'self'" in head["content-security-policy"]
    for name in ("app.js", "style.css"):
        status, _, data = client.request("GET", f"/static/{name}")
        assert status == 200 and data == (static / name).read_bytes()


def test_a_loopback_server_answers_only_to_loopback_names(parser):
    app = build_app(parser, allowed_hosts=["127.0.0.1", "localhost", "::1"])
    with RunningServer(app) as running:
        client = Client(running.url)
        assert client.request("GET", "/healthz")[0] == 200
        status, _, out = client.json("GET", "/healthz", headers={"Host": "evil.example:80"})
        assert status == 400 and "evil.example" in out["error"]
    assert host_name("[::1]:8000") == "::1" and host_name("LocalHost:1") == "localhost"
    assert host_name("127.0.0.1") == "127.0.0.1"


# ------------------------------------------------------------------------------ the command
def test_the_command_listens_on_the_loopback_by_default(tmp_path):
    args = serve_command.parse_args(["--checkpoint", "x.pth"])
    assert (args.host, args.port, args.queue, args.max_upload_mb) == ("127.0.0.1", 8000, 4, 32)
    assert serve_command.host_warning(args.host) is None
    for host in ("localhost", "::1", "127.0.0.2"):
        assert serve_command.host_warning(host) is None, host
    warning = serve_command.host_warning("0.0.0.0")
    assert warning.startswith("warning: listening on 0.0.0.0") and "no authentication" in warning
    with pytest.raises(SystemExit):
        serve_command.parse_args([])                       # a model is needed
    with pytest.raises(SystemExit):
        serve_command.parse_args(["--checkpoint", "x.pth", "--onnx", "y.onnx"])


def test_the_server_pixel_limit(monkeypatch):
    monkeypatch.delenv("DMLCSR_MAX_PIXELS", raising=False)
    assert serve_command.server_max_pixels(None) == 40_000_000
    assert serve_command.server_max_pixels(1234) == 1234
    monkeypatch.setenv("DMLCSR_MAX_PIXELS", "5000000")
    assert serve_command.server_max_pixels(None) == 5_000_000


def test_missing_web_packages_are_named_with_the_install_line(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "uvicorn", None)
    with pytest.raises(MissingWebPackagesError) as err:
        require_web_packages()
    assert "uvicorn" in str(err.value)
    assert "pip install starlette uvicorn python-multipart" in str(err.value)
    assert run(serve_command.main, ["--checkpoint", "nope.pth"]) == 2
    line = capsys.readouterr().err.strip()
    assert line.startswith("error: dml-csr serve needs uvicorn") and "\n" not in line


def test_help_needs_neither_the_web_packages_nor_torch():
    code = ("import sys\n"
            "for name in ('starlette', 'uvicorn', 'python_multipart', 'torch'):\n"
            "    sys.modules[name] = None\n"
            "from dml_csr.commands import main\n"
            "try:\n"
            "    main(['serve', '--help'])\n"
            "except SystemExit as exc:\n"
            "    sys.exit(exc.code)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "--max-upload-mb" in done.stdout and "--queue" in done.stdout


def test_tools_serve_runs_a_checkpoint_until_interrupted(ckpt):  # noqa: F811
    """python tools/serve.py --checkpoint CK --port 0: prints the address, answers a photo,
    stops on Ctrl-C (SIGINT) with status 0."""
    import signal
    proc = subprocess.Popen([sys.executable, str(REPO / "tools" / "serve.py"), "--checkpoint",
                             str(ckpt), "--port", "0", "--no-detect"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    try:
        line = proc.stdout.readline()
        found = re.search(r"open (http://127\.0\.0\.1:\d+)/", line)
        assert found, (line, proc.stderr.read() if proc.poll() is not None else "")
        client = Client(found.group(1))
        status, _, info = client.json("GET", "/healthz")
        assert status == 200 and info["dataset"] == "helen"
        status, _, out = client.parse(PHOTOS[0].read_bytes(), PHOTOS[0].name)
        assert status == 200 and len(out["faces"]) == 1
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, proc.stderr.read()
