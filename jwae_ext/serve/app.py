"""The web app: a JSON API over one index (search by text, by an uploaded image, by the id of an
indexed image; the index's description; thumbnails) and the search page.

No URL names a file: images are addressed by their index id, the page's three files are read
from the package once, and every refusal is a 4xx with a JSON ``{"error": message}``.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import FastAPI, File, Form, HTTPException, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, model_validator
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from jwae_ext.search import Hit, Index, QueryError
from jwae_ext.serve.thumbnails import Thumbnails, ThumbnailUnavailable
from jwae_ext.serve.uploads import RefusedImage, check_image

MAX_K = 100
DEFAULT_K = 12
MAX_QUERY_CHARS = 1000
# The page, its script and its style: the only files a URL reaches besides indexed images.
PAGE_FILES = {"app.js": "text/javascript", "style.css": "text/css"}
# The page runs only its own script and style, and loads images only from this server.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; object-src 'none'",
    "X-Content-Type-Options": "nosniff",
}


class SearchRequest(BaseModel):
    """A text query or the id of an indexed image (exactly one), and how many results."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"text": "a red circle", "k": 8}, {"id": 17, "k": 8}]},
    )
    text: str | None = Field(None, max_length=MAX_QUERY_CHARS, description="words to search for")
    id: int | None = Field(None, description="an indexed image: find the images like it")
    k: int = Field(DEFAULT_K, ge=1, le=MAX_K, description="how many results")

    @model_validator(mode="after")
    def _one_query(self) -> SearchRequest:
        if (self.text is None) == (self.id is None):
            raise ValueError("give exactly one query: 'text' (words) or 'id' (an indexed image)")
        if self.text is not None and not self.text.strip():
            raise ValueError("'text' is empty: type some words to search for")
        return self


class Result(BaseModel):
    id: int = Field(description="the image's id in the index")
    score: float = Field(description="the model's similarity score; results are in its order")
    caption: str | None = Field(description="the image's first indexed caption, if it has one")
    name: str | None = Field(description="the image's name in the collection (relative path)")
    thumbnail: str | None = Field(description="URL of its JPEG thumbnail (none from features)")


class SearchResponse(BaseModel):
    query: Literal["text", "id", "image"]
    results: list[Result]
    unknown_words: list[str] = Field(description="query words outside the model's vocabulary")
    took_ms: float = Field(description="time spent searching the index, in milliseconds")


class Info(BaseModel):
    model_config = ConfigDict(extra="allow")
    run: str | None
    variant: str | None
    images: int
    captions: int | None
    vocab_size: int | None
    max_k: int
    max_upload_bytes: int


class ErrorMessage(BaseModel):
    error: str


ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorMessage, "description": why}
    for code, why in [
        (400, "a bad request: the message says what is wrong"),
        (404, "no such indexed image"),
        (413, "the request body is over the upload limit"),
    ]
}


