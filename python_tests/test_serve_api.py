"""``python -m jwae_ext.serve`` over a real index, through HTTP: the answers are the library's,
every bad request is a 4xx with a JSON message, and no URL reads a file the index does not name.
"""

from __future__ import annotations

import contextlib
import http.client
import io
import json
import os
import shutil
import signal

import numpy as np
import pytest
from features_testdata import truncated_copy
from PIL import Image
from serve_testdata import bomb_png, serving
from test_train import tiny_trainer

from jwae_ext.data import export_precomp
from jwae_ext.search import Index, build_index
from jwae_ext.serve.__main__ import main as serve_main

UPLOAD_LIMIT_MB = 0.25


@pytest.fixture(scope="module")
def index(collection):
    return Index.open(collection.index)


@pytest.fixture(scope="module")
def server(collection):
    with serving(str(collection.index), "--max-upload-mb", str(UPLOAD_LIMIT_MB)) as s:
        yield s


def assert_same_ranking(results, hits):
    """The server's results are the library's hits: same ids in the same order, same scores."""
    assert [r["id"] for r in results] == [h.id for h in hits]
    # The server encodes the query in its own process (one thread): float32 rounding apart.
    scores = [h.score for h in hits]
    assert [r["score"] for r in results] == pytest.approx(scores, rel=1e-6, abs=1e-6)


def test_info_describes_the_index(server, index):
    status, _, body = server.request("GET", "/api/info")
    info = json.loads(body)
    assert status == 200
    assert info["images"] == index.info["images"] > 0
    for key in ("run", "variant", "vocab_size", "captions"):
        assert info[key] == index.info[key]
    assert "image_folder" not in info  # where the photos lie is not the page's business


def test_the_index_gives_each_images_captions_and_its_folder(index, collection):
    """What the server shows besides the ranking: ``Index.captions_of`` (each result's first
    caption) is the caption file's lines for that image; ``image_folder`` bounds thumbnails."""
    written: dict[str, list[str]] = {}
    for line in collection.captions.read_text().splitlines():
        key, caption = line.split("\t")
        written.setdefault(key.split("#")[0], []).append(caption)
    for image_id in range(index.info["images"]):
        assert index.captions_of(image_id) == written[index.image_path(image_id).name]
    assert index.info["image_folder"] == os.path.realpath(collection.photos)
    with pytest.raises(KeyError):
        index.captions_of(index.info["images"])


def test_a_text_search_answers_what_the_library_ranks(server, index):
    status, answer = server.post_json("/api/search", {"text": "a red zzzqx circle", "k": 7})
    assert status == 200, answer
    expected = index.search_text(["a red zzzqx circle"], k=7)[0]
    assert_same_ranking(answer["results"], expected.hits)
    assert answer["unknown_words"] == expected.unknown_words and "zzzqx" in answer["unknown_words"]
    scores = [r["score"] for r in answer["results"]]
    assert scores == sorted(scores, reverse=True) and len(scores) == 7
    assert answer["query"] == "text" and answer["took_ms"] > 0
    for r, hit in zip(answer["results"], expected.hits, strict=True):
        assert r["caption"] == index.captions_of(hit.id)[0]  # every drawn image has captions
        assert r["name"] == hit.name and r["thumbnail"] == f"/api/thumbnail/{hit.id}"


def test_a_search_by_id_answers_its_neighbours(server, index):
    status, answer = server.post_json("/api/search", {"id": 5, "k": 4})
    assert status == 200, answer
    assert_same_ranking(answer["results"], index.search_item([5], k=4)[0])
    assert answer["query"] == "id" and answer["unknown_words"] == []


def test_an_uploaded_image_is_searched_as_the_library_searches_its_file(server, index, collection):
    path = sorted(collection.photos.glob("img*.jpg"))[0]
    status, answer = server.upload(path.read_bytes(), path.name, k=5)
    assert status == 200, answer
    expected = index.search_image([path], k=5)[0]
    assert_same_ranking(answer["results"], expected)
    assert answer["query"] == "image"


def test_thumbnails_are_small_jpegs_and_cached(server, index):
    status, headers, first = server.request("GET", "/api/thumbnail/3")
    assert status == 200 and headers["content-type"] == "image/jpeg"
    with Image.open(io.BytesIO(first)) as thumb:
        assert thumb.format == "JPEG" and max(thumb.size) <= 256
        with Image.open(index.image_path(3)) as original:
            assert thumb.size[0] / thumb.size[1] == pytest.approx(
                original.size[0] / original.size[1], rel=0.05
            )
    assert "max-age" in headers["cache-control"]
    assert server.request("GET", "/api/thumbnail/3")[2] == first


def test_the_page_and_its_files_are_served(server):
    status, headers, page = server.request("GET", "/")
    assert status == 200 and b'id="search-form"' in page
    assert "default-src 'self'" in headers["content-security-policy"]
    for name, kind in [("app.js", "text/javascript"), ("style.css", "text/css")]:
        status, headers, _ = server.request("GET", f"/static/{name}")
        assert status == 200 and headers["content-type"].startswith(kind)


