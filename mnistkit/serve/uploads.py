"""A ``POST /predict`` body as the inputs to classify, within the server's limits.

Two forms: ``multipart/form-data`` with one or more parts named ``files`` (what a browser's file
input and ``curl -F files=@a.png`` send), or the raw bytes of one file with its type as the
``Content-Type`` (``curl --data-binary @a.png -H 'Content-Type: image/png'``). Every problem is a
:class:`ServeError` with the HTTP status, a short code and a sentence naming it: the body larger
than ``--max-body-mb`` (counted while it arrives, whatever Content-Length says), more files than
``--max-files``, a content type that is not an image, audio or multipart, an empty body or file.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import PurePath
from typing import Any

from mnistkit.evaluation.inputs import InMemoryFile

FIELD = "files"
# Raw bodies: the suffix a content type stands for (it tells audio from images, as for files).
_AUDIO_TYPES = {
    "audio/wav": ".wav",
    "audio/x-wav": ".wav",
    "audio/wave": ".wav",
    "audio/vnd.wave": ".wav",
    "audio/flac": ".flac",
    "audio/x-flac": ".flac",
    "audio/ogg": ".ogg",
}
ACCEPTED = "multipart/form-data (field 'files'), image/* or audio/wav, audio/flac, audio/ogg"


class ServeError(Exception):
    """A request the server refuses: ``status`` (4xx/5xx), ``problem`` (a short code), message."""

    def __init__(self, status: int, problem: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.problem = problem
        self.headers = headers or {}


async def read_body(request: Any, max_bytes: int) -> bytes:
    """The whole body, refused (413) as soon as it is known to be longer than ``max_bytes``."""
    limit = f"the request body is larger than the server's limit of {max_bytes:,} bytes (--max-body-mb)"
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise ServeError(413, "body_too_large", limit)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise ServeError(413, "body_too_large", limit)
        chunks.append(chunk)
    return b"".join(chunks)


async def _once(body: bytes) -> AsyncIterator[bytes]:
    yield body


def _suffix(name: str, content_type: str) -> str:
    suffix = PurePath(name).suffix
    if suffix:
        return suffix
    ctype = content_type.split(";")[0].strip().lower()
    return _AUDIO_TYPES.get(ctype, "." + ctype.split("/")[-1] if ctype.startswith("image/") else "")


async def request_inputs(request: Any, max_bytes: int, max_files: int) -> list[InMemoryFile]:
    """The inputs of a ``POST /predict`` request, in order."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "multipart/form-data" and not ctype.startswith("image/") and ctype not in _AUDIO_TYPES:
        raise ServeError(
            415,
            "unsupported_content_type",
            f"Content-Type {ctype or '(none)'!r} is not accepted; send {ACCEPTED}",
        )
    body = await read_body(request, max_bytes)
    if not body:
        raise ServeError(400, "empty_request", f"the request has no body; send {ACCEPTED}")
    if ctype != "multipart/form-data":
        return [InMemoryFile("body" + _suffix("", ctype), body, _suffix("", ctype))]
    files = await _multipart_files(request, body, max_files)
    for f in files:
        if not f.data:
            raise ServeError(400, "empty_file", f"{f.name}: the file is empty (0 bytes)")
    return files


async def _multipart_files(request: Any, body: bytes, max_files: int) -> list[InMemoryFile]:
    from starlette.datastructures import UploadFile
    from starlette.formparsers import MultiPartException, MultiPartParser

    parser = MultiPartParser(request.headers, _once(body), max_files=max_files, max_fields=100)
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        if exc.message.startswith("Too many files"):
            raise ServeError(
                400,
                "too_many_files",
                f"more than {max_files} files in one request; the server takes at most {max_files} "
                "(--max-files)",
            ) from None
        raise ServeError(400, "bad_multipart", f"the multipart body cannot be read: {exc.message}") from None
    try:
        parts = form.getlist(FIELD)
        uploads = [p for p in parts if isinstance(p, UploadFile)]
        if not uploads:
            others = sorted({k for k, _ in form.multi_items() if k != FIELD})
            got = f"got field(s) {', '.join(map(repr, others))}" if others else "got no file"
            raise ServeError(400, "no_files", f"no files in the form's {FIELD!r} field ({got})")
        out = []
        for i, up in enumerate(uploads):
            name = up.filename or f"file{i + 1}"
            out.append(InMemoryFile(name, await up.read(), _suffix(name, up.content_type or "")))
        return out
    finally:
        await form.close()
