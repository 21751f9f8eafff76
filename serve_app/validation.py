"""Request validation for the router: every malformed request gets a precise 4xx (never a 5xx).

Pure functions over bytes, so they are unit-tested without a server. Texts are never echoed in
error messages (they may be citizens' personal data): errors name the field and the size instead.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
ALLOWED_FIELDS = {"model", "text", "texts", "mode", "request_id"}


class RequestError(Exception):
    """A client error: HTTP ``status``, a snake_case ``code``, a message, the offending field."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.field = status, code, message, field
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message, "field": self.field}}


@dataclass(frozen=True)
class ClassifyRequest:
    model: str
    texts: list[str]
    mode: str | None
    request_id: str | None


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int
    max_texts: int
    max_text_chars: int


def parse_json(raw: bytes) -> Any:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RequestError(400, "invalid_utf8", f"body is not valid UTF-8 (byte {exc.start})") from None
    if not text.strip():
        raise RequestError(400, "empty_body", "request body is empty; send a JSON object")
    try:
        return json.loads(text)
    except RecursionError:
        raise RequestError(400, "json_too_deep", "JSON nesting is too deep") from None
    except json.JSONDecodeError as exc:
        raise RequestError(400, "invalid_json", f"invalid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None


def _check_text(value: Any, field: str, limits: Limits) -> str:
    if not isinstance(value, str):
        raise RequestError(400, "wrong_type", f"{field} must be a string, got {type(value).__name__}", field)
    if not value.strip():
        raise RequestError(400, "empty_text", f"{field} is empty or whitespace only", field)
    if "\x00" in value:
        raise RequestError(400, "nul_byte", f"{field} contains a NUL character", field)
    if len(value) > limits.max_text_chars:
        raise RequestError(413, "text_too_long",
                           f"{field} has {len(value)} characters; the limit is {limits.max_text_chars}", field)
    if any(0xD800 <= ord(c) <= 0xDFFF for c in value):
        raise RequestError(400, "invalid_unicode", f"{field} contains an unpaired surrogate", field)
    return value


def parse_classify(raw: bytes, limits: Limits) -> ClassifyRequest:
    if len(raw) > limits.max_body_bytes:
        raise RequestError(413, "body_too_large", f"body has {len(raw)} bytes; the limit is {limits.max_body_bytes}")
    body = parse_json(raw)
    if not isinstance(body, dict):
        raise RequestError(400, "wrong_type", f"body must be a JSON object, got {type(body).__name__}")
    unknown = sorted(set(body) - ALLOWED_FIELDS)
    if unknown:
        raise RequestError(400, "unknown_field", f"unknown field(s) {unknown}; allowed: {sorted(ALLOWED_FIELDS)}",
                           unknown[0][:64])
    model = body.get("model")
    if model is None:
        raise RequestError(400, "missing_field", "field 'model' is required", "model")
    if not isinstance(model, str) or not model:
        raise RequestError(400, "wrong_type", "model must be a non-empty string", "model")
    if ("text" in body) == ("texts" in body):
        raise RequestError(400, "missing_field", "send exactly one of 'text' (a string) or 'texts' (a list of strings)",
                           "texts")
    if "text" in body:
        texts = [_check_text(body["text"], "text", limits)]
    else:
        raw_texts = body["texts"]
        if not isinstance(raw_texts, list):
            raise RequestError(400, "wrong_type", f"texts must be a list of strings, got {type(raw_texts).__name__}",
                               "texts")
        if not raw_texts:
            raise RequestError(400, "empty_texts", "texts is an empty list", "texts")
        if len(raw_texts) > limits.max_texts:
            raise RequestError(413, "too_many_texts", f"{len(raw_texts)} texts; the limit is {limits.max_texts}",
                               "texts")
        texts = [_check_text(t, f"texts[{i}]", limits) for i, t in enumerate(raw_texts)]
    mode = body.get("mode")
    if mode is not None and not isinstance(mode, str):
        raise RequestError(400, "wrong_type", "mode must be a string", "mode")
    rid = body.get("request_id")
    if rid is not None and (not isinstance(rid, str) or not REQUEST_ID_RE.match(rid)):
        raise RequestError(400, "invalid_request_id", "request_id must be 1-128 characters of [A-Za-z0-9._:-]",
                           "request_id")
    return ClassifyRequest(model, texts, mode, rid)
