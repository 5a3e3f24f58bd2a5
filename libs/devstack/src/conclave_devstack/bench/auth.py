"""Auth benchmark: login latency and throughput on the real stack, token verification cost.

Runs ``conclave-run`` on free ports in a temporary directory with the production Argon2id
parameters, registers accounts, then measures:

* ``login_ms_p50`` / ``login_ms_p95``: one login at a time (password + TOTP), end to end;
* ``logins_per_s``: logins with ``--concurrency`` clients in parallel;
* ``token_verify_us``: Ed25519 JWT verification alone (what every RPC pays);
* ``auth_gate_us``: the kit's whole per-RPC auth step (metadata parse, verify, revocation,
  mode lookup).

Prints one JSON object. Each login needs a fresh TOTP code, and each code works once, so
every login uses its own account.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import pyotp
from conclave.auth.v1 import auth_pb2 as A
from conclave.auth.v1 import auth_pb2_grpc
from conclave_kit.auth import AuthGate
from conclave_kit.tokens import TokenSigner, TokenVerifier

from conclave_devstack.harness import launcher_env, private_data_dir, start_stack

PASSWORD = "benchmark passphrase for conclave 2026"  # noqa: S105 - throwaway bench accounts


def _login(stub: auth_pb2_grpc.AuthServiceStub, name: str, secret: str) -> float:
    start = time.perf_counter()
    stub.Login(
        A.LoginRequest(
            username=name,
            password=PASSWORD,
            totp_code=pyotp.TOTP(secret).now(),
            device=A.DeviceInfo(name="bench", platform=A.PLATFORM_CLI),
        ),
        timeout=30,
    )
    return (time.perf_counter() - start) * 1000


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def token_costs(iterations: int = 5000) -> tuple[float, float]:
    """Microseconds per token verification and per full auth-gate check."""
    signer = TokenSigner.generate("bench")
    verifier = TokenVerifier({"bench": signer.public_key})
    token = signer.mint(account_id="a", device_id="d", session_id="s")
    start = time.perf_counter()
    for _ in range(iterations):
        verifier.verify(token)
    verify_us = (time.perf_counter() - start) / iterations * 1e6
    gate = AuthGate(verifier, is_revoked=lambda claims: False)
    metadata = (("authorization", f"Bearer {token}"),)
    method = "/conclave.keys.v1.KeyService/GetPrekeyCounts"
    start = time.perf_counter()
    for _ in range(iterations):
        gate.authenticate(method, metadata)
    gate_us = (time.perf_counter() - start) / iterations * 1e6
    return round(verify_us, 1), round(gate_us, 1)


def main() -> None:
    """Runs the benchmark and prints one JSON object."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sequential", type=int, default=30, help="logins measured one by one")
    parser.add_argument("--parallel", type=int, default=60, help="logins in the parallel phase")
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    base = private_data_dir()
    env = launcher_env(
        {
            "CONCLAVE_AUTH_SOURCE_LOGINS_PER_MINUTE": "100000",
            "CONCLAVE_AUTH_SOURCE_REGISTRATIONS_PER_HOUR": "100000",
            "CONCLAVE_LOG_LEVEL": "warning",
        }
    )
    stack = start_stack(base / "data", env)
    try:
        with grpc.insecure_channel(stack.grpc["auth"]) as channel:
            stub = auth_pb2_grpc.AuthServiceStub(channel)
            accounts: list[tuple[str, str]] = []
            total = args.sequential + args.parallel
            suffix = os.urandom(3).hex()

            def register(i: int) -> tuple[str, str]:
                reply = stub.Register(
                    A.RegisterRequest(username=f"bench{suffix}{i}", password=PASSWORD), timeout=60
                )
                return reply.username, reply.totp_secret

            with ThreadPoolExecutor(args.concurrency) as pool:
                accounts = list(pool.map(register, range(total)))
            sequential = [_login(stub, n, s) for n, s in accounts[: args.sequential]]
            rest = accounts[args.sequential :]
            start = time.perf_counter()
            with ThreadPoolExecutor(args.concurrency) as pool:
                list(pool.map(lambda acc: _login(stub, *acc), rest))
            elapsed = time.perf_counter() - start
        verify_us, gate_us = token_costs()
        print(
            json.dumps(
                {
                    "benchmark": "auth",
                    "machine": f"{os.cpu_count()} cores, {platform.machine()}",
                    "argon2id": "m=64 MiB, t=3, p=4 (service default)",
                    "login_ms_p50": round(statistics.median(sequential), 1),
                    "login_ms_p95": round(_percentile(sequential, 0.95), 1),
                    "logins_per_s": round(len(rest) / elapsed, 1),
                    "concurrency": args.concurrency,
                    "token_verify_us": verify_us,
                    "auth_gate_us": gate_us,
                }
            )
        )
    finally:
        stack.stop()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
