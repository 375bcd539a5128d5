"""The blocked-term matcher: Unicode normalisation, case-insensitivity, substrings, caching."""

from __future__ import annotations

import pytest

from gql_api.terms import BlockedTerms, blocked_terms, normalize


@pytest.mark.parametrize(
    ("term", "message"),
    [
        ("bad", "\uff22\uff21\uff24"),  # full-width letters are their plain forms under NFKC
        ("\uff22\uff21\uff24", "that was bad"),  # and the other way round
        ("bad", "so BaD"),
        ("strasse", "die Straße"),  # case folding, not just lower-casing
        ("ﬁne", "fine by me"),  # a ligature
        ("x²", "x2"),  # a superscript
        ("café", "cafe\u0301"),  # composed and decomposed accents
        ("bad", "badge"),  # a substring, inside a word
        ("a.b", "say a.b now"),  # regex metacharacters are literal
    ],
)
def test_a_term_is_found_normalised_and_case_insensitively(term, message):
    assert BlockedTerms([term]).found_in(message)


@pytest.mark.parametrize(("term", "message"), [("bad", "b a d"), ("a.b", "axb"), ("café", "cafe"), ("spoiler", "")])
def test_only_what_holds_the_term_is_found(term, message):
    assert not BlockedTerms([term]).found_in(message)


def test_any_of_many_terms_is_found_and_no_terms_find_nothing():
    terms = BlockedTerms([f"term{n:03d}" for n in range(500)])
    assert terms and terms.found_in("... TERM499 ...") and terms.found_in("term000")
    assert not terms.found_in("term5")
    assert not BlockedTerms([]) and not BlockedTerms([]).found_in("anything")


def test_a_longer_term_sharing_a_prefix_with_a_shorter_one_is_found():
    assert BlockedTerms(["ab", "abc"]).found_in("xabcx") and BlockedTerms(["abc", "ab"]).found_in("xab")


def test_normalize_is_nfkc_and_casefold():
    assert normalize("\uff22\uff21\uff24 Straße") == "bad strasse"


def test_a_list_is_compiled_once():
    first = blocked_terms(("one", "two"))
    assert blocked_terms(("one", "two")) is first
    assert blocked_terms(("two", "one")) is not first
