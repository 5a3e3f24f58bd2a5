"""Published test vectors for the primitives conclave_crypto builds on.

Sources: RFC 7748 §5.2 and §6.1 (X25519), RFC 5869 Appendix A (HKDF-SHA-256), NIST CAVP
gcmEncryptExtIV256 (AES-256-GCM), RFC 8439 §2.8.2 (ChaCha20-Poly1305). When the
``cryptography_vectors`` package is installed the full NIST GCM and ChaCha20-Poly1305 files
are replayed too; when ``WYCHEPROOF_ROOT`` points at a Wycheproof checkout its AES-GCM and
ChaCha20-Poly1305 JSON files are replayed.
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any

import pytest
from conclave_crypto.primitives import hkdf, x25519, x25519_public
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

RFC7748_SCALAR_MULT = [
    (
        "a546e36bf0527c9d3b16154b82465edd62144c0ac1fc5a18506a2244ba449ac4",
        "e6db6867583030db3594c1a424b15f7c726624ec26b3353b10a903a6d0ab1c4c",
        "c3da55379de9c6908e94ea4df28d084f32eccf03491c71f754b4075577a28552",
    ),
    (
        "4b66e9d4d1b4673c5ad22691957d6af5c11b6421e0ea01d42ca4169e7918ba0d",
        "e5210f12786811d3f4b7959d0538ae2c31dbe7106fc03c3efc4cd549c715a493",
        "95cbde9476e8907d7aade45cb4b873f88b595a68799fa152e6f8f7647aac7957",
    ),
]


@pytest.mark.parametrize(("scalar", "u", "out"), RFC7748_SCALAR_MULT)
def test_x25519_rfc7748_5_2(scalar: str, u: str, out: str) -> None:
    """X25519 scalar multiplication matches RFC 7748 §5.2."""
    k = X25519PrivateKey.from_private_bytes(bytes.fromhex(scalar))
    assert x25519(k, bytes.fromhex(u)).hex() == out


def test_x25519_rfc7748_5_2_iterated() -> None:
    """X25519 iterated 1 and 1,000 times matches RFC 7748 §5.2."""
    k = u = bytes.fromhex("09" + "00" * 31)
    results = {}
    for i in range(1, 1001):
        out = X25519PrivateKey.from_private_bytes(k).exchange(X25519PublicKey.from_public_bytes(u))
        k, u = out, k
        results[i] = k.hex()
    assert results[1] == "422c8e7a6227d7bca1350b3e2bb7279f7897b87bb6854b783c60e80311ae3079"
    assert results[1000] == "684cf59ba83309552800ef566f2f4d3c1c3887c49360e3875f2eb94d99532c51"


def test_x25519_rfc7748_6_1() -> None:
    """X25519 Diffie-Hellman between Alice and Bob matches RFC 7748 §6.1."""
    a = X25519PrivateKey.from_private_bytes(
        bytes.fromhex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
    )
    b = X25519PrivateKey.from_private_bytes(
        bytes.fromhex("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb")
    )
    assert (
        x25519_public(a).hex() == "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
    )
    assert (
        x25519_public(b).hex() == "de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f"
    )
    shared = "4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742"
    assert x25519(a, x25519_public(b)).hex() == shared
    assert x25519(b, x25519_public(a)).hex() == shared


RFC5869 = [
    (
        "0b" * 22,
        "000102030405060708090a0b0c",
        "f0f1f2f3f4f5f6f7f8f9",
        42,
        "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865",
    ),
    (
        bytes(range(0x00, 0x50)).hex(),
        bytes(range(0x60, 0xB0)).hex(),
        bytes(range(0xB0, 0x100)).hex(),
        82,
        "b11e398dc80327a1c8e7f78c596a49344f012eda2d4efad8a050cc4c19afa97c"
        "59045a99cac7827271cb41c65e590e09da3275600c2f09b8367793a9aca3db71"
        "cc30c58179ec3e87c14c01d5c1f3434f1d87",
    ),
    (
        "0b" * 22,
        "",
        "",
        42,
        "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d9d201395faa4b61a96c8",
    ),
]


@pytest.mark.parametrize(("ikm", "salt", "info", "length", "okm"), RFC5869)
def test_hkdf_rfc5869(ikm: str, salt: str, info: str, length: int, okm: str) -> None:
    """Our HKDF-SHA-256 matches RFC 5869 Appendix A test cases 1-3."""
    assert hkdf(bytes.fromhex(ikm), bytes.fromhex(salt), bytes.fromhex(info), length).hex() == okm


# NIST CAVP gcmEncryptExtIV256.rsp, [PTlen = 128][AADlen = 128][Taglen = 128] Count = 0 and
# [PTlen = 408][AADlen = 160] Count = 0 are replayed from cryptography_vectors when present;
# the McGrew-Viega GCM spec Test Case 16 (AES-256, 60-byte PT, 20-byte AAD) is embedded here.
GCM_TC16 = {
    "key": "feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308",
    "iv": "cafebabefacedbaddecaf888",
    "pt": "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72"
    "1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39",
    "aad": "feedfacedeadbeeffeedfacedeadbeefabaddad2",
    "ct": "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa"
    "8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662",
    "tag": "76fc6ece0f4e1768cddf8853bb2d551b",
}


def test_aes256_gcm_spec_test_case_16() -> None:
    """AES-256-GCM matches the GCM specification's Test Case 16, and rejects a flipped tag."""
    v = {k: bytes.fromhex(x) for k, x in GCM_TC16.items()}
    aead = AESGCM(v["key"])
    assert aead.encrypt(v["iv"], v["pt"], v["aad"]) == v["ct"] + v["tag"]
    bad = v["ct"] + bytes([v["tag"][0] ^ 1]) + v["tag"][1:]
    with pytest.raises(InvalidTag):
        aead.decrypt(v["iv"], bad, v["aad"])


