"""Architecture guards: the crypto library stays pure and servers never import it."""

from __future__ import annotations

import ast
import json
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[3]
LIB = ROOT / "libs" / "crypto" / "src" / "conclave_crypto"
FORBIDDEN_IN_LIB = {"grpc", "socket", "asyncio", "http", "urllib", "nats", "asyncpg", "conclave"}
ALLOWED_THIRD_PARTY = {"cryptography", "conclave_crypto"}


def _imports(path: pathlib.Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_library_imports_no_network_or_server_code() -> None:
    """conclave_crypto imports only the stdlib and cryptography: no network, no servers."""
    for path in LIB.glob("*.py"):
        imported = _imports(path)
        assert not imported & FORBIDDEN_IN_LIB, path
        third_party = imported - set(sys.stdlib_module_names)
        assert third_party <= ALLOWED_THIRD_PARTY, (path, third_party)


def test_no_service_imports_the_crypto_library() -> None:
    """No server code (services/, libs/kit) imports conclave_crypto."""
    offenders = [
        p
        for base in (ROOT / "services", ROOT / "libs" / "kit")
        if base.exists()
        for p in base.rglob("*.py")
        if "conclave_crypto" in _imports(p)
    ]
    assert offenders == []


def test_bench_prints_one_json_object() -> None:
    """`python -m conclave_crypto.bench` prints a single JSON object with every metric."""
    out = subprocess.run(
        [sys.executable, "-m", "conclave_crypto.bench"],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
        env={"CONCLAVE_BENCH_SECONDS": "0.05", "PATH": "/usr/bin:/bin"},
    ).stdout
    data = json.loads(out)
    for key in (
        "pairwise_encrypt_decrypt_msgs_per_s",
        "group_sender_key_encrypt_msgs_per_s",
        "pqxdh_handshakes_per_s",
        "attachment_encrypt_mb_per_s",
        "raw_aes_256_gcm_mb_per_s",
    ):
        assert data[key] > 0
