"""Multi-device fan-out and sender-key groups."""

from __future__ import annotations

import random

import pytest
from conclave_crypto.device import Device
from conclave_crypto.errors import DecryptionError, MissingSessionError
from conclave_crypto.manager import DeviceAddress, SessionManager
from conclave_crypto.ratchet import MAX_FORWARD_JUMP
from conclave_crypto.sender_keys import GroupSessions
from conclave_crypto.testing import bundle_of, make_device
from hypothesis import given, settings
from hypothesis import strategies as st


def _fan_out(
    sender: SessionManager, user: str, devices: dict[DeviceAddress, SessionManager], pt: bytes
) -> None:
    """Encrypt for a user with fetch-and-retry on missing sessions, then deliver to all."""
    while True:
        try:
            out = sender.encrypt_for_user(user, pt)
            break
        except MissingSessionError as e:
            for a in e.missing:
                sender.process_bundle(bundle_of(devices[DeviceAddress(*a)]))
    assert set(out) == {a for a in devices if a != sender.address}
    for a, data in out.items():
        assert devices[a].decrypt(sender.address, data) == pt


def test_multi_device_fan_out_includes_own_devices() -> None:
    """A message to Bob is encrypted for all Bob's devices and Alice's other devices."""
    a1, a2 = make_device("alice", 1), make_device("alice", 2)
    b1, b2, b3 = make_device("bob", 1), make_device("bob", 2), make_device("bob", 3)
    everyone = {m.address: m for m in (a1, a2, b1, b2, b3)}
    a1.update_devices("alice", ["1", "2"])
    a1.update_devices("bob", ["1", "2", "3"])
    _fan_out(a1, "bob", everyone, b"hi bob")
    _fan_out(a1, "bob", everyone, b"second")
    # Bob's device 2 answers: to Alice's devices and Bob's own others.
    b2.update_devices("bob", ["1", "2", "3"])
    b2.update_devices("alice", ["1", "2"])
    _fan_out(b2, "alice", everyone, b"hi alice")


def test_device_added_and_removed_without_losing_messages() -> None:
    """A new device gets a session on the next send; a removed one gets nothing new."""
    a1 = make_device("alice", 1)
    b1, b2 = make_device("bob", 1), make_device("bob", 2)
    everyone = {m.address: m for m in (a1, b1, b2)}
    a1.update_devices("bob", ["1", "2"])
    _fan_out(a1, "bob", everyone, b"one")
    in_flight = a1.encrypt_for_user("bob", b"in flight")
    # Bob adds device 3 and removes device 2; the server reports a stale device list.
    b3 = make_device("bob", 3)
    everyone[b3.address] = b3
    missing = a1.update_devices("bob", ["1", "3"])
    assert missing == [DeviceAddress("bob", "3")]
    del everyone[b2.address]
    _fan_out(a1, "bob", everyone, b"two")
    assert DeviceAddress("bob", "2") not in a1.records
    # The message encrypted before the change still decrypts on every device it targeted.
    assert b1.decrypt(a1.address, in_flight[b1.address]) == b"in flight"
    assert b2.decrypt(a1.address, in_flight[b2.address]) == b"in flight"


def test_reinstalled_device_new_session_keeps_old_in_flight() -> None:
    """When the peer starts a new session, messages of the archived one still decrypt."""
    alice, bob = make_device("alice", 1), make_device("bob", 1)
    alice.process_bundle(bundle_of(bob))
    bob.decrypt(alice.address, alice.encrypt(bob.address, b"x"))
    alice.decrypt(bob.address, bob.encrypt(alice.address, b"y"))
    late = bob.encrypt(alice.address, b"late")
    bob.process_bundle(bundle_of(alice))  # Bob re-initiates (e.g. lost state on his side)
    assert alice.decrypt(bob.address, bob.encrypt(alice.address, b"new")) == b"new"
    assert alice.decrypt(bob.address, late) == b"late"


class Member:
    """One group member device: pairwise sessions + sender keys."""

    def __init__(self, name: str) -> None:
        self.sm = make_device(name, 1)
        self.gs = GroupSessions()

    @property
    def addr(self) -> DeviceAddress:
        return self.sm.address


def _distribute(sender: Member, members: list[Member], dist: bytes) -> None:
    for m in members:
        if m is sender:
            continue
        if not sender.sm.has_session(m.addr):
            sender.sm.process_bundle(bundle_of(m.sm))
        wire = sender.sm.encrypt(m.addr, dist)
        m.gs.process_distribution(sender.addr, m.sm.decrypt(sender.addr, wire))