def test_the_openapi_document_lists_the_api(server):
    status, _, body = server.request("GET", "/openapi.json")
    paths = json.loads(body)["paths"]
    assert status == 200
    assert {"/api/search", "/api/search/image", "/api/info", "/api/thumbnail/{image_id}"} <= set(
        paths
    )


def noise_png(side: int) -> bytes:
    pixels = np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "PNG")
    return out.getvalue()


def refusal(status: int, body: bytes, headers: dict) -> str:
    """The error message of a refusal, after checking its form."""
    assert headers["content-type"] == "application/json"
    assert b"Traceback" not in body and b'File "' not in body
    return json.loads(body)["error"]


JSON = {"Content-Type": "application/json"}


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (b'{"text": "red circ', 400, "malformed JSON"),
        (b"[1, 2]", 400, "valid dictionary"),
        (b"{}", 400, "exactly one query"),
        (b'{"k": 5}', 400, "exactly one query"),
        (b'{"text": "   "}', 400, "empty"),
        (b'{"text": "red", "id": 3}', 400, "exactly one query"),
        (b'{"text": "red", "k": 0}', 400, "k: Input should be greater than or equal to 1"),
        (b'{"text": "red", "k": 101}', 400, "k: Input should be less than or equal to 100"),
        (b'{"text": "red", "k": "many"}', 400, "k: Input should be a valid integer"),
        (b'{"text": "red", "colour": "blue"}', 400, "colour: Extra inputs are not permitted"),
        (b'{"text": "qqqz xxxw"}', 400, "qqqz xxxw"),
        (b'{"id": 100000}', 404, "no indexed image has id 100000"),
        (b'{"id": -1}', 404, "no indexed image has id -1"),
    ],
)
def test_bad_searches_are_refused_with_a_message(server, body, status, message):
    got, headers, answer = server.request("POST", "/api/search", body, JSON)
    assert got == status
    assert message in refusal(got, answer, headers)


@pytest.fixture(scope="module")
def bad_images(tmp_path_factory, collection):
    folder = tmp_path_factory.mktemp("bad_images")
    jpeg = sorted(collection.photos.glob("img*.jpg"))[0]
    truncated_copy(jpeg, folder / "truncated.jpg")
    return {
        "text": b"just some words, not an image\n",
        "truncated": (folder / "truncated.jpg").read_bytes(),
        "bomb": bomb_png(20_000, 20_000),
        "empty": b"",
        "too big": noise_png(400),  # about 480 kB, over the limit
    }


@pytest.mark.parametrize(
    ("kind", "status", "message"),
    [
        ("text", 400, "not an image"),
        ("truncated", 400, "truncated image"),
        ("bomb", 400, "decompression bomb"),
        ("empty", 400, "empty upload"),
        ("too big", 413, "over the upload limit"),
    ],
)
def test_bad_uploads_are_refused_naming_why(server, bad_images, kind, status, message):
    data = bad_images[kind]
    assert kind != "too big" or len(data) > UPLOAD_LIMIT_MB * 2**20
    got, answer = server.upload(data, "query.png")
    assert got == status, answer
    assert message in answer["error"]


