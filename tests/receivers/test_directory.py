from __future__ import annotations

import asyncio

import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth.models import User

from receivers.directory import ReceiverDirectory, get_directory
from receivers.models import Receiver
from receivers.services import receiver_create

pytestmark = pytest.mark.django_db(transaction=True)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def alice(django_user_model: type[User]) -> User:
    return django_user_model.objects.create_user(username="alice")


async def test_hits_do_not_read_and_answers_expire(alice: User) -> None:
    await sync_to_async(receiver_create)(user=alice, name="bob")
    clock = FakeClock()
    directory = ReceiverDirectory(positive_ttl=60, negative_ttl=2, clock=clock)
    assert await directory.account_code("bob") == "receiver:bob"
    assert await directory.account_code("bob") == "receiver:bob"
    assert await directory.account_code("nobody") is None
    assert await directory.account_code("nobody") is None
    assert directory.loads == 2
    # A receiver created elsewhere (no signal reaches this directory) shows up once the
    # short negative answer expires.
    await sync_to_async(receiver_create)(user=alice, name="nobody")
    clock.now += 3
    assert await directory.account_code("nobody") == "receiver:nobody"
    clock.now += 61
    assert await directory.account_code("bob") == "receiver:bob"
    assert directory.loads == 4


async def test_concurrent_misses_share_one_read(alice: User) -> None:
    await sync_to_async(receiver_create)(user=alice, name="bob")
    directory = ReceiverDirectory()
    codes = await asyncio.gather(*(directory.account_code("bob") for _ in range(50)))
    assert set(codes) == {"receiver:bob"}
    assert directory.loads == 1


async def test_invalid_names_never_reach_the_database() -> None:
    directory = ReceiverDirectory()
    assert await directory.account_code("Not.A.Name") is None
    assert await directory.account_code("") is None
    assert directory.loads == 0


async def test_save_and_delete_invalidate_the_process_directory(alice: User) -> None:
    directory = get_directory()
    assert await directory.account_code("bob") is None
    await sync_to_async(receiver_create)(user=alice, name="bob")
    assert await directory.account_code("bob") == "receiver:bob"
    await sync_to_async(Receiver.objects.filter(name="bob").delete)()
    assert await directory.account_code("bob") is None


def test_the_map_is_bounded() -> None:
    directory = ReceiverDirectory(max_entries=3)
    for i in range(10):
        directory.remember(f"n{i}", None)
    assert sum(directory.peek(f"n{i}")[0] for i in range(10)) <= 3
    assert directory.peek("n9") == (True, None)
