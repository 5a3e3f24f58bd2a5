"""A 100-member group end to end through the real stack, with the client library in-process.

Accounts are registered and logged in the way the CLI does it (AuthClient + pyotp codes,
KeysClient publishing the device keys), each in its own client home; the first member has
two devices. Messages go through :class:`conclave_client.messenger.Client`: sender keys
distributed over pairwise PQXDH sessions, one ciphertext per group message, the real
delivery streams. Every plaintext must arrive exactly once on every device except the
sending one.
"""

from __future__ import annotations

import secrets
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pyotp
import pytest
from conclave_client.auth_client import AuthClient
from conclave_client.credentials import CredentialStore
from conclave_client.endpoints import Endpoints
from conclave_client.messenger import Client

from tests.integration.stack.conftest import RunningStack

pytestmark = pytest.mark.integration

MEMBERS = 100


@dataclass
class Person:
    username: str
    password: str
    totp: pyotp.TOTP
    recovery_codes: list[str]


def device(stack: RunningStack, home: Path, person: Person, first: bool) -> Client:
    """Logs ``person`` in from ``home`` (TOTP first, a recovery code for more devices)."""
    endpoints = Endpoints(dict(stack.grpc))
    if first:
        code = {"totp_code": person.totp.now()}
    else:
        code = {"recovery_code": person.recovery_codes.pop()}
    return Client.login(person.username, person.password, home=home, endpoints=endpoints, **code)


def register(stack: RunningStack, home: Path, index: int) -> tuple[Person, Client]:
    person_name = f"m{index}_{secrets.token_hex(5)}"
    password = f"plum-{secrets.token_urlsafe(12)}-orbit"
    with AuthClient(stack.grpc["auth"], CredentialStore(home)) as auth:
        reg = auth.register(person_name, password)
    person = Person(person_name, password, pyotp.TOTP(reg.totp_secret), list(reg.recovery_codes))
    return person, device(stack, home, person, first=True)


def receive_all(clients: list[Client]) -> list[Counter[str]]:
    """What each device shows until its backlog is drained (every stream in parallel)."""

    def drain(client: Client) -> Counter[str]:
        return Counter(m.text for m in client.listen(until_caught_up=True, timeout=30))

    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(drain, clients))


def test_hundred_member_group_every_plaintext_once_on_every_device(
    stack: RunningStack, tmp_path: Path
) -> None:
    started = time.monotonic()
    with ThreadPoolExecutor(4) as pool:
        people = list(pool.map(lambda i: register(stack, tmp_path / f"u{i}", i), range(MEMBERS)))
    (admin_person, admin), (_, member), (_, other) = people[:3]
    phone = device(stack, tmp_path / "u0-phone", admin_person, first=False)
    devices = [c for _, c in people] + [phone]
    setup = time.monotonic() - started
    try:
        admin.create_group("hundred", [p.username for p, _ in people[1:]])
        assert len(admin.members("hundred")) == MEMBERS
        admin.send_group("hundred", "one")
        admin.send_group("hundred", "two")
        sent = time.monotonic()
        first = receive_all(devices)
        received = time.monotonic()
        assert first[0] == Counter()
        for got in first[1:]:
            assert got == Counter({"one": 1, "two": 1})
        assert not any(c.failures for c in devices)

        # Others learnt the group's name from the sender key and send in turn (not the
        # phone: claims are rate limited per account, and the admin's device used most of
        # the account's burst already).
        member.send_group("#hundred", "from a member")
        other.send_group("#hundred", "from another")
        second = receive_all(devices)
        both = Counter({"from a member": 1, "from another": 1})
        assert second[1] == Counter({"from another": 1})
        assert second[2] == Counter({"from a member": 1})
        for got in second[:1] + second[3:]:
            assert got == both
        # Everything was acknowledged: nothing is delivered twice.
        assert all(got == Counter() for got in receive_all(devices))
        assert not any(c.failures for c in devices)
    finally:
        for c in devices:
            c.close()
    elapsed = time.monotonic() - started
    print(
        f"100-member group: setup {setup:.1f} s, first sends {sent - started - setup:.1f} s, "
        f"first receive {received - sent:.1f} s, total {elapsed:.1f} s"
    )
