"""The fast reader of structured documents (msgspec) against the general one: the same
envelopes, the same errors, and ``data`` kept byte for byte as it was published."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any
from unittest import mock

import pytest
from hypothesis import given
from hypothesis import strategies as st

from eventbus import envelope as codec
from eventbus.envelope import Envelope, from_structured, to_structured
from eventbus.errors import DecodeError
from eventbus.plaindocument import read_plain
from tests.test_envelope import envelopes, json_values, printable, words

pytest.importorskip("msgspec", reason="the fast reader needs msgspec (the redis extra)")


def _general(body: bytes) -> Envelope:
    """The document read without the fast reader, as it is without msgspec."""
    with mock.patch.object(codec, "read_plain", None):
        return from_structured(body)


def _outcome(read: Any, body: bytes) -> Envelope | str:
    try:
        envelope: Envelope = read(body)
    except DecodeError as exc:
        return f"DecodeError: {exc}"
    return envelope


def _same_apart_from_data_bytes(fast: Envelope, general: Envelope) -> None:
    assert fast.replace(data=b"") == general.replace(data=b"")
    if fast.data != general.data:  # JSON both: written differently, meaning the same
        assert (json.loads(fast.data) if fast.data else None) == (
            json.loads(general.data) if general.data else None
        )


@given(envelopes())
def test_what_eventbus_writes_is_read_back_exactly(envelope: Envelope) -> None:
    """No extensions: the fast reader takes it, and ``data`` comes back byte for byte."""
    envelope = envelope.replace(extensions={})
    body = to_structured(envelope)
    assert read_plain is not None
    assert read_plain(body, None) is not None
    assert from_structured(body) == envelope
    _same_apart_from_data_bytes(from_structured(body), _general(body))


@given(envelopes())
def test_both_readers_read_the_same_envelope(envelope: Envelope) -> None:
    body = to_structured(envelope)
    _same_apart_from_data_bytes(from_structured(body), _general(body))


attributes = st.fixed_dictionaries(
    {"specversion": st.just("1.0"), "id": printable, "source": printable, "type": words},
    optional={
        "subject": printable,
        "time": st.sampled_from(["2026-12-02T10:00:00Z", "2026-12-02T10:00:00.5+01:00"]),
        "datacontenttype": st.sampled_from(["application/json", "application/cloudevents+json"]),
        "dataversion": st.integers(min_value=0, max_value=10**20),
        "partitionkey": printable,
        "data": json_values,
    },
)


@given(attributes, st.none() | st.integers(min_value=0, max_value=4), st.booleans())
def test_a_foreign_document_keeps_its_data_bytes_and_means_the_same(
    document: dict[str, Any], indent: int | None, ascii_only: bool
) -> None:
    """Another producer's whitespace and escapes: the same attributes, the same JSON data,
    and the data exactly as it was written."""
    body = json.dumps(document, indent=indent, ensure_ascii=ascii_only).encode()
    fast, general = from_structured(body, key="k"), _general(body)
    _same_apart_from_data_bytes(fast, general.replace(partitionkey=fast.partitionkey))
    assert fast.partitionkey == document.get("partitionkey", "k")
    if document.get("data") is not None:
        written = json.dumps(document["data"], indent=indent, ensure_ascii=ascii_only).encode()
        assert fast.data == written.replace(b"\n", b"\n" + b" " * (indent or 0))


HEAD = '{"specversion":"1.0","id":"1","source":"s","type":"t"'
ODD_DOCUMENTS = [
    HEAD + ',"id":"2"}',  # a repeated name: the last one counts, as in the general reader
    HEAD + ',"tenant":"a","data":{ "x": 1 }}',  # an extension: the general way
    HEAD + ',"data_base64":"aGk="}',
    HEAD + ',"datacontenttype":"text/plain","data":"hello"}',  # text data is stored unquoted
    HEAD + ',"data":null}',
    HEAD + ',"data":1e400}',
    HEAD + ',"data":{"ratio":NaN}}',
    HEAD + ',"subject":"\\ud800"}',
    HEAD + ',"data":{"a":"\\ud800"}}',
    HEAD + ',"data":"\\ud83d\\ude00"}',
    HEAD + ',"dataversion":true}',
    HEAD + ',"dataversion":1.0}',
    HEAD + ',"dataversion":"7"}',
    HEAD + ',"subject":12}',
    HEAD + ',"time":"yesterday"}',
    HEAD + ',"time":"2026-12-02T10:00:00"}',
    HEAD + ',"time":"2026-12-02"}',
    HEAD + "} trailing",
    '{"specversion":"0.3","id":"1","source":"s","type":"t"}',
    '{"specversion":1.0,"id":"1","source":"s","type":"t"}',
    '{"specversion":"1.0","id":"","source":"s","type":"t"}',
    '{"specversion":"1.0","id":null,"source":"s","type":"t"}',
    '{"specversion":"1.0","source":"s","type":"t"}',
    "\ufeff" + HEAD + "}",
    HEAD + ',"data":' + "[" * 3000 + "]" * 3000 + "}",
    "[1]",
    "{not json",
    "",
]


@pytest.mark.parametrize("document", ODD_DOCUMENTS)
def test_odd_documents_read_or_fail_as_the_general_reader_does(document: str) -> None:
    body = document.encode("utf-8", "surrogatepass")
    fast, general = _outcome(from_structured, body), _outcome(_general, body)
    if isinstance(fast, Envelope) and isinstance(general, Envelope):
        _same_apart_from_data_bytes(fast, general)
    else:
        assert fast == general


@given(st.binary(max_size=80))
def test_any_bytes_read_or_fail_as_the_general_reader_does(tail: bytes) -> None:
    body = HEAD.encode() + tail
    fast, general = _outcome(from_structured, body), _outcome(_general, body)
    if isinstance(fast, Envelope) and isinstance(general, Envelope):
        _same_apart_from_data_bytes(fast, general)
    else:
        assert fast == general


def test_without_msgspec_documents_are_read_the_general_way() -> None:
    """A Python that cannot import msgspec, as after ``pip install eventbus`` alone."""
    no_msgspec = [
        sys.executable,
        "-c",
        "import sys; sys.modules['msgspec'] = None; exec(sys.argv[1])",
    ]
    program = (
        "from eventbus import envelope as e\n"
        "assert e.read_plain is None\n"
        "doc = b'" + HEAD + ',"data":{ "x": 1 }}' + "'\n"
        "print(e.from_structured(doc).data.decode())\n"
    )
    done = subprocess.run([*no_msgspec, program], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == '{"x":1}'
