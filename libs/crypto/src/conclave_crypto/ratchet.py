"""Double Ratchet (Signal's Double Ratchet specification, rev. 4; docs/protocol.md §5).

Without header encryption. Functions follow the spec's §5.2 recommendations:

* ``KDF_RK(rk, dh_out) = HKDF-SHA-256(ikm=dh_out, salt=rk, info=INFO_RATCHET_ROOT, L=64)``
  split into (new root key, chain key);
* ``KDF_CK(ck) = (HMAC-SHA-256(ck, 0x01), HMAC-SHA-256(ck, 0x02))`` = (message key, next ck);
* ``ENCRYPT(mk, pt, ad)``: HKDF(mk, info=INFO_MESSAGE_KEYS, L=44) -> AES-256-GCM key || nonce.

Limits (as libsignal): at most :data:`MAX_SKIPPED_KEYS` skipped message keys are stored
(oldest evicted first), and a header may not jump more than :data:`MAX_FORWARD_JUMP` messages
ahead in a chain. Decryption is transactional: state changes are applied only after the AEAD
tag verified, so forged, replayed or tampered messages leave the state untouched.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from conclave_crypto.encoding import Reader, u32
from conclave_crypto.errors import DecryptionError
from conclave_crypto.primitives import (
    INFO_MESSAGE_KEYS,
    INFO_RATCHET_ROOT,
    chain_step,
    hkdf,
    open_sealed,
    seal,
    x25519,
    x25519_public,
)

MAX_SKIPPED_KEYS = 2000
MAX_FORWARD_JUMP = 25_000
HEADER_LEN = 40

JSON = dict[str, Any]


@dataclass(frozen=True)
class Header:
    """Ratchet header: ``dh(32) || pn(u32) || n(u32)``."""

    dh: bytes
    pn: int
    n: int

    def encode(self) -> bytes:
        """40-byte encoding."""
        return self.dh + u32(self.pn) + u32(self.n)

    @classmethod
    def read(cls, r: Reader) -> Header:
        """Parse from a reader (DecryptionError if truncated)."""
        return cls(r.take(32), r.u32(), r.u32())


def kdf_rk(rk: bytes, dh_out: bytes) -> tuple[bytes, bytes]:
    """Root-key KDF: returns (new root key, new chain key)."""
    out = hkdf(dh_out, rk, INFO_RATCHET_ROOT, 64)
    return out[:32], out[32:]


class DoubleRatchet:
    """State of one pairwise Double Ratchet session."""

    def __init__(
        self,
        dhs: X25519PrivateKey,
        dhr: bytes | None,
        rk: bytes,
        cks: bytes | None,
        ckr: bytes | None,
        ns: int = 0,
        nr: int = 0,
        pn: int = 0,
        skipped: OrderedDict[tuple[bytes, int], bytes] | None = None,
    ) -> None:
        self.dhs = dhs
        self.dhr = dhr
        self.rk = rk
        self.cks = cks
        self.ckr = ckr
        self.ns = ns
        self.nr = nr
        self.pn = pn
        self.skipped: OrderedDict[tuple[bytes, int], bytes] = skipped or OrderedDict()

    @classmethod
    def init_alice(cls, sk: bytes, bob_ratchet_key: bytes) -> DoubleRatchet:
        """RatchetInitAlice: Bob's signed pre-key is his first ratchet public key."""
        dhs = X25519PrivateKey.generate()
        rk, cks = kdf_rk(sk, x25519(dhs, bob_ratchet_key))
        return cls(dhs, bob_ratchet_key, rk, cks, None)

    @classmethod
    def init_bob(cls, sk: bytes, spk: X25519PrivateKey) -> DoubleRatchet:
        """RatchetInitBob."""
        return cls(spk, None, sk, None, None)

    @property
    def can_send(self) -> bool:
        """Whether a sending chain exists."""
        return self.cks is not None

    def encrypt(self, plaintext: bytes, ad: bytes) -> tuple[Header, bytes]:
        """RatchetEncrypt.

        Raises:
            RuntimeError: if no sending chain exists yet (responder before first receive).
        """
        if self.cks is None:
            raise RuntimeError("no sending chain")
        mk, self.cks = chain_step(self.cks)
        header = Header(x25519_public(self.dhs), self.pn, self.ns)
        self.ns += 1
        return header, seal(mk, INFO_MESSAGE_KEYS, plaintext, ad + header.encode())

    def decrypt(self, header: Header, ciphertext: bytes, ad: bytes) -> bytes:
        """RatchetDecrypt, transactional.

        Raises:
            DecryptionError: on any failure (forgery, replay, bound exceeded, bad key).
        """
        full_ad = ad + header.encode()
        key = (header.dh, header.n)
        mk = self.skipped.get(key)
        if mk is not None:
            pt = open_sealed(mk, INFO_MESSAGE_KEYS, ciphertext, full_ad)
            del self.skipped[key]
            return pt

        # Work on local copies; commit only after the AEAD tag verified.
        new_skipped: deque[tuple[tuple[bytes, int], bytes]] = deque(maxlen=MAX_SKIPPED_KEYS)
        dhs, dhr, rk, cks, ckr = self.dhs, self.dhr, self.rk, self.cks, self.ckr
        ns, nr, pn = self.ns, self.nr, self.pn

        if header.dh != dhr:
            if ckr is not None and dhr is not None:
                if header.pn > nr + MAX_FORWARD_JUMP:
                    raise DecryptionError
                while nr < header.pn:
                    seed, ckr = chain_step(ckr)
                    new_skipped.append(((dhr, nr), seed))
                    nr += 1
            pn, ns, nr = ns, 0, 0
            dhr = header.dh
            rk, ckr = kdf_rk(rk, x25519(dhs, dhr))
            dhs = X25519PrivateKey.generate()
            rk, cks = kdf_rk(rk, x25519(dhs, dhr))
        if ckr is None or header.n < nr or header.n > nr + MAX_FORWARD_JUMP:
            # header.n < nr and not in skipped: a replay, or a key we already evicted.
            raise DecryptionError
        while nr < header.n:
            seed, ckr = chain_step(ckr)
            new_skipped.append(((dhr, nr), seed))
            nr += 1
        mk, ckr = chain_step(ckr)
        nr += 1
        pt = open_sealed(mk, INFO_MESSAGE_KEYS, ciphertext, full_ad)

        self.dhs, self.dhr, self.rk, self.cks, self.ckr = dhs, dhr, rk, cks, ckr
        self.ns, self.nr, self.pn = ns, nr, pn
        for k, v in new_skipped:
            self.skipped[k] = v
        while len(self.skipped) > MAX_SKIPPED_KEYS:
            self.skipped.popitem(last=False)
        return pt

    def to_json(self) -> JSON:
        """Serialise for local storage."""
        return {
            "dhs": self.dhs.private_bytes_raw().hex(),
            "dhr": self.dhr.hex() if self.dhr is not None else None,
            "rk": self.rk.hex(),
            "cks": self.cks.hex() if self.cks is not None else None,
            "ckr": self.ckr.hex() if self.ckr is not None else None,
            "ns": self.ns,
            "nr": self.nr,
            "pn": self.pn,
            "skipped": [[k.hex(), n, mk.hex()] for (k, n), mk in self.skipped.items()],
        }

    @classmethod
    def from_json(cls, d: JSON) -> DoubleRatchet:
        """Inverse of :meth:`to_json`."""

        def opt(v: str | None) -> bytes | None:
            return bytes.fromhex(v) if v is not None else None

        skipped: OrderedDict[tuple[bytes, int], bytes] = OrderedDict(
            ((bytes.fromhex(k), int(n)), bytes.fromhex(mk)) for k, n, mk in d["skipped"]
        )
        return cls(
            X25519PrivateKey.from_private_bytes(bytes.fromhex(d["dhs"])),
            opt(d["dhr"]),
            bytes.fromhex(d["rk"]),
            opt(d["cks"]),
            opt(d["ckr"]),
            int(d["ns"]),
            int(d["nr"]),
            int(d["pn"]),
            skipped,
        )
