"""Auth domain logic: registration, login with mandatory TOTP, sessions, devices, audit.

Invariants this module enforces (each has a test):

* No session exists for an account whose TOTP enrollment is unconfirmed, and a recovery
  code can never stand in for the first TOTP confirmation.
* A TOTP code works once: the highest accepted time step is stored and the update that
  accepts a step is conditional on it being higher (atomic under concurrency).
* Refresh tokens are stored as hashes and rotate on every use; presenting a used one ends
  the whole session ("family"), since either the client or a thief holds a copy.
* Every state change, its audit entry and its NATS event commit in one transaction.
* Wrong username, wrong password and wrong code give one indistinguishable error.
"""

from __future__ import annotations

import base64
import binascii
import json
import unicodedata
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg
from conclave.auth.v1 import auth_pb2
from conclave_kit.database import Connection
from conclave_kit.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
)
from conclave_kit.logs import get_logger
from conclave_kit.outbox import OutboxRelay
from conclave_kit.ratelimit import Limit, RateLimiter
from conclave_kit.revocations import RevocationList
from conclave_kit.runtime import StartupError
from conclave_kit.tokens import Claims, TokenSigner, public_key_bytes
from conclave_kit.validation import parse_uuid
from prometheus_client import Counter

from conclave_auth import credentials as cred
from conclave_auth import store
from conclave_auth.config import AuthConfig
from conclave_auth.sender_certificates import LIFETIME_SECONDS, issue_certificate
from conclave_auth.totp_box import TotpSecretBox, is_sealed

_log = get_logger("conclave.auth.manager")

Clock = Callable[[], datetime]
# (account id, device id) -> (signing key, agreement key) of its published identity, or None.
IdentityLookup = Callable[[str, str], Awaitable[tuple[bytes, bytes] | None]]
TOTP_FAILURES = Counter(
    "conclave_auth_totp_failures_total", "Wrong or replayed TOTP codes (all accounts)."
)
REFRESH_REUSE = Counter(
    "conclave_auth_refresh_token_reuse_total",
    "Used refresh tokens presented again (each revoked a session family).",
)
LOGINS = Counter("conclave_auth_logins_total", "Login attempts by outcome.", ("outcome",))
A = auth_pb2
BAD_CREDENTIALS = "invalid username, password or code"

# Brute-force limits (issue #3): failures per account are bounded to 100 an hour; TOTP
# checks draw from a bucket of 5 refilled one per 6 s (at most ~600 guesses an hour of a
# 10^6 space); anonymous endpoints are also limited per source address. Buckets refill, so
# an attacker cannot lock the owner out for longer than the window after stopping.
LOGIN_FAILURES = Limit("login failures", capacity=100, refill_per_second=100 / 3600)
TOTP_CHECKS = Limit("TOTP checks", capacity=5, refill_per_second=1 / 6)
SOURCE_REFRESHES = Limit("refreshes from this address", capacity=120, refill_per_second=2)


@dataclass(frozen=True)
class DeviceRequest:
    """The device a client logs in from."""

    name: str
    platform: int


@dataclass(frozen=True)
class IssuedSession:
    """A session's credentials as handed to the client."""

    access_token: str
    access_expires_at: datetime
    refresh_token: str
    refresh_expires_at: datetime
    session_id: str
    account_id: str
    device_id: str
    session_expires_at: datetime
    approval_state: int = A.DEVICE_APPROVAL_STATE_APPROVED


def _check_device_name(name: str) -> str:
    cleaned = name.strip()
    if not 1 <= len(cleaned) <= 64 or any(unicodedata.category(c) == "Cc" for c in cleaned):
        raise InvalidArgument(
            "device name must be 1-64 characters without control characters",
            reason="INVALID_DEVICE_NAME",
        )
    return cleaned


def _device_message(row: asyncpg.Record) -> A.Device:
    device = A.Device(
        device_id=str(row["device_id"]),
        name=row["name"],
        platform=row["platform"],
        approval_state=row["approval_state"],
    )
    device.create_time.FromDatetime(row["created_at"])
    device.last_seen_time.FromDatetime(row["last_seen_at"])
    return device


def _check_claim_ids(claims: Claims) -> None:
    """Tokens we sign always carry UUIDs; anything else is not a session of ours."""
    try:
        for value in (claims.account_id, claims.device_id, claims.session_id):
            uuid.UUID(value)
    except ValueError:
        raise Unauthenticated("access token does not name a session") from None


