"""``dml-csr serve``: the time of one ``/parse`` and the server's peak memory while one upload or
two at once arrive.

    python benchmarks/bench_serve.py [--checkpoint runs/quickstart/best.pth] [--repeat 5]
        [--size 4000x3000] [--threads N] [--json OUT.json]

Each case runs the server in a fresh process (this script with ``--child``: the command's own
``parse_args``, ``parser_from_args`` and ``build_app`` on a free port), so that its peak resident
memory (``VmHWM`` of ``/proc/PID/status``) is its own. The child loads the model, parses one
small photo directly (torch's one-time set-up), resets its peak to its resident size
(``dml_csr.utils.memory.reset_hwm``) and serves; this process then sends the uploads over HTTP
and reads the child's peak.

Photos, made in memory (nothing is written): ``small``, ``tests/data/photos/astronaut.jpg`` as it
is (256 x 256, a real portrait); ``large``, the same upscaled (``cv2.INTER_CUBIC``) to ``--size``
(default 4000 x 3000, a 12 MP phone photo) and encoded as JPEG (quality 90).

Cases:

- ``time``: ``--repeat`` uploads of each photo, one after the other, after one warm-up upload;
  ``server s``: the answer's ``seconds`` (decode, detection, network, label map), ``round trip
  s``: the client's wall time for the whole request (upload, queue, parse, overlay and PNG
  encoding, base64, JSON), medians;
- ``one``: a fresh server, one upload of the large photo: ``ready MiB`` (resident after the
  warm-up), ``peak MiB`` (the peak during the upload), ``peak + MiB`` (what the upload added);
- ``two``: the same with two uploads of the large photo sent at once (two threads): the server
  reads both bodies but decodes and parses one photo at a time, so the second adds its upload
  bytes and the first one's results it still holds, not a second decoded photo;
- ``two, 2 at once``: the comparison: the same two uploads to a server whose worker has two
  threads (the child's ``ThreadPoolExecutor`` replaced), so both photos are decoded, parsed and
  encoded at the same time, what a server without the queue would do.

The parser's float32 ONNX file goes to a cache folder of this run (removed at the end): the first
child makes it, the others open it. Times are wall clock, noisy on a shared machine.
"""
import argparse
import http.client
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

PHOTO = os.path.join(REPO, "tests", "data", "photos", "astronaut.jpg")
MIB = 2 ** 20


def _child(argv, workers: int = 1) -> int:
    """The server: load, warm up, reset the peak, print the address, serve until SIGINT.
    ``workers`` > 1: the application's worker gets that many threads (photos parsed at once: the
    comparison the one-at-a-time design is measured against)."""
    from dml_csr.commands.infer import parser_from_args
    from dml_csr.commands.serve import parse_args, server_max_pixels
    from dml_csr.deploy import set_inference_threads
    from dml_csr.files import read_image
    from dml_csr.serve.app import build_app
    from dml_csr.serve.server import bind, serve_forever, url_of
    from dml_csr.utils.memory import reset_hwm

    args = parse_args(argv)
    if workers > 1:
        import concurrent.futures
        import dml_csr.serve.app as app_module
        app_module.ThreadPoolExecutor = lambda max_workers, **kw: \
            concurrent.futures.ThreadPoolExecutor(workers, **kw)
    set_inference_threads(args.threads)
    parser = parser_from_args(args)
    parser(read_image(PHOTO))                    # torch / onnxruntime one-time set-up
    app = build_app(parser, max_upload_bytes=int(args.max_upload_mb * MIB),
                    max_pixels=server_max_pixels(args.max_pixels), queue=args.queue)
    sock = bind("127.0.0.1", 0)
    reset_hwm()
    print(url_of(sock), flush=True)
    serve_forever(app, sock)
    return 0


