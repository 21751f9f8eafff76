"""Request validation for the router: every malformed request gets a precise 4xx (never a 5xx).

Pure functions over bytes and header values, so they are unit-tested without a server. Nothing a
client sent is echoed in an error (texts may be citizens' personal data, and model names, modes or
field names can carry them too): errors name the field, the size or the position instead.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

REQUEST_ID_RE = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
FIELD_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
"""Both are matched whole (``fullmatch``: ``$`` would let a trailing newline through)."""
ALLOWED_FIELDS = frozenset({"model", "text", "texts", "mode", "request_id"})
JSON_MEDIA_TYPES = ("application/json",)
"""Accepted ``Content-Type`` media types (``application/*+json`` too); a missing header is read as JSON."""


class RequestError(Exception):
    """A client or service error: HTTP ``status``, a snake_case ``code``, a message, the offending
    field (a JSON path or None) and extra response headers (``Retry-After``, ``WWW-Authenticate``)."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        field: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.field = status, code, message, field
        self.headers = headers or {}

    def body(self, error_id: str | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {"error": {"code": self.code, "message": self.message, "field": self.field}}
        if error_id is not None:
            out["error_id"] = error_id
        return out


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


def safe_field_name(name: str) -> str:
    """A client-chosen key, for error messages: itself if it looks like an identifier, else a placeholder."""
    return name if FIELD_NAME_RE.fullmatch(name) else "<invalid name>"


def check_content_type(value: str | None) -> None:
    """``application/json`` (or ``application/*+json``), charset utf-8 if named; a missing header is JSON."""
    if value is None or not value.strip():
        return
    media, _, params = value.partition(";")
    media = media.strip().lower()
    if media not in JSON_MEDIA_TYPES and not (media.startswith("application/") and media.endswith("+json")):
        raise RequestError(415, "unsupported_media_type", "Content-Type must be application/json")
    for param in params.split(";"):
        key, _, val = param.partition("=")
        if key.strip().lower() == "charset" and val.strip().strip('"').lower() not in ("utf-8", "utf8"):
            raise RequestError(415, "unsupported_media_type", "the body must be UTF-8 encoded JSON")


def check_declared_length(value: str | None, max_body_bytes: int) -> None:
    """Reject a ``Content-Length`` over the limit before reading the body."""
    digits = (value or "").strip()
    if digits.isascii() and digits.isdecimal() and int(digits) > max_body_bytes:
        raise RequestError(
            413, "body_too_large", f"body has {int(digits)} bytes; the limit is {max_body_bytes}"
        )


def _reject_constant(name: str) -> Any:
    raise RequestError(400, "invalid_json", f"{name} is not valid JSON")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise RequestError(
                400, "duplicate_field", f"field {safe_field_name(key)!r} appears twice", safe_field_name(key)
            )
        out[key] = value
    return out


def parse_json(raw: bytes) -> Any:
    """Strict JSON: UTF-8, no NaN/Infinity, no duplicate keys, bounded nesting and integer size."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RequestError(400, "invalid_utf8", f"body is not valid UTF-8 (byte {exc.start})") from None
    if not text.strip():
        raise RequestError(400, "empty_body", "request body is empty; send a JSON object")
    try:
        return json.loads(text, parse_constant=_reject_constant, object_pairs_hook=_unique_keys)
    except RecursionError:
        raise RequestError(400, "json_too_deep", "JSON nesting is too deep") from None
    except json.JSONDecodeError as exc:
        raise RequestError(
            400, "invalid_json", f"invalid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    except ValueError:  # an integer literal over Python's digit limit (CVE-2020-10735 guard)
        raise RequestError(400, "number_too_large", "a number in the body has too many digits") from None


def _check_text(value: Any, field: str, limits: Limits) -> str:
    if not isinstance(value, str):
        raise RequestError(400, "wrong_type", f"{field} must be a string, got {type(value).__name__}", field)
    if len(value) > limits.max_text_chars:
        raise RequestError(
            413,
            "text_too_long",
            f"{field} has {len(value)} characters; the limit is {limits.max_text_chars}",
            field,
        )
    if not value.strip():
        raise RequestError(400, "empty_text", f"{field} is empty or whitespace only", field)
    if "\x00" in value:
        raise RequestError(400, "nul_byte", f"{field} contains a NUL character", field)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise RequestError(400, "invalid_unicode", f"{field} contains an unpaired surrogate", field) from None
    return value


def _check_name(body: dict[str, Any], key: str, required: bool) -> str | None:
    value = body.get(key)
    if value is None:
        if required:
            raise RequestError(400, "missing_field", f"field {key!r} is required", key)
        return None
    if not isinstance(value, str) or not value.strip() or len(value) > 128:
        raise RequestError(
            400, "wrong_type", f"{key} must be a non-empty string of at most 128 characters", key
        )
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise RequestError(400, "invalid_unicode", f"{key} contains an unpaired surrogate", key) from None
    return value


def parse_classify(raw: bytes, limits: Limits) -> ClassifyRequest:
    """Validate a ``POST /v1/classify`` body; raise `RequestError` (4xx) for anything malformed."""
    if len(raw) > limits.max_body_bytes:
        raise RequestError(
            413, "body_too_large", f"body has {len(raw)} bytes; the limit is {limits.max_body_bytes}"
        )
    body = parse_json(raw)
    if not isinstance(body, dict):
        raise RequestError(400, "wrong_type", f"body must be a JSON object, got {type(body).__name__}")
    unknown = sorted(set(body) - ALLOWED_FIELDS)
    if unknown:
        names = [safe_field_name(k) for k in unknown[:5]]
        raise RequestError(
            400, "unknown_field", f"unknown field(s) {names}; allowed: {sorted(ALLOWED_FIELDS)}", names[0]
        )
    model = _check_name(body, "model", required=True)
    assert model is not None
    if ("text" in body) == ("texts" in body):
        raise RequestError(
            400,
            "missing_field",
            "send exactly one of 'text' (a string) or 'texts' (a list of strings)",
            "texts",
        )
    if "text" in body:
        texts = [_check_text(body["text"], "text", limits)]
    else:
        raw_texts = body["texts"]
        if not isinstance(raw_texts, list):
            raise RequestError(
                400, "wrong_type", f"texts must be a list of strings, got {type(raw_texts).__name__}", "texts"
            )
        if not raw_texts:
            raise RequestError(400, "empty_texts", "texts is an empty list", "texts")
        if len(raw_texts) > limits.max_texts:
            raise RequestError(
                413, "too_many_texts", f"{len(raw_texts)} texts; the limit is {limits.max_texts}", "texts"
            )
        texts = [_check_text(t, f"texts[{i}]", limits) for i, t in enumerate(raw_texts)]
    mode = _check_name(body, "mode", required=False)
    rid = body.get("request_id")
    if rid is not None and (not isinstance(rid, str) or not REQUEST_ID_RE.fullmatch(rid)):
        raise RequestError(
            400, "invalid_request_id", "request_id must be 1-128 characters of [A-Za-z0-9._:-]", "request_id"
        )
    return ClassifyRequest(model, texts, mode, rid)
