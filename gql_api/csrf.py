"""CSRF prevention for GraphQL over HTTP, as Apollo Server does it.

A page on another site can make a browser send a "simple" request (no CORS preflight) with the
user's credentials, and CORS only stops it from reading the answer, not the operation from
running. Simple requests are the ones this refuses unless they carry a header that no page can
add without a preflight.
"""

from __future__ import annotations

from collections.abc import Mapping

from gql_api.errors import BadUserInput

# Apollo Server's CSRF prevention: a browser sends these content types (or none) cross-site
# without a CORS preflight, and can add none of these headers without one.
SIMPLE_CONTENT_TYPES = frozenset({"application/x-www-form-urlencoded", "multipart/form-data", "text/plain"})
PREFLIGHT_HEADERS = ("x-apollo-operation-name", "apollo-require-preflight", "graphql-require-preflight")


def check_preflighted(headers: Mapping[str, str]) -> None:
    """Refuse a request a browser could send cross-site without a preflight (Apollo's rule).

    That is one with no ``Content-Type`` or a "simple" one (so every GET), unless it carries a
    non-empty ``X-Apollo-Operation-Name``, ``Apollo-Require-Preflight`` or
    ``GraphQL-Require-Preflight`` header.
    """
    content_type = headers.get("content-type")
    if content_type is not None:
        essence = content_type.split(";", 1)[0].strip().lower()
        if essence not in SIMPLE_CONTENT_TYPES:
            return  # a browser preflights any other type, so CORS has had its say
    if any(headers.get(name, "").strip() for name in PREFLIGHT_HEADERS):
        return
    # The first thing a client developer reads (urql sends queries as GET by default): say the
    # exact header line to add, not just the rule.
    raise BadUserInput(
        "This operation has been blocked as a potential Cross-Site Request Forgery (CSRF): "
        "add the header 'Apollo-Require-Preflight: true' (any non-empty value; "
        "GraphQL-Require-Preflight or X-Apollo-Operation-Name also do), "
        "or send it as a POST with Content-Type: application/json"
    )
