"""A real index and a real server process for the ``jwae_ext.serve`` tests.

The index is built by the real code from drawn images (:mod:`features_testdata`): features
extracted with the default backbone, a tiny model trained on them, the folder indexed with that
run. The server is ``python -m jwae_ext.serve`` in a subprocess on a free loopback port.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import selectors
import signal
import struct
import subprocess
import sys
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from features_testdata import write_collection

import jwae_ext.search
from jwae_ext.extract import extract

REPO = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
IMAGES = 48


@dataclass(frozen=True)
class Collection:
    photos: Path  # the indexed folder
    captions: Path  # its caption file
    run: Path  # the trained run
    index: Path  # the index folder


def trained_collection(root: Path) -> Collection:
    """``IMAGES`` drawn images under ``root`` with a caption file, a model trained on them for a few
    epochs, and their index; built once per ``root`` (later calls reuse it)."""
    photos, precomp, runs, index = root / "photos", root / "precomp", root / "runs", root / "index"
    if not (index / "done").exists():
        _, captions = write_collection(photos, IMAGES, layout="tsv", mixed=True)
        extract(photos, precomp, captions=captions, fractions=(0.75, 0.125, 0.125),
                device="cpu", progress=False)  # fmt: skip
        train = [sys.executable, "-m", "jwae_ext.train", "--data", str(precomp),
                 "--variant", "vse++", "--epochs", "3", "--lr", "1e-3", "--warmup-epochs", "1",
                 "--batch-size", "12", "--embed-size", "32", "--img-hidden", "64",
                 "--word-dim", "16", "--vocab-threshold", "1", "--device", "cpu",
                 "--no-progress", "--run-dir", str(runs), "--name", "run"]  # fmt: skip
        proc = subprocess.run(train, capture_output=True, text=True, timeout=600, env=ENV)
        assert proc.returncode == 0, proc.stderr
        build_index(runs / "run", photos, captions, index)
        (index / "done").touch()
    return Collection(photos, root / "captions.tsv", runs / "run", index)


def build_index(run: Path, photos: Path, captions: Path, out: Path) -> None:
    """Index the images under ``photos`` and their ``captions`` with the model of ``run``."""
    summary = jwae_ext.search.build_index(run, out, images=photos, captions=captions)
    assert summary.images > 0, summary


@dataclass
class Server:
    url: str
    process: subprocess.Popen

    def request(
        self, method: str, path: str, body: bytes | None = None, headers: dict | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        """Send ``path`` exactly as given (no normalization); the status, headers and body."""
        parts = urlsplit(self.url)
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            response = conn.getresponse()
            return response.status, dict(response.getheaders()), response.read()
        finally:
            conn.close()

    def get_json(self, path: str) -> dict:
        status, _, body = self.request("GET", path)
        assert status == 200, body
        return json.loads(body)

    def post_json(self, path: str, payload: object) -> tuple[int, dict]:
        status, _, body = self.request(
            "POST", path, json.dumps(payload).encode(), {"Content-Type": "application/json"}
        )
        return status, json.loads(body)

    def upload(
        self, data: bytes, filename: str = "query.png", k: int | str | None = None
    ) -> tuple[int, dict]:
        """POST ``data`` as the multipart field ``image`` of ``/api/search/image``."""
        boundary = "jwae-serve-test-boundary"
        fields = [] if k is None else [(b'name="k"', str(k).encode())]
        fields.append((f'name="image"; filename="{filename}"'.encode(), data))
        body = (
            b"".join(
                b"--%s\r\nContent-Disposition: form-data; %s\r\n\r\n%s\r\n"
                % (boundary.encode(), disposition, value)
                for disposition, value in fields
            )
            + b"--%s--\r\n" % boundary.encode()
        )
        headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
        status, _, answer = self.request("POST", "/api/search/image", body, headers)
        return status, json.loads(answer)


@contextlib.contextmanager
def serving(*args: str, timeout: float = 120) -> Iterator[Server]:
    """``python -m jwae_ext.serve ARGS --port 0`` until the block ends, then SIGTERM: every
    server of the tests must then stop cleanly (exit 0, "stopped", no traceback), else the
    test fails. A block that stops the server itself reads its output with
    ``server.process.communicate()``."""
    process = subprocess.Popen(
        [sys.executable, "-m", "jwae_ext.serve", *args, "--port", "0"],
        cwd=REPO,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = _first_line(process, timeout)
        yield Server(line[line.index("http://") :].split()[0], process)
    except BaseException:
        process.kill()
        process.communicate()
        raise
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=60)
        assert process.returncode == 0 and "stopped" in out, f"exit {process.returncode}: {err}"
        assert "Traceback" not in err, err


def _first_line(process: subprocess.Popen, timeout: float) -> str:
    """The server's first line on stdout (its URL); an error with its stderr if it exits."""
    with selectors.DefaultSelector() as sel:
        sel.register(process.stdout, selectors.EVENT_READ)
        if not sel.select(timeout):
            raise TimeoutError(f"the server printed nothing in {timeout} s")
    line = process.stdout.readline()
    if "http://" not in line:
        process.wait(timeout=30)
        raise RuntimeError(f"the server did not start: {line}{process.stderr.read()}")
    return line


def bomb_png(width: int, height: int) -> bytes:
    """A valid PNG header claiming ``width`` x ``height`` 1-bit pixels with almost no data: a
    decompression bomb by its size (Pillow refuses it on opening, before decoding)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )
