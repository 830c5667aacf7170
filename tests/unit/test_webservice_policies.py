"""Authentication policy matching (domains, case, wildcards) and the login time of a token."""

from __future__ import annotations

import pytest

from webservice.store import Store
from webservice.store.credentials import ACCESS, REFRESH, token_hash
from webservice.store.policies import Policy


def _policy(include: list[str] | None = None, exclude: list[str] | None = None) -> Policy:
    return Policy(
        "p",
        "o",
        None,
        "n",
        "d",
        domain_constraints_include=include,
        domain_constraints_exclude=exclude,
    )


@pytest.mark.parametrize(
    ("include", "exclude", "username", "refused"),
    [
        (None, None, "a@any.org", False),
        (["example.org"], None, "a@Example.ORG", False),
        (["example.org"], None, "a@sub.example.org", True),
        (["*.example.org"], None, "a@sub.example.org", False),
        (["*.edu"], None, "a@uni.edu", False),
        (["*.edu"], None, "a@edu", True),
        (["*.edu"], ["evil.edu"], "a@EVIL.edu", True),
        (None, ["example.org"], "a@other.org", False),
        (None, ["example.org"], "a@example.org", True),
        ([], None, "a@example.org", True),
        (["example.org"], None, "no-domain", True),
        (["example.org"], None, "x@example.org@evil.org", True),
    ],
)
def test_domain_constraints(
    include: list[str] | None, exclude: list[str] | None, username: str, refused: bool
) -> None:
    assert (_policy(include, exclude).domain_refusal(username) is not None) is refused


def test_a_refreshed_token_keeps_the_login_time_of_its_refresh_token() -> None:
    store = Store.open(":memory:")
    creds = store.credentials
    cid, _ = creds.create_client("c")
    refresh, rrec = creds.issue(REFRESH, cid, "rs", ["s"], 3600)
    _, direct = creds.issue(ACCESS, cid, "rs", ["s"], 60)
    _, minted = creds.issue(ACCESS, cid, "rs", ["s"], 60, refresh_hash=token_hash(refresh))
    assert creds.logged_in_at(direct) == direct.issued_at
    assert creds.logged_in_at(minted) == rrec.issued_at
    store.close()
