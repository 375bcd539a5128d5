"""Cursor encoding and page-argument validation."""

from __future__ import annotations

import pytest

from gql_api.errors import BadUserInput
from gql_api.pagination import DEFAULT_PAGE_SIZE, PageRequest, decode_cursor, encode_cursor


@pytest.mark.parametrize("seq", [0, 1, 42, 10**12])
def test_a_cursor_round_trips(seq):
    assert decode_cursor(encode_cursor(seq)) == seq


@pytest.mark.parametrize(
    "cursor", [encode_cursor(2**63), "", "!!", "c2VxOg", "c2VxOi0x", "c2VxOjAx", "Zm9vOjE", "c2VxOjE\u00e9"]
)
def test_a_malformed_cursor_is_bad_user_input(cursor):
    with pytest.raises(BadUserInput):
        decode_cursor(cursor)


def test_defaults_and_directions():
    assert PageRequest.from_relay() == PageRequest(DEFAULT_PAGE_SIZE, True)
    assert PageRequest.from_relay(first=3) == PageRequest(3, False)
    assert PageRequest.from_relay(last=3, before=encode_cursor(9)) == PageRequest(3, True, None, 9)
    assert PageRequest.from_relay(after=encode_cursor(2)) == PageRequest(DEFAULT_PAGE_SIZE, False, 2)