def create_app(
    index: Index,
    *,
    max_upload_bytes: int = 10 * 2**20,
    thumbnail_cache_bytes: int = 64 * 2**20,
    allowed_hosts: Sequence[str] | None = ("127.0.0.1", "localhost"),
) -> FastAPI:
    """The app serving ``index``. ``allowed_hosts``: the Host headers answered (loopback by
    default, so that a web page elsewhere cannot reach the server through DNS rebinding);
    ``None`` answers any."""
    info = dict(index.info)
    folder = info.get("image_folder")
    root = None if folder is None else Path(os.path.realpath(folder))
    thumbnails = Thumbnails(index.image_path, root, thumbnail_cache_bytes)
    # Queries run one at a time (each uses every core already) on one thread of their own, so
    # that the model's work memory is one allocator arena's, not one per request thread.
    searcher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="jwae-search")

    app = FastAPI(
        title="jwae_ext search",
        summary="Search a folder of images indexed with a trained jWAE model.",
        version="1",
    )
    if allowed_hosts is not None:
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts))
    app.add_middleware(BodyLimit, max_bytes=max_upload_bytes)
    _add_error_handlers(app, max_upload_bytes)

    def results(hits: list[Hit]) -> list[Result]:
        return [
            Result(
                id=h.id,
                score=h.score,
                caption=next(iter(index.captions_of(h.id)), None),
                name=h.name,
                thumbnail=None if root is None else f"/api/thumbnail/{h.id}",
            )
            for h in hits
        ]

    def timed(search: Callable[[], Any]) -> tuple[Any, float]:
        def run() -> tuple[Any, float]:
            start = time.perf_counter()
            found = search()
            return found, 1000 * (time.perf_counter() - start)

        return searcher.submit(run).result()

    @app.post("/api/search", responses=ERRORS)
    def search(request: SearchRequest) -> SearchResponse:
        """Rank the indexed images for a text query or for an indexed image (by id)."""
        if request.id is not None:
            _known_id(index, request.id)
            hits, took = timed(lambda: index.search_item([request.id], request.k)[0])
            return SearchResponse(query="id", results=results(hits), unknown_words=[], took_ms=took)
        found, took = timed(lambda: index.search_text([request.text], request.k)[0])
        return SearchResponse(
            query="text",
            results=results(found.hits),
            unknown_words=found.unknown_words,
            took_ms=took,
        )

    @app.post("/api/search/image", responses=ERRORS)
    def search_image(
        image: Annotated[UploadFile, File(description="the query image")],
        k: Annotated[int, Form(ge=1, le=MAX_K, description="how many results")] = DEFAULT_K,
    ) -> SearchResponse:
        """Rank the indexed images for an uploaded image."""
        data = image.file.read()
        try:
            kind = check_image(data)
        except RefusedImage as err:
            raise HTTPException(400, str(err)) from None
        # The index decodes a file exactly as it decoded the indexed ones.
        with tempfile.NamedTemporaryFile(suffix=f".{kind.lower()}") as file:
            file.write(data)
            file.flush()
            hits, took = timed(lambda: index.search_image([Path(file.name)], k)[0])
        return SearchResponse(query="image", results=results(hits), unknown_words=[], took_ms=took)

    @app.get("/api/info")
    def describe() -> Info:
        """The index: its run, variant, number of images and captions, vocabulary size."""
        public = {key: value for key, value in info.items() if key != "image_folder"}
        return Info(**public, max_k=MAX_K, max_upload_bytes=max_upload_bytes)

    @app.get(
        "/api/thumbnail/{image_id}",
        response_class=Response,
        responses={200: {"content": {"image/jpeg": {}}}, 404: ERRORS[404]},
    )
    def thumbnail(image_id: int) -> Response:
        """An indexed image as a JPEG of at most 256 px on its longer side."""
        _known_id(index, image_id)
        try:
            data = thumbnails.get(image_id)
        except ThumbnailUnavailable as err:
            raise HTTPException(404, str(err)) from None
        return Response(
            data, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"}
        )

    page = resources.files("jwae_ext.serve") / "static"
    files = {name: (page / name).read_bytes() for name in ["index.html", *PAGE_FILES]}

    @app.get("/", include_in_schema=False)
    def home() -> HTMLResponse:
        return HTMLResponse(files["index.html"], headers=PAGE_HEADERS)

    @app.get("/static/{name}", include_in_schema=False)
    def static(name: str) -> Response:
        if name not in PAGE_FILES:
            raise HTTPException(404, f"no page file {name!r}")
        return Response(files[name], media_type=PAGE_FILES[name], headers=PAGE_HEADERS)

    return app


class BodyLimit:
    """Refuses a request body over ``max_bytes`` with 413: at once when its ``Content-Length``
    says so, else (chunked, or longer than declared) as soon as the bytes read pass the limit.
    (Starlette's own limit answers the first case in plain text; this one answers JSON.)"""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = Headers(scope=scope).get("content-length", "")
        if length.isdigit() and int(length) > self.max_bytes:
            await JSONResponse({"error": _too_large(self.max_bytes)}, 413)(scope, receive, send)
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise HTTPException(413)  # answered by the app's handler, in JSON
            return message

        await self.app(scope, counted, send)


def _too_large(max_bytes: int) -> str:
    return f"the request is over the upload limit of {max_bytes} bytes (--max-upload-mb)"


def _known_id(index: Index, image_id: int) -> None:
    try:
        index.image_path(image_id)
    except KeyError:
        raise HTTPException(404, f"no indexed image has id {image_id}") from None


def _add_error_handlers(app: FastAPI, max_upload_bytes: int) -> None:
    """Every refusal as ``{"error": message}``; nothing the client sent is echoed back."""

    @app.exception_handler(StarletteHTTPException)
    def http_error(request: Request, err: StarletteHTTPException) -> JSONResponse:
        message = str(err.detail)
        if err.status_code == 413:
            message = _too_large(max_upload_bytes)
        return JSONResponse({"error": message}, err.status_code, headers=err.headers)

    @app.exception_handler(RequestValidationError)
    def invalid(request: Request, err: RequestValidationError) -> JSONResponse:
        return JSONResponse({"error": _describe(err.errors())}, 400)

    @app.exception_handler(QueryError)
    def refused_query(request: Request, err: QueryError) -> JSONResponse:
        return JSONResponse({"error": str(err)}, 400)


def _describe(errors: Sequence[Any]) -> str:
    """Pydantic's validation errors as one sentence per problem, naming the field."""
    messages = []
    for e in errors:
        if e["type"] == "json_invalid":
            at = e["loc"][-1]
            messages.append(f"malformed JSON at character {at}: {e['ctx']['error']}")
            continue
        field = ".".join(str(part) for part in e["loc"] if part not in ("body", "query", "form"))
        message = e["msg"].removeprefix("Value error, ")
        given = e.get("input")
        if isinstance(given, int | float | str) and len(str(given)) <= 40:
            message += f" (got {given!r})"
        messages.append(f"{field}: {message}" if field else message)
    return "; ".join(messages)
