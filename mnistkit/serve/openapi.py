"""The OpenAPI 3.1 description served at ``/openapi.json``: what a client generator reads.

Written out rather than derived from code: the request body has two forms (multipart and raw
bytes) and the answers carry the model's own class names, which this fills in.
"""

from __future__ import annotations

from typing import Any

from mnistkit import __version__
from mnistkit.serve.config import ServeConfig

_ERROR = {
    "type": "object",
    "required": ["error", "problem"],
    "properties": {
        "error": {"type": "string", "description": "what is wrong, in a sentence"},
        "problem": {
            "type": "string",
            "description": "a short code: body_too_large, too_many_files, unsupported_content_type, "
            "empty_request, empty_file, no_files, bad_multipart, bad_parameter, unreadable_input, "
            "overloaded, not_found, method_not_allowed, internal_error",
        },
    },
}


def _errors(*codes: int) -> dict[str, Any]:
    words = {
        400: "a malformed request (empty, too many files, bad parameter)",
        413: "the body is larger than --max-body-mb",
        415: "the content type is not accepted",
        422: "a file cannot be read (not an image/audio, truncated, decompression bomb)",
        503: "the queue is full (Retry-After says when to retry) or the server is shutting down",
    }
    return {
        str(c): {
            "description": words[c],
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
        }
        for c in codes
    }


def openapi(meta: dict[str, Any], config: ServeConfig) -> dict[str, Any]:
    def get(summary: str) -> dict[str, Any]:
        return {"get": {"summary": summary, "responses": {"200": {"description": "ok"}}}}

    return {
        "openapi": "3.1.0",
        "info": {
            "title": f"mnistkit serve: {meta['recipe_name']} ({meta['dataset']})",
            "version": __version__,
            "description": "An exported mnistkit model in ONNX Runtime. See docs/serving.md.",
        },
        "paths": {
            "/predict": {"post": _predict(meta, config)},
            "/health": get("live and ready (503 while shutting down)"),
            "/metadata": get("classes, input contract, model hash, source run"),
            "/metrics": get("Prometheus text: requests, latency, batch sizes"),
            "/": get("a page to try the model (HTML)"),
        },
        "components": {"schemas": {"Error": _ERROR}},
    }


def _predict(meta: dict[str, Any], config: ServeConfig) -> dict[str, Any]:
    classes = [str(c) for c in meta["classes"]]
    binary = {"type": "string", "format": "binary"}
    top_class = {
        "type": "object",
        "properties": {
            "class": {"type": "string", "enum": classes},
            "index": {"type": "integer"},
            "probability": {"type": "number"},
        },
    }
    prediction = {
        "type": "object",
        "properties": {
            "file": {"type": "string", "description": "the upload's file name ('body...' for a raw body)"},
            **top_class["properties"],
            "top": {
                "type": "array",
                "items": top_class,
                "description": "the `top` most probable, best first",
            },
            "notes": {
                "type": "array",
                "items": {"type": "string"},
                "description": "what makes the input far from the training data (as `mnistkit predict`)",
            },
            "note": {"type": "string", "description": "the notes joined with '; ' (absent when none)"},
        },
    }
    return {
        "summary": "Classify one or more files; one prediction per file, in order.",
        "parameters": [
            {
                "name": "top",
                "in": "query",
                "schema": {"type": "integer", "minimum": 1, "default": 1},
            },
            {
                "name": "invert",
                "in": "query",
                "schema": {"type": "boolean", "default": False},
                "description": "invert image brightness first (dark drawings on light paper)",
            },
        ],
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "properties": {
                            "files": {
                                "type": "array",
                                "items": binary,
                                "maxItems": config.max_files,
                            }
                        },
                    }
                },
                "image/*": {"schema": binary},
                "audio/wav": {"schema": binary},
            },
        },
        "responses": {
            "200": {
                "description": "the predictions",
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "properties": {
                                "predictions": {"type": "array", "items": prediction},
                                "model": {"type": "object"},
                            },
                        }
                    }
                },
            },
            **_errors(400, 413, 415, 422, 503),
        },
    }
