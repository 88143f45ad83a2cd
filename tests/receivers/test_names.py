from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError

from receivers.names import RESERVED_NAMES, is_valid_name, name_problem, validate_receiver_name


@pytest.mark.parametrize(
    "name",
    ["bob", "a", "0", "alice-smith", "alice_smith", "x" * 63, "007", "a-", "a_b-c9"],
)
def test_valid_names(name: str) -> None:
    assert name_problem(name) is None
    validate_receiver_name(name)


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("", "empty"),
        ("x" * 64, "at most 63"),
        ("Bob", "lowercase"),
        ("ALICE", "lowercase"),
        ("-bob", "starts with"),
        ("_bob", "starts with"),
        ("bo.b", "only lowercase letters"),
        ("bo b", "only lowercase letters"),
        ("bøb", "only lowercase letters"),
        ("bob\n", "only lowercase letters"),
        ("bob/x", "only lowercase letters"),
        ("admin", "reserved"),
        ("api", "reserved"),
        ("btp", "reserved"),
        ("ilp", "reserved"),
        ("me", "reserved"),
        ("receivers", "reserved"),
        ("well-known", "reserved"),
        ("static", "reserved"),
        ("accounts", "reserved"),
    ],
)
def test_invalid_names_say_why(name: str, reason: str) -> None:
    problem = name_problem(name)
    assert problem is not None and reason in problem
    assert not is_valid_name(name)
    with pytest.raises(ValidationError) as info:
        validate_receiver_name(name)
    assert reason in str(info.value)


def test_every_route_prefix_of_the_site_is_reserved() -> None:
    from django.urls import get_resolver

    prefixes = set()
    for pattern in get_resolver().url_patterns:
        first = str(pattern.pattern).strip("^").split("/")[0]
        if first and "<" not in first:
            prefixes.add(first)
    assert prefixes, "the site has routes"
    assert prefixes <= RESERVED_NAMES, prefixes - RESERVED_NAMES


def test_a_name_another_route_owns_is_refused_even_if_not_listed() -> None:
    from receivers.names import route_conflict

    assert route_conflict("bob") is None
    # "admin/" and "api/docs/" are real routes; "me/" is ours but not a pointer.
    for name in ("admin", "me"):
        conflict = route_conflict(name)
        assert conflict is not None and "page of the site" in conflict


@pytest.mark.django_db
@pytest.mark.urls("tests.receivers.urls_with_new_route")
def test_services_refuse_a_name_shadowed_by_a_new_route(django_user_model: type) -> None:
    from receivers.errors import InvalidPointerName
    from receivers.services import receiver_create

    user = django_user_model.objects.create_user(username="alice")
    with pytest.raises(InvalidPointerName, match="page of the site"):
        receiver_create(user=user, name="newpage")
    assert receiver_create(user=user, name="newpages").name == "newpages"