def _status_bytes(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


class Server:
    """This script's ``--child`` in a subprocess: ``url``, ``pid``; :meth:`stop` sends SIGINT."""

    def __init__(self, checkpoint, threads, cache, workers=1):
        cmd = [sys.executable, os.path.abspath(__file__), "--child", str(workers),
               "--checkpoint", checkpoint, "--port", "0", "--max-upload-mb", "64"]
        if threads:
            cmd += ["--threads", str(threads)]
        env = dict(os.environ, DMLCSR_CACHE=cache)
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env)
        self.pid = self.proc.pid
        self.url = self.proc.stdout.readline().strip()
        if not self.url.startswith("http://"):
            self.stop()
            raise RuntimeError(f"the server did not start (exit status {self.proc.returncode})")
        host, port = self.url[len("http://"):].rsplit(":", 1)
        self.address = (host, int(port))

    def parse(self, data: bytes, name: str):
        """(answer JSON, round-trip seconds) of one /parse."""
        boundary = "bench-serve-boundary"
        body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; "
                f"filename=\"{name}\"\r\nContent-Type: image/jpeg\r\n\r\n").encode() + data + \
            f"\r\n--{boundary}--\r\n".encode()
        start = time.perf_counter()
        conn = http.client.HTTPConnection(*self.address, timeout=600)
        try:
            conn.request("POST", "/parse", body,
                         {"Content-Type": f"multipart/form-data; boundary={boundary}"})
            r = conn.getresponse()
            out = json.loads(r.read())
        finally:
            conn.close()
        if r.status != 200:
            raise RuntimeError(f"/parse answered {r.status}: {out.get('error')}")
        return out, time.perf_counter() - start

    def peak(self) -> int:
        return _status_bytes(self.pid, "VmHWM")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _photos(size):
    import cv2
    from dml_csr.files import read_image
    small = open(PHOTO, "rb").read()
    w, h = size
    big = cv2.resize(read_image(PHOTO), (w, h), interpolation=cv2.INTER_CUBIC)
    ok, buf = cv2.imencode(".jpg", big, [cv2.IMWRITE_JPEG_QUALITY, 90])
    return {"small": (small, (256, 256)), "large": (buf.tobytes(), (h, w))}


def _time_case(args, cache, photos):
    rows = []
    server = Server(args.checkpoint, args.threads, cache)
    try:
        for name, (data, (h, w)) in photos.items():
            server.parse(data, f"{name}.jpg")                       # warm-up
            answers = [server.parse(data, f"{name}.jpg") for _ in range(args.repeat)]
            rows.append({"case": "time", "photo": f"{name} {w}x{h}", "upload_kb": len(data) // 1024,
                         "faces": len(answers[0][0]["faces"]),
                         "server_s": statistics.median(a[0]["seconds"] for a in answers),
                         "round_trip_s": statistics.median(a[1] for a in answers)})
    finally:
        server.stop()
    return rows


def _memory_case(args, cache, data, uploads, workers=1):
    server = Server(args.checkpoint, args.threads, cache, workers)
    try:
        ready = server.peak()
        answers, errors = [], []

        def upload():
            try:
                answers.append(server.parse(data, "large.jpg"))
            except Exception as exc:  # noqa: BLE001 - reported as the row's error
                errors.append(exc)
        threads = [threading.Thread(target=upload) for _ in range(uploads)]
        start = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - start
        if errors:
            raise errors[0]
        peak = server.peak()
    finally:
        server.stop()
    return {"case": "one" if uploads == 1 else "two", "uploads": uploads, "workers": workers,
            "upload_kb": len(data) // 1024, "ready_mib": ready / MIB, "peak_mib": peak / MIB,
            "added_mib": (peak - ready) / MIB, "wall_s": wall,
            "waits_s": sorted(round(a[0]["wait_seconds"], 2) for a in answers)}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        return _child(argv[2:], int(argv[1]))
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", default=os.path.join(REPO, "runs", "quickstart", "best.pth"))
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--size", default="4000x3000", help="the large photo, WxH")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", help="also write the rows to this file")
    args = ap.parse_args(argv)
    size = tuple(int(v) for v in args.size.lower().split("x"))
    photos = _photos(size)
    cache = tempfile.mkdtemp(prefix="bench_serve_cache_")
    try:
        rows = _time_case(args, cache, photos)
        memory = [_memory_case(args, cache, photos["large"][0], n, w)
                  for n, w in ((1, 1), (2, 1), (2, 2))]
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    print(f"checkpoint {args.checkpoint}; {os.cpu_count()} CPUs; medians of {args.repeat}")
    print("| photo | upload KB | faces | server s | round trip s |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['photo']} | {r['upload_kb']} | {r['faces']} | {r['server_s']:.3f} | "
              f"{r['round_trip_s']:.3f} |")
    print()
    print("| uploads of the large photo at once | parsed | ready MiB | peak MiB | peak + MiB | "
          "wall s | waits s |")
    print("|---|---|---|---|---|---|---|")
    for r in memory:
        how = "one at a time" if r["workers"] == 1 else f"{r['workers']} at once (comparison)"
        print(f"| {r['uploads']} | {how} | {r['ready_mib']:.0f} | {r['peak_mib']:.0f} | "
              f"{r['added_mib']:.0f} | {r['wall_s']:.2f} | {r['waits_s']} |")
    if args.json:
        from dml_csr.files import write_json
        write_json(args.json, {"time": rows, "memory": memory, "checkpoint": args.checkpoint})
    return 0


if __name__ == "__main__":
    sys.exit(main())
