"""Model names, version references and the relative paths of a version's files."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from registry.errors import InvalidInputError, InvalidReferenceError
from registry.refs import (
    MAX_NAME_LENGTH,
    Reference,
    parse_reference,
    validate_alias,
    validate_name,
    validate_relative_path,
)

DIGEST = "0123456789abcdef" * 4
PATH_1024 = "/".join(["a" * 200] * 5) + "/" + "b" * 19
assert len(PATH_1024) == 1024


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("llama", Reference("llama")),
        ("llama-3.1-8b_instruct", Reference("llama-3.1-8b_instruct")),
        ("0x", Reference("0x")),
        ("meta/llama", Reference("meta/llama")),
        ("llama@7", Reference("llama", number=7)),
        ("meta/llama@123456", Reference("meta/llama", number=123456)),
        ("llama@blake3:" + DIGEST[:12], Reference("llama", digest_prefix=DIGEST[:12])),
        ("llama@blake3:" + DIGEST, Reference("llama", digest_prefix=DIGEST)),
        ("org/llama@blake3:" + DIGEST[:40], Reference("org/llama", digest_prefix=DIGEST[:40])),
        ("llama:production", Reference("llama", alias="production")),
        ("org/llama:canary-2.b_c", Reference("org/llama", alias="canary-2.b_c")),
        ("a" * MAX_NAME_LENGTH, Reference("a" * MAX_NAME_LENGTH)),
    ],
)
def test_parse_reference(text: str, expected: Reference) -> None:
    parsed = parse_reference(text)
    assert parsed == expected
    assert str(parsed) == text
    assert sum(x is not None for x in (parsed.number, parsed.digest_prefix, parsed.alias)) <= 1


@pytest.mark.parametrize(
    "text",
    [
        "",
        "UPPER",
        "Llama",
        "../x",
        "/abs",
        "a//b",
        "a/b/c",
        "a..b",
        "org/a..b",
        "..",
        ".hidden",
        "-dash",
        "_under",
        "a/",
        "a b",
        "x@0",
        "x@01",
        "x@-1",
        "x@+1",
        "x@ 7",
        "x@1.0",
        "x@",
        "x@\u0663",  # ARABIC-INDIC DIGIT THREE: isdigit() but not ASCII
        "x@blake3:short",
        "x@blake3:" + "0" * 11,
        "x@blake3:" + "0" * 65,
        "x@blake3:XYZ" + "0" * 20,
        "x@blake3:" + DIGEST[:20].upper(),
        "x@sha256:" + DIGEST,
        "x:",
        "x:UPPER",
        "x:1prod",
        "x:a..b",
        "x:" + "a" * 64,
        ":prod",
        "@7",
        "a" * (MAX_NAME_LENGTH + 1),
        "org/" + "a" * (MAX_NAME_LENGTH - 3),
        "a\x00b",
        "a\nb",
        "llama\n",
        "a\tb",
        "x@7@8",
        "x@7:prod",
        "x:prod@7",
        "x:prod:staging",
        "modèle",
    ],
)
def test_parse_reference_refuses(text: str) -> None:
    with pytest.raises(InvalidReferenceError):
        parse_reference(text)


def test_name_length_limit_counts_the_whole_name() -> None:
    assert validate_name("o/" + "a" * (MAX_NAME_LENGTH - 2)) == "o/" + "a" * (MAX_NAME_LENGTH - 2)
    with pytest.raises(InvalidReferenceError, match="limit is 128"):
        validate_name("a" * (MAX_NAME_LENGTH + 1))


def test_errors_carry_a_grammar_hint() -> None:
    with pytest.raises(InvalidReferenceError) as info:
        parse_reference("Bad Name")
    assert "NAME@blake3:PREFIX" in info.value.hint
    with pytest.raises(InvalidReferenceError) as info:
        validate_alias("PROD")
    assert "[a-z]" in info.value.hint


def test_reference_errors_are_value_errors() -> None:
    with pytest.raises(ValueError, match="empty"):
        parse_reference("")


# -- relative paths ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "model.safetensors",
        "config.json",
        "a/b/c/d.bin",
        "tokenizer/special_tokens_map.json",
        ".gitattributes",
        "a/.hidden/b",
        "a..b/c...d",
        "...",
        "with space/and-dash_under.score",
        "模型/权重.bin",
        "x" * 255,
        "é" * 127 + "e",  # 255 bytes in UTF-8
        PATH_1024,
    ],
)
def test_validate_relative_path_accepts(path: str) -> None:
    assert validate_relative_path(path) == path


@pytest.mark.parametrize(
    "path",
    [
        "",
        "/abs",
        "/",
        "a/../b",
        "..",
        "../a",
        "a/..",
        ".",
        "./a",
        "a/./b",
        "a//b",
        "a/",
        "a\\b",
        "..\\a",
        "a\x00b",
        "a\nb",
        "a\rb",
        "a\tb",
        "a\x7fb",
        "a\u2028b",  # LINE SEPARATOR
        "a\u2029b",  # PARAGRAPH SEPARATOR
        "a\u200bb",  # ZERO WIDTH SPACE (format character)
        "a\u202eb",  # RIGHT-TO-LEFT OVERRIDE
        "x" * 256,
        "a/" + "é" * 128,  # 256 bytes in UTF-8, 128 characters
        PATH_1024 + "x",
    ],
)
def test_validate_relative_path_refuses(path: str) -> None:
    with pytest.raises(InvalidInputError) as info:
        validate_relative_path(path, what="model file")
    assert "model file" in str(info.value)


def test_validate_relative_path_refuses_non_strings() -> None:
    with pytest.raises(InvalidInputError):
        validate_relative_path(b"a/b")  # type: ignore[arg-type]


# -- properties --------------------------------------------------------------------------------

SEGMENT = r"[a-z0-9][a-z0-9._-]{0,70}"
names = st.one_of(
    st.from_regex(rf"{SEGMENT}(/{SEGMENT})?", fullmatch=True),
    st.text(alphabet="abz09._-/A\n.", max_size=40),
    st.text(max_size=20),
)


def _accepted(name: str) -> bool:
    try:
        validate_name(name)
    except InvalidReferenceError:
        return False
    return True


@settings(max_examples=100, deadline=None)
@given(
    name=names,
    number=st.integers(1, 2**31 - 1),
    prefix=st.from_regex(r"[0-9a-f]{12,64}", fullmatch=True),
    alias=st.from_regex(r"[a-z][a-z0-9._-]{0,62}", fullmatch=True).filter(lambda a: ".." not in a),
)
def test_valid_names_round_trip(name: str, number: int, prefix: str, alias: str) -> None:
    if not _accepted(name):
        with pytest.raises(InvalidReferenceError):
            parse_reference(name)
        return
    assert ".." not in name
    assert len(name) <= MAX_NAME_LENGTH
    assert name.count("/") <= 1
    assert not name.startswith("/")
    assert name == name.lower()
    assert all(c.isascii() and (c.isalnum() or c in "._-/") for c in name)
    for reference in (
        Reference(name),
        Reference(name, number=number),
        Reference(name, digest_prefix=prefix),
        Reference(name, alias=alias),
    ):
        assert parse_reference(str(reference)) == reference
    # A valid name is also a safe relative path (what a pull may use as a directory name).
    assert validate_relative_path(name) == name


@settings(max_examples=100, deadline=None)
@given(text=st.text(max_size=60))
def test_parse_reference_only_raises_invalid_reference(text: str) -> None:
    try:
        reference = parse_reference(text)
    except InvalidReferenceError:
        return
    assert str(reference) == text
    assert validate_name(reference.name) == reference.name


@pytest.mark.parametrize("text", ["m@2147483648", "m@99999999999999999999", "m@" + "9" * 5000])
def test_version_numbers_beyond_the_catalog_range_are_refused(text: str) -> None:
    with pytest.raises(InvalidReferenceError):
        parse_reference(text)
    assert parse_reference("m@2147483647").number == 2**31 - 1
