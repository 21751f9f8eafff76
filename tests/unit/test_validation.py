"""`serve_app.validation`: every malformed body gets a precise 4xx `RequestError`, never another exception."""

from __future__ import annotations

import json

import pytest

from serve_app.config import RouterConfig
from serve_app.router import load_api_key
from serve_app.validation import (
    Limits,
    RequestError,
    check_content_type,
    check_declared_length,
    parse_classify,
)

LIMITS = Limits(max_body_bytes=300_000, max_texts=4, max_text_chars=50)
CANARY = "CANARY-7f3a9"


def _err(raw: bytes) -> RequestError:
    with pytest.raises(RequestError) as info:
        parse_classify(raw, LIMITS)
    return info.value


def test_valid_single_and_batch() -> None:
    one = parse_classify(b'{"model": "m", "text": "hallo", "request_id": "r-1"}', LIMITS)
    assert one.texts == ["hallo"] and one.request_id == "r-1" and one.mode is None
    many = parse_classify(json.dumps({"model": "m", "texts": ["a", "b"], "mode": "paper"}).encode(), LIMITS)
    assert many.texts == ["a", "b"] and many.mode == "paper"


@pytest.mark.parametrize(
    ("raw", "status", "code", "field"),
    [
        (b"", 400, "empty_body", None),
        (b"   \n", 400, "empty_body", None),
        (b"{not json", 400, "invalid_json", None),
        (b"\xff\xfe{}", 400, "invalid_utf8", None),
        (b"[" * 100_000 + b"]" * 100_000, 400, "json_too_deep", None),
        (b'{"model": "m", "texts": [' + b"1" * 5000 + b"]}", 400, "number_too_large", None),
        (b'{"model": "m", "text": NaN}', 400, "invalid_json", None),
        (b'{"model": "m", "model": "n", "text": "x"}', 400, "duplicate_field", "model"),
        (b'"just a string"', 400, "wrong_type", None),
        (b"[1, 2]", 400, "wrong_type", None),
        (b"null", 400, "wrong_type", None),
        (b'{"text": "x"}', 400, "missing_field", "model"),
        (b'{"model": 3, "text": "x"}', 400, "wrong_type", "model"),
        (b'{"model": "", "text": "x"}', 400, "wrong_type", "model"),
        (b'{"model": "m"}', 400, "missing_field", "texts"),
        (b'{"model": "m", "text": "x", "texts": ["y"]}', 400, "missing_field", "texts"),
        (b'{"model": "m", "texts": "x"}', 400, "wrong_type", "texts"),
        (b'{"model": "m", "texts": []}', 400, "empty_texts", "texts"),
        (b'{"model": "m", "texts": ["a", "b", "c", "d", "e"]}', 413, "too_many_texts", "texts"),
        (b'{"model": "m", "texts": ["a", 1e999]}', 400, "wrong_type", "texts[1]"),
        (b'{"model": "m", "texts": ["a", {"x": 1}]}', 400, "wrong_type", "texts[1]"),
        (b'{"model": "m", "text": "  \\t\\n "}', 400, "empty_text", "text"),
        (b'{"model": "m", "text": "a\\u0000b"}', 400, "nul_byte", "text"),
        (b'{"model": "m", "text": "a\\ud800b"}', 400, "invalid_unicode", "text"),
        (b'{"model": "m", "text": "' + b"x" * 51 + b'"}', 413, "text_too_long", "text"),
        (b'{"model": "m", "text": "x", "mode": 7}', 400, "wrong_type", "mode"),
        (b'{"model": "m", "text": "x", "request_id": "a b"}', 400, "invalid_request_id", "request_id"),
        (b'{"model": "m", "text": "x", "extra": 1}', 400, "unknown_field", "extra"),
        (b" " * 300_001, 413, "body_too_large", None),
    ],
)
def test_malformed_bodies(raw: bytes, status: int, code: str, field: str | None) -> None:
    err = _err(raw)
    assert (err.status, err.code, err.field) == (status, code, field)
    assert set(err.body()["error"]) == {"code", "message", "field"}


def test_errors_never_echo_client_content() -> None:
    bodies = [
        {"model": CANARY, "text": "x", CANARY: 1},
        {"model": "m", "text": CANARY * 10},
        {"model": "m", "texts": [CANARY, 5]},
        {"model": "m", "text": f"{CANARY}\x00"},
        {"model": "m", "text": CANARY, "mode": 3},
        {"model": "m", "text": CANARY, "request_id": CANARY + " "},
    ]
    for body in bodies:
        err = _err(json.dumps(body).encode())
        assert CANARY not in json.dumps(err.body()), body
    err = _err(b'{"model": "m", "text": "' + CANARY.encode() + b'" oops}')
    assert CANARY not in json.dumps(err.body())


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        "application/json",
        "application/json; charset=utf-8",
        "Application/JSON;charset=UTF-8",
        "application/problem+json",
    ],
)
def test_json_content_types_accepted(value: str | None) -> None:
    check_content_type(value)


@pytest.mark.parametrize(
    "value",
    [
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; b=x",
        "application/json; charset=latin-1",
        "application/xml",
    ],
)
def test_other_content_types_rejected(value: str) -> None:
    with pytest.raises(RequestError) as info:
        check_content_type(value)
    assert (info.value.status, info.value.code) == (415, "unsupported_media_type")


def test_declared_length() -> None:
    check_declared_length(None, 100)
    check_declared_length("100", 100)
    check_declared_length("junk", 100)  # the HTTP server rejects malformed lengths itself
    with pytest.raises(RequestError) as info:
        check_declared_length("101", 100)
    assert info.value.code == "body_too_large"


def test_5xx_body_carries_error_id() -> None:
    body = RequestError(503, "overloaded", "busy").body("abc123")
    assert body == {"error": {"code": "overloaded", "message": "busy", "field": None}, "error_id": "abc123"}


def test_api_key_from_file_or_env(tmp_path) -> None:
    assert load_api_key(RouterConfig(), environ={}) == ""
    assert load_api_key(RouterConfig(api_key_env="K"), environ={"K": " s3cret\n"}) == "s3cret"
    key_file = tmp_path / "token"
    key_file.write_text("from-file\n")
    cfg = RouterConfig(api_key_env="K", api_key_file=str(key_file))
    assert load_api_key(cfg, environ={"K": "from-env"}) == "from-file"
    key_file.write_bytes(b"\xef\xbb\xbfwith-bom\n")  # as some editors save it
    assert load_api_key(cfg, environ={}) == "with-bom"


def test_a_trailing_newline_is_not_part_of_a_valid_request_id_or_field_name() -> None:
    for rid in ("abc\n", "a" * 128 + "\n"):
        body = json.dumps({"model": "m", "text": "x", "request_id": rid}).encode()
        assert _err(body).code == "invalid_request_id"
    err = _err(json.dumps({"model": "m", "text": "x", "foo\n": 1}).encode())
    assert err.code == "unknown_field" and "foo" not in err.message


def test_a_content_length_of_other_digits_is_left_to_the_body_check() -> None:
    check_declared_length("\u00b2", 10)  # a superscript two: a digit to str.isdigit, not a number
    with pytest.raises(RequestError) as info:
        check_declared_length(" 400000 ", 300_000)
    assert info.value.status == 413