class AuthManager:
    """The auth service's domain operations.

    Args:
        config: Auth settings.
        pool: Pool on the ``auth`` schema.
        relay: Publishes queued events after commit.
        revocations: This process's deny-list (updated immediately on local revocations).
        clock: Current time (injectable so tests move time instead of sleeping).
    """

    def __init__(
        self,
        config: AuthConfig,
        pool: asyncpg.Pool,
        relay: OutboxRelay,
        revocations: RevocationList,
        clock: Clock = lambda: datetime.now(UTC),
    ) -> None:
        self._cfg = config
        self._pool = pool
        self._relay = relay
        self._revocations = revocations
        self._clock = clock
        self._limits = RateLimiter(pool)
        self._totp_box = TotpSecretBox(config.totp_key)
        self._source_logins = Limit(
            "login attempts from this address",
            capacity=config.source_logins_per_minute,
            refill_per_second=config.source_logins_per_minute / 60,
        )
        self._source_registrations = Limit(
            "registrations from this address",
            capacity=config.source_registrations_per_hour,
            refill_per_second=config.source_registrations_per_hour / 3600,
        )
        self._hasher = cred.PasswordHasher(
            config.argon2_memory_kib,
            config.argon2_time_cost,
            config.argon2_parallelism,
            config.argon2_max_concurrent,
        )
        self._signer = TokenSigner(
            config.signing_key_id, config.signing_key, config.access_token_seconds
        )

    # ---------------------------------------------------------------- registration

    async def register(self, username: str, password: str, source: str) -> A.RegisterResponse:
        """Creates an unconfirmed account and returns its TOTP enrollment data."""
        name = cred.normalise_username(username)
        cred.check_password_policy(password, name, self._cfg.password_min_length)
        await self._limits.take(self._source_registrations, source)
        password_hash = await self._hasher.hash(password)
        now = self._clock()
        account_id = str(uuid.uuid4())
        secret = cred.new_totp_secret()
        enrollment = cred.new_opaque_token()
        expires = now + timedelta(seconds=self._cfg.enrollment_seconds)
        codes = cred.new_recovery_codes(account_id)
        async with self._pool.acquire() as conn, conn.transaction():
            await store.delete_expired_enrollment(conn, name, now)
            try:
                await store.insert_account(
                    conn,
                    account_id=account_id,
                    username=name,
                    password_hash=password_hash,
                    totp_secret=self._totp_box.seal(account_id, secret),
                    enrollment_token_hash=cred.token_hash(enrollment),
                    enrollment_expires_at=expires,
                    now=now,
                )
            except asyncpg.UniqueViolationError:
                raise AlreadyExists(f"username {name!r} is taken") from None
            await store.replace_recovery_codes(conn, account_id, codes.hashes)
            await store.insert_audit(
                conn, account_id=account_id, kind=A.AUDIT_EVENT_KIND_REGISTERED, now=now
            )
        self._relay.wake()
        response = A.RegisterResponse(
            account_id=account_id,
            username=name,
            totp_secret=secret,
            otpauth_uri=cred.otpauth_uri(secret, name),
            enrollment_token=enrollment,
            recovery_codes=codes.codes,
        )
        response.enrollment_expire_time.FromDatetime(expires)
        return response

    async def confirm_enrollment(
        self, enrollment_token: str, code: str, device: DeviceRequest, source: str
    ) -> IssuedSession:
        """Confirms TOTP with the enrollment token and opens the first session."""
        cred.require_totp_format(code)
        name = _check_device_name(device.name)
        await self._limits.take(self._source_logins, source)
        now = self._clock()
        async with self._pool.acquire() as conn:
            account = await store.account_by_enrollment(
                conn, cred.token_hash(enrollment_token), now
            )
        if account is None:
            raise Unauthenticated("unknown or expired enrollment token")
        account_id = str(account["account_id"])
        await self._check_totp(account, code, now)
        async with self._pool.acquire() as conn, conn.transaction():
            issued = await self._open_session(
                conn, account_id, None, name, device.platform, now, recovery=False
            )
            await self._audit_session(
                conn, issued, A.AUDIT_EVENT_KIND_TOTP_ENROLLMENT_CONFIRMED, now, name
            )
        self._relay.wake()
        return issued

    # ---------------------------------------------------------------- login

    async def login(
        self,
        *,
        username: str,
        password: str,
        totp_code: str | None,
        recovery_code: str | None,
        device: DeviceRequest,
        device_id: str,
        source: str,
    ) -> tuple[IssuedSession, bool, bool, int]:
        """Password + second factor → session.

        Returns:
            The session, whether the device is new, whether this login confirmed TOTP
            enrollment, and the recovery codes left.
        """
        if (totp_code is None) == (recovery_code is None):
            raise InvalidArgument("exactly one of totp_code or recovery_code is required")
        if totp_code is not None:
            cred.require_totp_format(totp_code)
        name = _check_device_name(device.name)
        wanted_device = parse_uuid(device_id, "device_id") if device_id else None
        await self._limits.take(self._source_logins, source)
        now = self._clock()
        try:
            normalised = cred.normalise_username(username)
        except InvalidArgument:
            normalised = ""
        async with self._pool.acquire() as conn:
            account = await store.account_by_username(conn, normalised) if normalised else None
        if account is not None:
            await self._refuse_if_locked(str(account["account_id"]))
        ok = await self._hasher.verify(account["password_hash"] if account else None, password)
        if account is None or not ok:
            LOGINS.labels("bad_password").inc()
            if account is not None:
                await self._failure(account, A.AUDIT_EVENT_KIND_LOGIN_FAILED, now, "wrong password")
            raise Unauthenticated(BAD_CREDENTIALS)
        account_id = str(account["account_id"])
        if self._hasher.needs_rehash(account["password_hash"]):
            upgraded = await self._hasher.hash(password)
            async with self._pool.acquire() as conn:
                await store.set_password_hash(conn, account_id, upgraded, None)

        confirmed_now = False
        remaining: int
        if totp_code is not None:
            confirmed_now = await self._check_totp(account, totp_code, now)
            async with self._pool.acquire() as conn:
                remaining = await store.recovery_codes_remaining(conn, account_id)
        else:
            assert recovery_code is not None
            remaining = await self._use_recovery_code(account, recovery_code, now)

        async with self._pool.acquire() as conn, conn.transaction():
            issued = await self._open_session(
                conn,
                account_id,
                wanted_device,
                name,
                device.platform,
                now,
                recovery=recovery_code is not None,
            )
            new_device = wanted_device is None
            await self._audit_session(
                conn,
                issued,
                A.AUDIT_EVENT_KIND_LOGIN_SUCCEEDED,
                now,
                name,
                detail="recovery code" if recovery_code is not None else "TOTP",
            )
            if confirmed_now:
                await store.insert_audit(
                    conn,
                    account_id=account_id,
                    kind=A.AUDIT_EVENT_KIND_TOTP_ENROLLMENT_CONFIRMED,
                    now=now,
                    device_id=issued.device_id,
                    device_name=name,
                )
            if new_device:
                await self._audit_session(conn, issued, A.AUDIT_EVENT_KIND_NEW_DEVICE, now, name)
        self._relay.wake()
        LOGINS.labels("ok").inc()
        return issued, new_device, confirmed_now, remaining

    async def _refuse_if_locked(self, account_id: str) -> None:
        # Failures draw from the bucket (see _failure); here we only look, so a correct
        # login never spends a token, and a locked account is refused before any hashing.
        tokens = await self._limits.available(LOGIN_FAILURES, account_id)
        if tokens < 1:
            raise ResourceExhausted(
                "too many failed attempts for this account; try again later",
                retry_after_seconds=(1 - tokens) / LOGIN_FAILURES.refill_per_second,
                reason="RATE_LIMITED",
            )

    async def _failure(
        self, account: asyncpg.Record, kind: int, now: datetime, detail: str
    ) -> None:
        account_id = str(account["account_id"])
        await self._limits.try_take(LOGIN_FAILURES, account_id)
        async with self._pool.acquire() as conn, conn.transaction():
            await store.insert_audit(conn, account_id=account_id, kind=kind, now=now, detail=detail)
        self._relay.wake()

    async def _check_totp(self, account: asyncpg.Record, code: str, now: datetime) -> bool:
        """Verifies a TOTP code and consumes its step.

        Returns:
            True if this use confirmed the account's TOTP enrollment.

        Raises:
            Unauthenticated: Wrong or replayed code (audited).
            ResourceExhausted: The TOTP check bucket is empty.
        """
        account_id = str(account["account_id"])
        wait = await self._limits.try_take(TOTP_CHECKS, account_id)
        if wait is not None:
            async with self._pool.acquire() as conn, conn.transaction():
                await store.insert_audit(
                    conn,
                    account_id=account_id,
                    kind=A.AUDIT_EVENT_KIND_RATE_LIMITED,
                    now=now,
                    detail="TOTP checks",
                )
            self._relay.wake()
            raise ResourceExhausted(
                "too many TOTP attempts; wait before trying again",
                retry_after_seconds=wait,
                reason="RATE_LIMITED",
            )
        secret = self._totp_box.open(str(account["account_id"]), account["totp_secret"])
        step = cred.totp_matching_step(secret, code, now.timestamp())
        if step is None:
            TOTP_FAILURES.inc()
            await self._failure(account, A.AUDIT_EVENT_KIND_TOTP_FAILED, now, "wrong TOTP code")
            raise Unauthenticated(BAD_CREDENTIALS)
        async with self._pool.acquire() as conn:
            confirmed = await store.consume_totp_step(conn, account_id, step, now)
        if confirmed is None:
            TOTP_FAILURES.inc()
            await self._failure(
                account, A.AUDIT_EVENT_KIND_TOTP_REPLAYED, now, "TOTP code already used"
            )
            raise Unauthenticated(BAD_CREDENTIALS)
        return confirmed

    async def _use_recovery_code(self, account: asyncpg.Record, code: str, now: datetime) -> int:
        account_id = str(account["account_id"])
        if account["totp_confirmed_at"] is None:
            # Recovery codes exist from registration on, but the first factor check of an
            # account must be its TOTP: otherwise 2FA would never have been proven.
            await self._failure(
                account, A.AUDIT_EVENT_KIND_LOGIN_FAILED, now, "recovery code before TOTP"
            )
            raise Unauthenticated(BAD_CREDENTIALS)
        async with self._pool.acquire() as conn, conn.transaction():
            remaining = await store.use_recovery_code(
                conn, account_id, cred.recovery_code_hash(account_id, code), now
            )
            if remaining is not None:
                await store.insert_audit(
                    conn,
                    account_id=account_id,
                    kind=A.AUDIT_EVENT_KIND_RECOVERY_CODE_USED,
                    now=now,
                    detail=f"{remaining} recovery codes left",
                )
        if remaining is None:
            await self._failure(account, A.AUDIT_EVENT_KIND_LOGIN_FAILED, now, "bad recovery code")
            raise Unauthenticated(BAD_CREDENTIALS)
        return remaining

    async def _open_session(
        self,
        conn: Connection,
        account_id: str,
        device_id: str | None,
        name: str,
        platform: int,
        now: datetime,
        *,
        recovery: bool,
    ) -> IssuedSession:
        if device_id is not None:
            row = await store.device(conn, device_id)
            if row is None or str(row["account_id"]) != account_id:
                raise NotFound("device_id is not a device of this account")
            approval = int(row["approval_state"])
            previous = await store.live_session_of_device(conn, device_id)
            if previous is not None:
                await self._end(
                    conn, str(previous["session_id"]), A.SESSION_END_REASON_REPLACED, now
                )
            await store.touch_device(conn, device_id, now, name)
        else:
            # Serialise device creation per account so the cap holds under concurrency.
            account = await store.account_by_id(conn, account_id, for_update=True)
            assert account is not None
            if await store.count_devices(conn, account_id) >= self._cfg.device_cap:
                raise FailedPrecondition(
                    f"this account already has {self._cfg.device_cap} devices; "
                    "remove one (conclave sessions revoke ID --remove-device) first",
                    reason="DEVICE_CAP_REACHED",
                )
            # With the approval policy on, a new device waits for an approved one to vouch
            # for it. Exceptions: the account's first device (nobody could approve it) and
            # a recovery-code login (account recovery when the other devices are lost).
            approval = A.DEVICE_APPROVAL_STATE_APPROVED
            if (
                account["device_approval_required"]
                and not recovery
                and await store.count_approved_devices(conn, account_id) > 0
            ):
                approval = A.DEVICE_APPROVAL_STATE_PENDING
            device_id = await store.insert_device(
                conn,
                account_id=account_id,
                name=name,
                platform=platform,
                approval_state=approval,
                now=now,
            )
        absolute = now + timedelta(seconds=self._cfg.absolute_lifetime_seconds)
        access_expires = min(now + timedelta(seconds=self._cfg.access_token_seconds), absolute)
        session_id = await store.insert_session(
            conn,
            account_id=account_id,
            device_id=device_id,
            now=now,
            absolute_expires_at=absolute,
            access_expires_at=access_expires,
        )
        return await self._issue(
            conn, account_id, device_id, session_id, now, now, absolute, approval
        )

    async def _issue(
        self,
        conn: Connection,
        account_id: str,
        device_id: str,
        session_id: str,
        auth_time: datetime,
        now: datetime,
        absolute: datetime,
        approval: int,
    ) -> IssuedSession:
        refresh = cred.new_opaque_token()
        await store.insert_refresh_token(conn, session_id, cred.token_hash(refresh), now)
        access_expires = min(now + timedelta(seconds=self._cfg.access_token_seconds), absolute)
        token = self._signer.mint(
            account_id=account_id,
            device_id=device_id,
            session_id=session_id,
            auth_time=int(auth_time.timestamp()),
            pending_approval=approval == A.DEVICE_APPROVAL_STATE_PENDING,
            now=int(now.timestamp()),
            ttl_seconds=max(1, int((access_expires - now).total_seconds())),
        )
        refresh_expires = min(now + timedelta(seconds=self._cfg.idle_timeout_seconds), absolute)
        return IssuedSession(
            access_token=token,
            access_expires_at=access_expires,
            refresh_token=refresh,
            refresh_expires_at=refresh_expires,
            session_id=session_id,
            account_id=account_id,
            device_id=device_id,
            session_expires_at=absolute,
            approval_state=approval,
        )

    async def _end(
        self, conn: Connection, session_id: str, reason: int, now: datetime
    ) -> asyncpg.Record | None:
        row = await store.end_session(conn, session_id, reason, now)
        if row is not None:
            # This process rejects the session at once; others within a second via NATS.
            until = row["access_expires_at"].timestamp() + 30
            self._revocations.revoke(session_id, until)
            kind = (
                A.AUDIT_EVENT_KIND_LOGOUT
                if reason == A.SESSION_END_REASON_LOGOUT
                else A.AUDIT_EVENT_KIND_SESSION_REVOKED
            )
            await store.insert_audit(
                conn,
                account_id=str(row["account_id"]),
                kind=kind,
                now=now,
                session_id=session_id,
                device_id=str(row["device_id"]),
                detail=A.SessionEndReason.Name(reason),  # type: ignore[arg-type]
            )
        return row

    # ---------------------------------------------------------------- sessions

    async def refresh(self, refresh_token: str, source: str) -> IssuedSession:
        """Rotates a refresh token; a reused one ends the whole session."""
        if not 20 <= len(refresh_token) <= 100:
            raise InvalidArgument("malformed refresh token")
        await self._limits.take(SOURCE_REFRESHES, source)
        now = self._clock()
        token_hash = cred.token_hash(refresh_token)
        reused = False
        async with self._pool.acquire() as conn, conn.transaction():
            token = await store.refresh_token(conn, token_hash)
            if token is None:
                raise Unauthenticated("refresh token is not valid")
            session_id = str(token["session_id"])
            session = await store.session(conn, session_id, for_update=True)
            assert session is not None
            if token["used_at"] is not None:
                reused = True
                REFRESH_REUSE.inc()
                row = await self._end(
                    conn, session_id, A.SESSION_END_REASON_REFRESH_TOKEN_REUSED, now
                )
                if row is not None:
                    await store.insert_audit(
                        conn,
                        account_id=str(row["account_id"]),
                        kind=A.AUDIT_EVENT_KIND_REFRESH_TOKEN_REUSED,
                        now=now,
                        session_id=session_id,
                        device_id=str(row["device_id"]),
                    )
            elif session["ended_at"] is not None:
                raise Unauthenticated("session has ended; log in again")
            elif now - session["last_used_at"] > timedelta(seconds=self._cfg.idle_timeout_seconds):
                await self._end(conn, session_id, A.SESSION_END_REASON_IDLE_TIMEOUT, now)
                issued = None
            elif now >= session["absolute_expires_at"]:
                await self._end(conn, session_id, A.SESSION_END_REASON_ABSOLUTE_LIFETIME, now)
                issued = None
            else:
                await store.mark_refresh_used(conn, token_hash, now)
                device = await store.device(conn, str(session["device_id"]))
                assert device is not None
                issued = await self._issue(
                    conn,
                    str(session["account_id"]),
                    str(session["device_id"]),
                    session_id,
                    session["auth_time"],
                    now,
                    session["absolute_expires_at"],
                    int(device["approval_state"]),
                )
                await store.session_used(conn, session_id, now, issued.access_expires_at)
                await store.touch_device(conn, str(session["device_id"]), now)
        self._relay.wake()
        if reused:
            raise Unauthenticated(
                "refresh token was already used; the session has been revoked",
                reason="REFRESH_TOKEN_REUSED",
            )
        if issued is None:
            raise Unauthenticated("session expired; log in again", reason="SESSION_EXPIRED")
        return issued

    async def require_live_session(self, claims: Claims) -> asyncpg.Record:
        """Auth is the source of truth: its own RPCs also check the session row."""
        _check_claim_ids(claims)
        async with self._pool.acquire() as conn:
            row = await store.session(conn, claims.session_id)
        if row is None or row["ended_at"] is not None:
            raise Unauthenticated("session has been revoked")
        return row

    async def logout(self, claims: Claims, remove_device: bool) -> None:
        """Ends the caller's session (and optionally removes its device); idempotent."""
        _check_claim_ids(claims)
        now = self._clock()
        async with self._pool.acquire() as conn, conn.transaction():
            await self._end(conn, claims.session_id, A.SESSION_END_REASON_LOGOUT, now)
            if remove_device:
                await self._remove_device(conn, claims.account_id, claims.device_id, now)
        self._relay.wake()

    async def _remove_device(
        self, conn: Connection, account_id: str, device_id: str, now: datetime
    ) -> None:
        from conclave_auth import events  # noqa: PLC0415 - avoid a cycle at import time

        await events.device_removed(conn, now=now, account_id=account_id, device_id=device_id)
        await store.insert_audit(
            conn,
            account_id=account_id,
            kind=A.AUDIT_EVENT_KIND_DEVICE_REMOVED,
            now=now,
            device_id=device_id,
        )
        await store.delete_device(conn, device_id)

    async def list_sessions(self, claims: Claims) -> list[A.Session]:
        """The caller's live sessions."""
        await self.require_live_session(claims)
        idle = timedelta(seconds=self._cfg.idle_timeout_seconds)
        async with self._pool.acquire() as conn:
            rows = await store.live_sessions(conn, claims.account_id)
        sessions = []
        for r in rows:
            s = A.Session(
                session_id=str(r["session_id"]),
                current=str(r["session_id"]) == claims.session_id,
                device=A.Device(
                    device_id=str(r["device_id"]),
                    name=r["device_name"],
                    platform=r["platform"],
                    approval_state=r["approval_state"],
                ),
            )
            s.device.create_time.FromDatetime(r["device_created_at"])
            s.device.last_seen_time.FromDatetime(r["last_seen_at"])
            s.create_time.FromDatetime(r["created_at"])
            s.last_used_time.FromDatetime(r["last_used_at"])
            s.idle_expire_time.FromDatetime(min(r["last_used_at"] + idle, r["absolute_expires_at"]))
            s.absolute_expire_time.FromDatetime(r["absolute_expires_at"])
            sessions.append(s)
        return sessions

    async def revoke_session(self, claims: Claims, session_id: str, remove_device: bool) -> None:
        """Ends one of the caller's sessions."""
        await self.require_live_session(claims)
        target = parse_uuid(session_id, "session_id")
        now = self._clock()
        async with self._pool.acquire() as conn, conn.transaction():
            row = await store.session(conn, target)
            if row is None or str(row["account_id"]) != claims.account_id:
                raise NotFound("no such session")
            if row["ended_at"] is None:
                await self._end(conn, target, A.SESSION_END_REASON_REVOKED, now)
            if remove_device:
                await self._remove_device(conn, claims.account_id, str(row["device_id"]), now)
        self._relay.wake()

    async def revoke_others(self, claims: Claims, remove_devices: bool) -> int:
        """Ends every session of the account but the caller's."""
        await self.require_live_session(claims)
        return await self._end_others(
            claims, A.SESSION_END_REASON_REVOKED, remove_devices=remove_devices
        )

    async def _end_others(self, claims: Claims, reason: int, *, remove_devices: bool) -> int:
        now = self._clock()
        count = 0
        async with self._pool.acquire() as conn, conn.transaction():
            for r in await store.live_sessions(conn, claims.account_id):
                if str(r["session_id"]) == claims.session_id:
                    continue
                await self._end(conn, str(r["session_id"]), reason, now)
                if remove_devices:
                    await self._remove_device(conn, claims.account_id, str(r["device_id"]), now)
                count += 1
        self._relay.wake()
        return count

    async def rename_device(self, claims: Claims, device_id: str, name: str) -> A.Device:
        """Renames one of the caller's devices."""
        await self.require_live_session(claims)
        cleaned = _check_device_name(name)
        target = parse_uuid(device_id, "device_id")
        now = self._clock()
        async with self._pool.acquire() as conn, conn.transaction():
            row = await store.rename_device(conn, claims.account_id, target, cleaned)
            if row is None:
                raise NotFound("no such device")
            await store.insert_audit(
                conn,
                account_id=claims.account_id,
                kind=A.AUDIT_EVENT_KIND_DEVICE_RENAMED,
                now=now,
                device_id=target,
                device_name=cleaned,
            )
        self._relay.wake()
        return _device_message(row)

    # ---------------------------------------------------------------- device approval

    async def set_approval_policy(self, claims: Claims, required: bool) -> bool:
        """Turns "new devices need approval" on or off (FRESH auth, approved device)."""
        await self._require_approved(claims)
        now = self._clock()
        async with self._pool.acquire() as conn, conn.transaction():
            await store.set_approval_policy(conn, claims.account_id, required)
            await self._audit_caller(
                conn,
                claims,
                A.AUDIT_EVENT_KIND_DEVICE_APPROVAL_POLICY_CHANGED,
                now,
                detail="required" if required else "not required",
            )
        self._relay.wake()
        return required

    async def pending_devices(self, claims: Claims) -> list[A.Device]:
        """Devices of the caller's account waiting for approval, oldest first."""
        await self.require_live_session(claims)
        async with self._pool.acquire() as conn:
            rows = await store.pending_devices(conn, claims.account_id)
        return [_device_message(r) for r in rows]

    async def approve_device(
        self, claims: Claims, device_id: str, approve: bool
    ) -> A.Device | None:
        """An approved device approves or rejects a pending one (rejected: removed)."""
        await self._require_approved(claims)
        target = parse_uuid(device_id, "device_id")
        now = self._clock()
        async with self._pool.acquire() as conn, conn.transaction():
            row = await store.device(conn, target)
            if row is None or str(row["account_id"]) != claims.account_id:
                raise NotFound("no such device")
            if row["approval_state"] != A.DEVICE_APPROVAL_STATE_PENDING:
                raise FailedPrecondition("that device is not waiting for approval")
            kind = (
                A.AUDIT_EVENT_KIND_DEVICE_APPROVED
                if approve
                else A.AUDIT_EVENT_KIND_DEVICE_REJECTED
            )
            await store.insert_audit(
                conn,
                account_id=claims.account_id,
                kind=kind,
                now=now,
                session_id=claims.session_id,
                device_id=target,
                device_name=row["name"],
            )
            if not approve:
                live = await store.live_session_of_device(conn, target)
                if live is not None:
                    await self._end(
                        conn, str(live["session_id"]), A.SESSION_END_REASON_DEVICE_REMOVED, now
                    )
                await self._remove_device(conn, claims.account_id, target, now)
                approved = None
            else:
                approved = await store.approve_device(conn, target)
        self._relay.wake()
        return None if approved is None else _device_message(approved)

    @staticmethod
    async def _audit_session(
        conn: Connection,
        issued: IssuedSession,
        kind: int,
        now: datetime,
        device_name: str,
        **extra: str,
    ) -> None:
        """Audits an event of a session just opened (login, enrollment, new device)."""
        await store.insert_audit(
            conn,
            account_id=issued.account_id,
            kind=kind,
            now=now,
            session_id=issued.session_id,
            device_id=issued.device_id,
            device_name=device_name,
            **extra,
        )

    @staticmethod
    async def _audit_caller(
        conn: Connection, claims: Claims, kind: int, now: datetime, **extra: str
    ) -> None:
        """Audits an action the caller took from its own session and device."""
        await store.insert_audit(
            conn,
            account_id=claims.account_id,
            kind=kind,
            now=now,
            session_id=claims.session_id,
            device_id=claims.device_id,
            **extra,
        )

    async def _require_approved(self, claims: Claims) -> None:
        await self.require_live_session(claims)
        if claims.pending_approval:
            raise PermissionDenied(
                "a device waiting for approval cannot approve devices or change the policy",
                reason="DEVICE_APPROVAL_PENDING",
            )

    # ---------------------------------------------------------------- account

    async def get_account(self, claims: Claims) -> A.GetAccountResponse:
        """The caller's account summary."""
        await self.require_live_session(claims)
        async with self._pool.acquire() as conn:
            account = await store.account_by_id(conn, claims.account_id)
            assert account is not None
            remaining = await store.recovery_codes_remaining(conn, claims.account_id)
            devices = await store.count_devices(conn, claims.account_id)
        response = A.GetAccountResponse(
            account_id=claims.account_id,
            username=account["username"],
            recovery_codes_remaining=remaining,
            device_approval_required=account["device_approval_required"],
            device_cap=self._cfg.device_cap,
            device_count=devices,
        )
        response.create_time.FromDatetime(account["created_at"])
        return response

    async def lookup_accounts(
        self, claims: Claims, usernames: list[str], account_ids: list[str]
    ) -> list[A.AccountRef]:
        """Resolves usernames and ids of confirmed accounts."""
        if len(usernames) + len(account_ids) > 100:
            raise InvalidArgument("at most 100 usernames and account ids together")
        names = []
        for raw in usernames:
            try:
                names.append(cred.normalise_username(raw))
            except InvalidArgument:
                continue  # cannot exist: simply absent from the answer
        ids = []
        for raw in account_ids:
            try:
                ids.append(uuid.UUID(raw))
            except ValueError:
                continue
        async with self._pool.acquire() as conn:
            rows = await store.lookup_accounts(conn, names, ids)
        return [A.AccountRef(account_id=str(r["account_id"]), username=r["username"]) for r in rows]

    async def reauthenticate(
        self, claims: Claims, password: str, totp_code: str | None, recovery_code: str | None
    ) -> tuple[str, datetime]:
        """Step-up: re-checks the credentials and returns a token with auth_time = now."""
        if (totp_code is None) == (recovery_code is None):
            raise InvalidArgument("exactly one of totp_code or recovery_code is required")
        session = await self.require_live_session(claims)
        now = self._clock()
        await self._refuse_if_locked(claims.account_id)
        async with self._pool.acquire() as conn:
            account = await store.account_by_id(conn, claims.account_id)
        assert account is not None
        try:
            if not await self._hasher.verify(account["password_hash"], password):
                await self._failure(account, A.AUDIT_EVENT_KIND_LOGIN_FAILED, now, "step-up")
                raise Unauthenticated(BAD_CREDENTIALS)
            if totp_code is not None:
                cred.require_totp_format(totp_code)
                await self._check_totp(account, totp_code, now)
            else:
                assert recovery_code is not None
                await self._use_recovery_code(account, recovery_code, now)
        except Unauthenticated:
            # Inside a valid session a wrong credential is PERMISSION_DENIED (the contract):
            # the session stays valid, only this step-up failed.
            raise PermissionDenied(BAD_CREDENTIALS, reason="BAD_CREDENTIALS") from None
        access_expires = min(
            now + timedelta(seconds=self._cfg.access_token_seconds), session["absolute_expires_at"]
        )
        token = self._signer.mint(
            account_id=claims.account_id,
            device_id=claims.device_id,
            session_id=claims.session_id,
            auth_time=int(now.timestamp()),
            pending_approval=claims.pending_approval,
            now=int(now.timestamp()),
            ttl_seconds=max(1, int((access_expires - now).total_seconds())),
        )
        async with self._pool.acquire() as conn, conn.transaction():
            await store.session_used(
                conn, claims.session_id, now, access_expires, reauthenticated=True
            )
            await self._audit_caller(conn, claims, A.AUDIT_EVENT_KIND_REAUTHENTICATED, now)
        self._relay.wake()
        return token, access_expires

    async def change_password(self, claims: Claims, new_password: str, end_others: bool) -> int:
        """Sets a new password (FRESH auth checked by the interceptor)."""
        await self.require_live_session(claims)
        async with self._pool.acquire() as conn:
            account = await store.account_by_id(conn, claims.account_id)
        assert account is not None
        cred.check_password_policy(new_password, account["username"], self._cfg.password_min_length)
        new_hash = await self._hasher.hash(new_password)
        now = self._clock()
        async with self._pool.acquire() as conn, conn.transaction():
            await store.set_password_hash(conn, claims.account_id, new_hash, now)
            await self._audit_caller(conn, claims, A.AUDIT_EVENT_KIND_PASSWORD_CHANGED, now)
        self._relay.wake()
        if not end_others:
            return 0
        return await self._end_others(
            claims, A.SESSION_END_REASON_CREDENTIALS_CHANGED, remove_devices=False
        )

    async def change_totp(self, claims: Claims) -> A.ChangeTotpResponse:
        """Starts a TOTP secret change; the new secret is pending until confirmed."""
        await self.require_live_session(claims)
        now = self._clock()
        secret = cred.new_totp_secret()
        expires = now + timedelta(minutes=15)
        async with self._pool.acquire() as conn:
            account = await store.account_by_id(conn, claims.account_id)
            assert account is not None
            await store.set_pending_totp(
                conn, claims.account_id, self._totp_box.seal(claims.account_id, secret), expires
            )
        response = A.ChangeTotpResponse(
            totp_secret=secret, otpauth_uri=cred.otpauth_uri(secret, account["username"])
        )
        response.expire_time.FromDatetime(expires)
        return response

    async def confirm_totp_change(self, claims: Claims, code: str, end_others: bool) -> int:
        """Activates the pending secret with a code generated from it."""
        await self.require_live_session(claims)
        cred.require_totp_format(code)
        now = self._clock()
        async with self._pool.acquire() as conn:
            account = await store.account_by_id(conn, claims.account_id)
        assert account is not None
        pending = account["pending_totp_secret"]
        if pending is None or account["pending_totp_expires_at"] < now:
            raise FailedPrecondition("no pending TOTP change; call ChangeTotp first")
        wait = await self._limits.try_take(TOTP_CHECKS, claims.account_id)
        if wait is not None:
            raise ResourceExhausted(
                "too many TOTP attempts", retry_after_seconds=wait, reason="RATE_LIMITED"
            )
        pending = self._totp_box.open(claims.account_id, pending)
        step = cred.totp_matching_step(pending, code, now.timestamp())
        if step is None:
            await self._failure(account, A.AUDIT_EVENT_KIND_TOTP_FAILED, now, "TOTP change")
            raise PermissionDenied(BAD_CREDENTIALS, reason="BAD_CREDENTIALS")
        async with self._pool.acquire() as conn, conn.transaction():
            await store.activate_pending_totp(conn, claims.account_id, step)
            await self._audit_caller(conn, claims, A.AUDIT_EVENT_KIND_TOTP_CHANGED, now)
        self._relay.wake()
        if not end_others:
            return 0
        return await self._end_others(
            claims, A.SESSION_END_REASON_CREDENTIALS_CHANGED, remove_devices=False
        )

    async def regenerate_recovery_codes(self, claims: Claims) -> list[str]:
        """Replaces the ten recovery codes."""
        await self.require_live_session(claims)
        codes = cred.new_recovery_codes(claims.account_id)
        now = self._clock()
        async with self._pool.acquire() as conn, conn.transaction():
            await store.replace_recovery_codes(conn, claims.account_id, codes.hashes)
            await self._audit_caller(
                conn, claims, A.AUDIT_EVENT_KIND_RECOVERY_CODES_REGENERATED, now
            )
        self._relay.wake()
        return codes.codes

    async def audit_page(
        self, claims: Claims, kinds: list[int], page_size: int, page_token: str
    ) -> tuple[list[A.AuditEvent], str]:
        """One page of the caller's audit log, newest first."""
        await self.require_live_session(claims)
        if page_size < 0:
            raise InvalidArgument("page_size must not be negative")
        limit = min(page_size or 50, 500)
        after = _decode_page_token(page_token, claims.account_id) if page_token else None
        async with self._pool.acquire() as conn:
            rows = await store.audit_page(
                conn, claims.account_id, kinds=kinds, after=after, limit=limit + 1
            )
        events = []
        for r in rows[:limit]:
            e = A.AuditEvent(
                event_id=str(r["event_id"]),
                kind=r["kind"],
                session_id=str(r["session_id"] or ""),
                device_id=str(r["device_id"] or ""),
                device_name=r["device_name"],
                detail=r["detail"],
            )
            e.event_time.FromDatetime(r["occurred_at"])
            events.append(e)
        next_token = ""
        if len(rows) > limit:
            last = rows[limit - 1]
            next_token = _encode_page_token(
                last["occurred_at"], str(last["event_id"]), claims.account_id
            )
        return events, next_token

    @property
    def pool(self) -> asyncpg.Pool:
        """The auth schema's pool (for export and purge)."""
        return self._pool

    def now(self) -> datetime:
        """The manager's clock."""
        return self._clock()

    async def expire_and_delete_sessions(self, now: datetime) -> int:
        """Ends timed-out sessions, then deletes ended ones whose tokens have all expired.

        Sessions past their idle timeout or absolute lifetime are ended first (publishing
        their revocations), so a purge never silently drops a session someone could use.

        Returns:
            Sessions deleted.
        """
        idle = timedelta(seconds=self._cfg.idle_timeout_seconds)
        async with self._pool.acquire() as conn, conn.transaction():
            stale = await conn.fetch(
                "SELECT session_id, (absolute_expires_at <= $1) AS absolute FROM sessions "
                "WHERE ended_at IS NULL AND (absolute_expires_at <= $1 OR last_used_at < $2) "
                "FOR UPDATE SKIP LOCKED",
                now,
                now - idle,
            )
            for row in stale:
                reason = (
                    A.SESSION_END_REASON_ABSOLUTE_LIFETIME
                    if row["absolute"]
                    else A.SESSION_END_REASON_IDLE_TIMEOUT
                )
                await self._end(conn, str(row["session_id"]), reason, now)
            result = await conn.execute(
                "DELETE FROM sessions WHERE ended_at IS NOT NULL AND access_expires_at < $1",
                now - timedelta(minutes=1),
            )
        self._relay.wake()
        return int(result.rsplit(" ", 1)[-1])

    async def seal_stored_totp_secrets(self) -> int:
        """Start-up step: seals secrets still stored in clear; refuses sealed ones without key.

        Returns:
            Secrets sealed now (0 without a key or when all already were).

        Raises:
            StartupError: Secrets are sealed but ``CONCLAVE_AUTH_TOTP_KEY_FILE`` is not set.
        """
        async with self._pool.acquire() as conn, conn.transaction():
            if not self._totp_box.enabled:
                sealed = await conn.fetchval(
                    "SELECT EXISTS (SELECT 1 FROM accounts WHERE totp_secret LIKE 'v1:%' "
                    "OR pending_totp_secret LIKE 'v1:%')"
                )
                if sealed:
                    raise StartupError(
                        "CONCLAVE_AUTH_TOTP_KEY_FILE: stored TOTP secrets are encrypted; "
                        "set it to the key they were sealed with"
                    )
                _log.warning("totp_secrets_in_clear", setting="CONCLAVE_AUTH_TOTP_KEY_FILE")
                return 0
            # One replica at a time; the others then find nothing left to seal.
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext('conclave-totp-seal'))")
            rows = await conn.fetch(
                "SELECT account_id, totp_secret, pending_totp_secret FROM accounts "
                "WHERE totp_secret NOT LIKE 'v1:%' OR pending_totp_secret NOT LIKE 'v1:%'"
            )
            for r in rows:
                account = str(r["account_id"])
                current, pending = r["totp_secret"], r["pending_totp_secret"]
                if not is_sealed(current):
                    current = self._totp_box.seal(account, current)
                if pending is not None and not is_sealed(pending):
                    pending = self._totp_box.seal(account, pending)
                await conn.execute(
                    "UPDATE accounts SET totp_secret = $2, pending_totp_secret = $3 "
                    "WHERE account_id = $1",
                    r["account_id"],
                    current,
                    pending,
                )
        if rows:
            _log.info("totp_secrets_sealed", count=len(rows))
        return len(rows)

    async def erase_account(self, account_id: str) -> int:
        """Erases an account (``conclave.events.account.deleted``); idempotent.

        Every live session is ended first, in the same transaction, with its revocation
        queued in the outbox, and the outbox is relayed before returning: the sessions are
        refused everywhere before auth reports the erasure complete. Then the account row
        goes, and with it (foreign-key cascades) its devices, sessions, refresh-token
        hashes, recovery-code hashes and audit log; its rate-limit buckets are deleted.

        Returns:
            Rows deleted (0 when the account was already gone).
        """
        now = self._clock()
        key = uuid.UUID(account_id)
        async with self._pool.acquire() as conn, conn.transaction():
            live = await conn.fetch(
                "SELECT session_id FROM sessions WHERE account_id = $1 AND ended_at IS NULL "
                "FOR UPDATE",
                key,
            )
            for row in live:
                ended = await store.end_session(
                    conn, str(row["session_id"]), A.SESSION_END_REASON_ACCOUNT_DELETED, now
                )
                if ended is not None:
                    self._revocations.revoke(
                        str(row["session_id"]), ended["access_expires_at"].timestamp() + 30
                    )
            dependents = await conn.fetchval(
                "SELECT (SELECT count(*) FROM devices WHERE account_id = $1) "
                "+ (SELECT count(*) FROM sessions WHERE account_id = $1) "
                "+ (SELECT count(*) FROM audit_events WHERE account_id = $1) "
                "+ (SELECT count(*) FROM recovery_codes WHERE account_id = $1)",
                key,
            )
            deleted = await conn.execute("DELETE FROM accounts WHERE account_id = $1", key)
        items = int(deleted.rsplit(" ", 1)[-1])
        if items:
            items += int(dependents)
        items += await self._limits.erase_key(account_id)
        # Publish the revocations now, not at the relay's next poll: erasure.completed
        # must not overtake them.
        await self._relay.relay_once()
        return items

    @property
    def fresh_auth_seconds(self) -> float:
        """How long a step-up keeps a token fresh."""
        return self._cfg.service.fresh_auth_seconds

    def verification_keys(self) -> list[A.VerificationKey]:
        """Public keys for access tokens and, if configured, sender certificates."""
        keys = [
            A.VerificationKey(
                key_id=kid,
                public_key=raw,
                purpose=A.KEY_PURPOSE_ACCESS_TOKEN,
                active=kid == self._cfg.signing_key_id,
            )
            for kid, raw in sorted(self._cfg.service.token_verify_keys.items())
        ]
        if self._cfg.sender_cert_key is not None:
            keys.append(
                A.VerificationKey(
                    key_id=str(self._cfg.sender_cert_key_id),
                    public_key=public_key_bytes(self._cfg.sender_cert_key),
                    purpose=A.KEY_PURPOSE_SENDER_CERTIFICATE,
                    active=True,
                )
            )
        return keys

    async def sender_certificate(
        self, claims: Claims, lookup: IdentityLookup
    ) -> tuple[bytes, datetime, str]:
        """Issues a sealed-sender certificate for the caller's device.

        The identity key comes from the key directory, never from the client, so a
        certificate can only vouch for the key the directory (and its transparency log)
        publishes for this device.

        Raises:
            FailedPrecondition: Not offered here, or the device has no published identity.
            PermissionDenied: The device awaits approval.
        """
        if self._cfg.sender_cert_key is None:
            raise FailedPrecondition(
                "this deployment does not issue sender certificates",
                reason="SENDER_CERTIFICATES_DISABLED",
            )
        await self._require_approved(claims)
        identity = await lookup(claims.account_id, claims.device_id)
        if identity is None:
            raise FailedPrecondition(
                "publish this device's identity key first", reason="NO_IDENTITY_KEY"
            )
        expires = self._clock() + timedelta(seconds=LIFETIME_SECONDS)
        certificate = issue_certificate(
            self._cfg.sender_cert_key,
            self._cfg.sender_cert_key_id,
            claims.account_id,
            claims.device_id,
            identity[0],
            identity[1],
            int(expires.timestamp() * 1000),
        )
        return certificate, expires, str(self._cfg.sender_cert_key_id)


def _encode_page_token(occurred_at: datetime, event_id: str, account_id: str) -> str:
    raw = json.dumps({"t": occurred_at.isoformat(), "e": event_id, "a": account_id})
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def _decode_page_token(token: str, account_id: str) -> tuple[datetime, str]:
    try:
        data = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        if data["a"] != account_id:
            raise ValueError
        return datetime.fromisoformat(data["t"]), str(uuid.UUID(data["e"]))
    except (ValueError, KeyError, TypeError, binascii.Error, json.JSONDecodeError):
        raise InvalidArgument("page_token is not valid for this request") from None