def test_a_chunked_body_over_the_limit_is_refused(server):
    chunks = (b"x" * 2**16 for _ in range(int(UPLOAD_LIMIT_MB * 2**20) // 2**16 + 2))
    conn = http.client.HTTPConnection(*server.url.split("//")[1].strip("/").split(":"))
    conn.request("POST", "/api/search", body=chunks, headers=JSON, encode_chunked=True)
    response = conn.getresponse()
    got, headers, body = response.status, dict(response.getheaders()), response.read()
    conn.close()
    assert got == 413 and "over the upload limit" in refusal(got, body, headers)


def test_upload_form_errors_are_refused(server, collection):
    image = sorted(collection.photos.glob("img*.png"))[0].read_bytes()
    assert server.upload(image, k=0)[0] == 400
    assert "k:" in server.upload(image, k="ten")[1]["error"]
    boundary = "b"
    body = b'--b\r\nContent-Disposition: form-data; name="k"\r\n\r\n3\r\n--b--\r\n'
    got, headers, answer = server.request(
        "POST",
        "/api/search/image",
        body,
        {"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    assert got == 400 and "image: Field required" in refusal(got, answer, headers)


def test_unknown_routes_methods_and_hosts_are_refused(server):
    for method, path, status in [
        ("GET", "/api/nothing", 404),
        ("GET", "/api/search", 405),
        ("GET", "/api/thumbnail/100000", 404),
        ("GET", "/api/thumbnail/-1", 404),
        ("GET", "/api/thumbnail/three", 400),
    ]:
        got, headers, body = server.request(method, path)
        assert got == status, (method, path, body)
        refusal(got, body, headers)
    got, _, _ = server.request("GET", "/api/info", headers={"Host": "attacker.example"})
    assert got == 400


@pytest.fixture(scope="module")
def secret(tmp_path_factory):
    """A file outside the photo folder that no URL may reveal."""
    path = tmp_path_factory.mktemp("outside") / "secret.png"
    Image.new("RGB", (40, 30), (1, 2, 3)).save(path)
    return path


def traversals(secret, collection):
    absolute = str(secret)
    inside = collection.photos / "img000.png"
    return [
        "/api/thumbnail/../../../../etc/passwd",
        "/api/thumbnail/%2e%2e%2f%2e%2e%2f%2e%2e%2fetc%2fpasswd",
        "/api/thumbnail/1%2f..%2f..%2fetc%2fpasswd",
        "/static/../__init__.py",
        "/static/%2e%2e%2f__init__.py",
        "/static/..%2fapp.py",
        "/%2e%2e/%2e%2e/etc/passwd",
        f"/api/thumbnail/{absolute}",
        f"/api/thumbnail/{absolute.replace('/', '%2f')}",
        f"/static/{absolute}",
        f"/static/{absolute.replace('/', '%2f')}",
        f"/{absolute}",
        f"/{inside}",
        f"/static/{inside}",
        f"/api/thumbnail/{inside}",
    ]


def test_no_url_reads_a_path(server, secret, collection):
    for path in traversals(secret, collection):
        got, headers, body = server.request("GET", path)
        assert 400 <= got < 500, (path, got)
        assert headers["content-type"] == "application/json", path
        assert b"root:" not in body and b"import" not in body and b"PNG" not in body, path


def test_a_symlink_out_of_the_photo_folder_serves_nothing(tmp_path, collection, secret):
    photos = tmp_path / "photos"
    shutil.copytree(collection.photos, photos)
    os.symlink(secret, photos / "link_at_indexing.png")  # present when the folder is indexed
    build_index(collection.run, tmp_path / "index", images=photos, captions=collection.captions)
    swapped = photos / "img002.png"
    swapped.unlink()
    os.symlink(secret, swapped)  # swapped in after indexing
    index = Index.open(tmp_path / "index")
    names = {index.image_path(i).name: i for i in range(index.info["images"])}
    with serving(str(tmp_path / "index")) as server:
        for name in ("link_at_indexing.png", "img002.png"):
            if name not in names:
                continue  # not indexed: no id reaches it
            got, headers, body = server.request("GET", f"/api/thumbnail/{names[name]}")
            assert got == 404 and "not inside the photo folder" in refusal(got, body, headers)
        got, _, body = server.request("GET", f"/api/thumbnail/{names['img000.png']}")
        assert got == 200 and body.startswith(b"\xff\xd8")  # the others are served


def test_an_index_of_features_has_no_thumbnails_and_refuses_image_queries(tmp_path):
    """A run trained on the embedded dataset, its test split indexed from features: no file to
    show, no extraction to run on an upload; text queries work."""
    tiny_trainer(tmp_path / "runs", epochs=1, name="run", variant="vse++").fit()
    data = export_precomp(tmp_path / "data", "a", sizes={"train": 8, "dev": 8, "test": 20})
    build_index(tmp_path / "runs" / "run", tmp_path / "index", data=f"{data}:test")
    image = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 30, 30)).save(image, "PNG")
    with serving(str(tmp_path / "index")) as server:
        status, answer = server.post_json("/api/search", {"id": 3, "k": 5})
        assert status == 200 and [r["thumbnail"] for r in answer["results"]] == [None] * 5
        got, headers, body = server.request("GET", "/api/thumbnail/3")
        assert got == 404 and "indexed from features" in refusal(got, body, headers)
        status, answer = server.upload(image.getvalue())
        assert status == 400 and "cannot take image queries" in answer["error"]


def test_listening_beyond_loopback_warns_and_ctrl_c_stops_cleanly(collection):
    """(Every server of these tests is stopped by SIGTERM and checked: see ``serving``.)"""
    with serving(str(collection.index), "--host", "0.0.0.0") as server:
        assert server.request("GET", "/api/info", headers={"Host": "192.0.2.1"})[0] == 200
        server.process.send_signal(signal.SIGINT)
        out, err = server.process.communicate(timeout=60)
    assert "WARNING" in err and "visible to the network" in err
    assert server.process.returncode == 0 and "stopped" in out and "Traceback" not in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["/nonexistent/index"], "cannot open the index"),
        (["INDEX", "--port", "70000"], "--port must be in 0..65535"),
        (["INDEX", "--max-upload-mb", "0"], "--max-upload-mb must be positive"),
    ],
)
def test_bad_arguments_fail_with_a_message(collection, capsys, args, message):
    args = [str(collection.index) if a == "INDEX" else a for a in args]
    with contextlib.suppress(SystemExit):  # argparse's errors exit 2 themselves
        assert serve_main(args) == 2
    assert message in capsys.readouterr().err