def _group(n: int) -> list[Member]:
    members = [Member(f"user{i}") for i in range(n)]
    for m in members:
        _distribute(m, members, m.gs.distribution("g1"))
    return members


def test_group_message_encrypted_once_decrypts_for_all() -> None:
    """One SenderKeyMessage, of the same size whatever the group size, decrypts for all."""
    members = _group(5)
    sizes = set()
    for sender in members:
        ct = sender.gs.encrypt("g1", b"hello group")
        sizes.add(len(ct))
        for m in members:
            if m is not sender:
                assert m.gs.decrypt(sender.addr, ct) == ("g1", b"hello group")
    assert len(sizes) == 1


def test_removed_member_cannot_decrypt_after_rotation() -> None:
    """After removal every remaining member rotates; the removed one cannot read new messages."""
    members = _group(4)
    removed = members.pop()
    before = members[0].gs.encrypt("g1", b"before")
    assert removed.gs.decrypt(members[0].addr, before) == ("g1", b"before")
    for m in members:
        m.gs.forget_member("g1", removed.addr)
        _distribute(m, members, m.gs.rotate("g1"))
    for sender in members:
        ct = sender.gs.encrypt("g1", b"after")
        with pytest.raises(DecryptionError):
            removed.gs.decrypt(sender.addr, ct)
        for m in members:
            if m is not sender:
                assert m.gs.decrypt(sender.addr, ct) == ("g1", b"after")
    # And the remaining members no longer accept the removed member's chain.
    with pytest.raises(DecryptionError):
        members[0].gs.decrypt(removed.addr, removed.gs.encrypt("g1", b"spoof"))


def test_new_member_cannot_read_old_messages() -> None:
    """A member added later receives the current chain and cannot decrypt older messages."""
    members = _group(3)
    old = members[0].gs.encrypt("g1", b"old secret")
    newcomer = Member("late")
    members.append(newcomer)
    _distribute(members[0], [newcomer], members[0].gs.distribution("g1"))
    with pytest.raises(DecryptionError):
        newcomer.gs.decrypt(members[0].addr, old)
    new = members[0].gs.encrypt("g1", b"welcome")
    assert newcomer.gs.decrypt(members[0].addr, new) == ("g1", b"welcome")


def test_group_message_tampering_and_replay_rejected() -> None:
    """Flipped bits, a wrong claimed sender and replays all give the opaque error."""
    a, b, c = _group(3)
    ct = a.gs.encrypt("g1", b"msg")
    for pos in range(0, len(ct), 7):
        bad = bytearray(ct)
        bad[pos] ^= 0x04
        with pytest.raises(DecryptionError):
            b.gs.decrypt(a.addr, bytes(bad))
    with pytest.raises(DecryptionError):
        b.gs.decrypt(c.addr, ct)  # server relabels the sender
    assert b.gs.decrypt(a.addr, ct) == ("g1", b"msg")
    with pytest.raises(DecryptionError):
        b.gs.decrypt(a.addr, ct)


def test_replayed_distribution_does_not_rewind_chain() -> None:
    """Re-processing an old distribution cannot re-enable used message keys."""
    a, b = _group(2)
    old_dist = a.gs.distribution("g1")
    ct = a.gs.encrypt("g1", b"once")
    assert b.gs.decrypt(a.addr, ct) == ("g1", b"once")
    b.gs.process_distribution(a.addr, old_dist)
    with pytest.raises(DecryptionError):
        b.gs.decrypt(a.addr, ct)


def test_group_forward_jump_bound() -> None:
    """A group message too far ahead is rejected without storing skipped keys."""
    a, b = _group(2)
    chain = a.gs.own["g1"]
    for _ in range(MAX_FORWARD_JUMP + 1):
        a.gs.encrypt("g1", b"")
    far = a.gs.encrypt("g1", b"far")
    with pytest.raises(DecryptionError):
        b.gs.decrypt(a.addr, far)
    rc = b.gs.received[("g1", a.addr)][0]
    assert rc.iteration == 0 and not rc.skipped and chain.iteration == MAX_FORWARD_JUMP + 2