RFC8439_282 = {
    "key": "808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f",
    "nonce": "070000004041424344454647",
    "aad": "50515253c0c1c2c3c4c5c6c7",
    "pt": "4c616469657320616e642047656e746c656d656e206f662074686520636c6173"
    "73206f66202739393a204966204920636f756c64206f6666657220796f75206f"
    "6e6c79206f6e652074697020666f7220746865206675747572652c2073756e73"
    "637265656e20776f756c642062652069742e",
    "ct": "d31a8d34648e60db7b86afbc53ef7ec2a4aded51296e08fea9e2b5a736ee62d6"
    "3dbea45e8ca9671282fafb69da92728b1a71de0a9e060b2905d6a5b67ecd3b36"
    "92ddbd7f2d778b8c9803aee328091b58fab324e4fad675945585808b4831d7bc"
    "3ff4def08e4b7a9de576d26586cec64b6116",
    "tag": "1ae10b594f09e26a7e902ecbd0600691",
}


def test_chacha20_poly1305_rfc8439() -> None:
    """ChaCha20-Poly1305 matches RFC 8439 §2.8.2."""
    v = {k: bytes.fromhex(x) for k, x in RFC8439_282.items()}
    aead = ChaCha20Poly1305(v["key"])
    assert aead.encrypt(v["nonce"], v["pt"], v["aad"]) == v["ct"] + v["tag"]
    assert aead.decrypt(v["nonce"], v["ct"] + v["tag"], v["aad"]) == v["pt"]


def _parse_kv_blocks(path: pathlib.Path) -> list[dict[str, str]]:
    blocks: list[dict[str, str]] = []
    cur: dict[str, str] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", "[")):
            if cur:
                blocks.append(cur)
                cur = {}
            continue
        if "=" in line:
            k, _, val = line.partition("=")
            cur[k.strip()] = val.strip()
        elif line == "FAIL":
            cur["FAIL"] = "1"
    if cur:
        blocks.append(cur)
    return blocks


def _field(value: str) -> bytes:
    if value.startswith('"') and value.endswith('"'):
        return value[1:-1].encode()
    return bytes.fromhex(value)


def _vectors_root() -> pathlib.Path:
    mod = pytest.importorskip("cryptography_vectors")
    return pathlib.Path(str(mod.__file__)).parent


def test_nist_gcm_256_decrypt_file() -> None:
    """AES-256-GCM accepts/rejects every 96-bit-IV, 128-bit-tag case of NIST gcmDecrypt256."""
    path = _vectors_root() / "ciphers/AES/GCM/gcmDecrypt256.rsp"
    checked = 0
    for b in _parse_kv_blocks(path):
        if "Key" not in b or len(b["IV"]) != 24 or len(b["Tag"]) != 32:
            continue
        aead = AESGCM(bytes.fromhex(b["Key"]))
        data = bytes.fromhex(b["CT"]) + bytes.fromhex(b["Tag"])
        if "FAIL" in b:
            with pytest.raises(InvalidTag):
                aead.decrypt(bytes.fromhex(b["IV"]), data, bytes.fromhex(b["AAD"]))
        else:
            pt = aead.decrypt(bytes.fromhex(b["IV"]), data, bytes.fromhex(b["AAD"]))
            assert pt == bytes.fromhex(b["PT"])
        checked += 1
    assert checked > 100


def test_chacha20_poly1305_boringssl_file() -> None:
    """ChaCha20-Poly1305 accepts/rejects every 12-byte-nonce case of the BoringSSL vectors."""
    path = _vectors_root() / "ciphers/ChaCha20Poly1305/boringssl.txt"
    checked = 0
    for b in _parse_kv_blocks(path):
        if "KEY" not in b or len(b["NONCE"]) != 24 or len(b.get("TAG", "")) != 32:
            continue
        aead = ChaCha20Poly1305(_field(b["KEY"]))
        data = _field(b["CT"]) + _field(b["TAG"])
        pt = aead.decrypt(_field(b["NONCE"]), data, _field(b["AD"]))
        assert pt == _field(b["IN"])
        checked += 1
    assert checked > 10


def _wycheproof(name: str) -> dict[str, Any]:
    root = os.environ.get("WYCHEPROOF_ROOT")
    if not root:
        pytest.skip("WYCHEPROOF_ROOT not set")
    for sub in ("testvectors_v1", "testvectors"):
        p = pathlib.Path(root) / sub / name
        if p.exists():
            data: dict[str, Any] = json.loads(p.read_text())
            return data
    pytest.skip(f"{name} not found under WYCHEPROOF_ROOT")


@pytest.mark.parametrize(
    ("name", "cls"),
    [("aes_gcm_test.json", AESGCM), ("chacha20_poly1305_test.json", ChaCha20Poly1305)],
)
def test_wycheproof_aead(name: str, cls: type[AESGCM] | type[ChaCha20Poly1305]) -> None:
    """Wycheproof AEAD vectors: valid cases decrypt, invalid ones are rejected."""
    data = _wycheproof(name)
    for group in data["testGroups"]:
        if group["ivSize"] != 96 or group["tagSize"] != 128 or group["keySize"] not in (256,):
            continue
        for t in group["tests"]:
            aead = cls(bytes.fromhex(t["key"]))
            ct = bytes.fromhex(t["ct"]) + bytes.fromhex(t["tag"])
            iv, aad = bytes.fromhex(t["iv"]), bytes.fromhex(t["aad"])
            if t["result"] == "invalid":
                with pytest.raises(InvalidTag):
                    aead.decrypt(iv, ct, aad)
            else:
                assert aead.decrypt(iv, ct, aad) == bytes.fromhex(t["msg"])