@settings(max_examples=30, deadline=None)
@given(st.lists(st.sampled_from(["send", "deliver", "drop", "dup"]), max_size=50), st.randoms())
def test_group_random_delivery_decrypts_exactly_once(ops: list[str], rnd: random.Random) -> None:
    """Random reorder/drop/duplicate of group messages: each decrypts exactly once."""
    a, b = _group(2)
    wire: list[tuple[bytes, bytes]] = []
    seen: set[bytes] = set()
    for i, op in enumerate(ops):
        if op == "send":
            pt = str(i).encode()
            wire.append((a.gs.encrypt("g1", pt), pt))
        elif wire and op == "deliver":
            ct, pt = wire.pop(rnd.randrange(len(wire)))
            if pt in seen:
                with pytest.raises(DecryptionError):
                    b.gs.decrypt(a.addr, ct)
            else:
                assert b.gs.decrypt(a.addr, ct) == ("g1", pt)
                seen.add(pt)
        elif wire and op == "drop":
            wire.pop(rnd.randrange(len(wire)))
        elif wire and op == "dup":
            wire.append(wire[rnd.randrange(len(wire))])
    assert b.gs.decrypt(a.addr, a.gs.encrypt("g1", b"end")) == ("g1", b"end")


def test_device_helpers_distribute_and_remove_member() -> None:
    """Device.distribute_sender_key / remove_group_member implement the removal protocol."""
    devs = {name: Device.create(name, "d1") for name in ("ann", "ben", "cat")}
    addrs = {n: d.sessions.address for n, d in devs.items()}
    for a in devs.values():
        for b in devs.values():
            if a is not b and not a.sessions.has_session(b.sessions.address):
                a.sessions.process_bundle(bundle_of(b.sessions))
    for n, d in devs.items():
        with pytest.raises(MissingSessionError):
            d.distribute_sender_key("g", [DeviceAddress("nobody", "x")])
        for to, wire in d.distribute_sender_key("g", addrs.values()).items():
            receiver = devs[to.user_id]
            assert receiver.receive_sender_key(addrs[n], wire) == "g"
    ct = devs["ann"].groups.encrypt("g", b"all three")
    assert devs["cat"].groups.decrypt(addrs["ann"], ct) == ("g", b"all three")
    for n in ("ann", "ben"):
        for to, wire in devs[n].remove_group_member("g", "cat", addrs.values()).items():
            assert to.user_id != "cat"
            devs[to.user_id].receive_sender_key(addrs[n], wire)
    for n in ("ann", "ben"):
        ct = devs[n].groups.encrypt("g", b"without cat")
        other = "ben" if n == "ann" else "ann"
        assert devs[other].groups.decrypt(addrs[n], ct) == ("g", b"without cat")
        with pytest.raises(DecryptionError):
            devs["cat"].groups.decrypt(addrs[n], ct)
    with pytest.raises(DecryptionError):
        devs["ann"].groups.decrypt(addrs["cat"], devs["cat"].groups.encrypt("g", b"still here?"))


@settings(max_examples=15, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(["send", "deliver", "add", "remove"]), st.integers(0, 99)),
        max_size=25,
    )
)
def test_multi_device_churn_every_current_device_gets_every_message(
    ops: list[tuple[str, int]],
) -> None:
    """Random device churn: every listed device decrypts each message sent to it, once."""
    alice = make_device("alice", "a1")
    bob_devs: dict[str, SessionManager] = {"b1": make_device("bob", "b1")}
    next_id = 2
    alice.update_devices("bob", list(bob_devs))
    queue: list[tuple[DeviceAddress, bytes, bytes]] = []
    got: dict[DeviceAddress, list[bytes]] = {}
    expected: dict[DeviceAddress, list[bytes]] = {}
    for op, arg in ops:
        if op == "add" and len(bob_devs) < 4:
            dev_id = f"b{next_id}"
            next_id += 1
            bob_devs[dev_id] = make_device("bob", dev_id)
        elif op == "remove" and len(bob_devs) > 1:
            del bob_devs[sorted(bob_devs)[arg % len(bob_devs)]]
        elif op == "send":
            pt = f"m{arg}-{len(queue)}".encode()
            for a in alice.update_devices("bob", list(bob_devs)):
                alice.process_bundle(bundle_of(bob_devs[a.device_id]))
            for a, data in alice.encrypt_for_user("bob", pt).items():
                queue.append((a, data, pt))
                expected.setdefault(a, []).append(pt)
        elif op == "deliver" and queue:
            a, data, pt = queue.pop(arg % len(queue))
            if a.device_id in bob_devs:
                got.setdefault(a, []).append(bob_devs[a.device_id].decrypt(alice.address, data))
    for a, data, _ in queue:  # flush everything still in flight
        if a.device_id in bob_devs:
            got.setdefault(a, []).append(bob_devs[a.device_id].decrypt(alice.address, data))
    for a, pts in expected.items():
        if a.device_id in bob_devs:
            assert sorted(got.get(a, [])) == sorted(pts)
    alice.update_devices("bob", list(bob_devs))  # the server's latest list
    assert set(alice.records) <= {DeviceAddress("bob", d) for d in bob_devs}
