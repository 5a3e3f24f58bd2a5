"""A small synchronous client of ``conclave.auth.v1.AuthService`` with session handling.

:class:`AuthClient` registers accounts, logs in (storing the session in
:mod:`conclave_client.credentials`), and calls the session RPCs with
``authorization: Bearer <access token>``. Access tokens live five minutes, so
:meth:`AuthClient.authorized_metadata` refreshes the session before the token expires, and an
authorised call that still meets ``UNAUTHENTICATED`` refreshes once and retries once.

Refresh tokens are single use and presenting one twice makes the server revoke the whole
session, so a refresh (1) runs under the credentials file lock, re-reading the file first in
case another process already rotated it, and (2) stores the rotated tokens atomically
*before* the new access token is used.

Every gRPC failure becomes a :class:`ClientError` carrying the server's message, its
``conclave-error-reason`` and, for rate limits, ``retry-after`` seconds.
"""

from __future__ import annotations

import platform
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import grpc
from conclave.auth.v1 import auth_pb2, auth_pb2_grpc
from conclave.common.v1 import types_pb2
from google.protobuf.timestamp_pb2 import Timestamp

from conclave_client.credentials import Credentials, CredentialStore, normalise_username

DEFAULT_TIMEOUT = 15.0
"""Seconds per RPC (Argon2id makes Register and Login take a noticeable fraction of one)."""
REFRESH_MARGIN = timedelta(seconds=30)
"""Refresh when the access token expires within this margin."""
AUDIT_PAGE_MAX = 500
REASON_HEADER = "conclave-error-reason"
RETRY_AFTER_HEADER = "retry-after"

T = TypeVar("T")


class ClientError(Exception):
    """A failed request, in words a user can act on.

    Args:
        message: One line, no secrets.
        reason: The server's ``conclave-error-reason`` (e.g. ``WEAK_PASSWORD``), if any.
        retry_after: Seconds to wait before retrying (rate limits), if given.
        code: gRPC status code name (e.g. ``UNAUTHENTICATED``), if the failure came from gRPC.
    """

    def __init__(
        self,
        message: str,
        reason: str | None = None,
        retry_after: int | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason
        self.retry_after = retry_after
        self.code = code

    def __str__(self) -> str:
        if self.retry_after is not None and "retry in" not in self.message:
            return f"{self.message} (retry in {self.retry_after} s)"
        return self.message


class NotLoggedIn(ClientError):
    """No session is stored in this client home."""

    def __init__(self) -> None:
        super().__init__("not logged in (run: conclave login USERNAME)", reason="NOT_LOGGED_IN")


class SessionEnded(ClientError):
    """The stored session no longer works (revoked, expired, or refresh token reused)."""


def error_from_rpc(err: grpc.RpcError, address: str, service: str = "auth") -> ClientError:
    """Maps a gRPC failure to a :class:`ClientError`.

    Args:
        err: The exception raised by a call.
        address: The server address, for messages about reachability.
        service: Which service was called (named in reachability messages).

    Returns:
        The client error (never raises).
    """
    code_fn = getattr(err, "code", None)
    code: grpc.StatusCode | None = code_fn() if callable(code_fn) else None
    details_fn = getattr(err, "details", None)
    details = str(details_fn() or "") if callable(details_fn) else ""
    trailers_fn = getattr(err, "trailing_metadata", None)
    trailers: dict[str, str] = {}
    if callable(trailers_fn):
        for key, value in trailers_fn() or ():
            trailers[str(key)] = value if isinstance(value, str) else value.decode()
    reason = trailers.get(REASON_HEADER) or None
    retry_after: int | None = None
    if RETRY_AFTER_HEADER in trailers:
        try:
            retry_after = max(0, int(float(trailers[RETRY_AFTER_HEADER])))
        except ValueError:
            retry_after = None
    name = code.name if code is not None else None
    if code == grpc.StatusCode.UNAVAILABLE and reason and details:
        # The server answered (it set a reason): one of *its* dependencies is down.
        message = f"{service} service: {details}"
    elif code in (grpc.StatusCode.UNAVAILABLE, None):
        message = f"{service} service unreachable at {address} (check: conclave status)"
    elif code == grpc.StatusCode.DEADLINE_EXCEEDED:
        message = f"{service} service at {address} did not answer in time"
    else:
        message = details or name or "request failed"
    return ClientError(message, reason=reason, retry_after=retry_after, code=name)


def _time(stamp: Timestamp, present: bool) -> datetime | None:
    return stamp.ToDatetime(tzinfo=UTC) if present else None


def default_device_name() -> str:
    """A display name for this device: ``<hostname> (cli)``, at most 64 characters."""
    host = "".join(ch for ch in platform.node() if ch.isprintable()).strip() or "conclave"
    return f"{host[:58]} (cli)"


@dataclass(frozen=True)
class Registration:
    """What Register returns; the secret and codes are shown to the user once.

    Attributes:
        account_id: New account id.
        username: Normalised username.
        totp_secret: Base32 TOTP secret (a secret).
        otpauth_uri: ``otpauth://`` URI carrying the secret (for QR codes).
        recovery_codes: Ten single-use recovery codes (secrets), inert until TOTP is
            confirmed by the first login.
        enrollment_expire_time: When the unconfirmed account is deleted.
    """

    account_id: str
    username: str
    totp_secret: str
    otpauth_uri: str
    recovery_codes: tuple[str, ...]
    enrollment_expire_time: datetime | None


@dataclass(frozen=True)
class LoginResult:
    """Outcome of a login (the tokens themselves went to the credentials file).

    Attributes:
        account_id: Account id.
        username: Username as stored locally (normalised where known).
        session_id: New session id.
        device_id: Device id the session is bound to.
        new_device: True when the server created a new device for this login.
        approval_pending: True when the device waits for approval by an existing device.
        totp_enrollment_confirmed: True when this login confirmed TOTP enrollment.
        recovery_codes_remaining: Unused recovery codes left.
        session_expire_time: Absolute end of the session.
    """

    account_id: str
    username: str
    session_id: str
    device_id: str
    new_device: bool
    approval_pending: bool
    totp_enrollment_confirmed: bool
    recovery_codes_remaining: int
    session_expire_time: datetime | None


@dataclass(frozen=True)
class SessionInfo:
    """One live session of the account.

    Attributes:
        session_id: Session id.
        device_id: Device id.
        device_name: Device display name.
        platform: Platform name without prefix (``CLI``, ``IOS``, ...).
        current: True for the session making the request.
        created: When the session was opened.
        last_seen: Last use of the session.
        idle_expires: When it ends if unused.
        expires: Absolute end.
    """

    session_id: str
    device_id: str
    device_name: str
    platform: str
    current: bool
    created: datetime | None
    last_seen: datetime | None
    idle_expires: datetime | None
    expires: datetime | None


@dataclass(frozen=True)
class AuditEntry:
    """One security event of the account.

    Attributes:
        event_id: Event id.
        kind: Kind without prefix (``LOGIN_SUCCEEDED``, ...).
        time: When it happened.
        session_id: Session involved, or empty.
        device_id: Device involved, or empty.
        device_name: Device name at the time, or empty.
        detail: Human-readable detail (never a secret).
    """

    event_id: str
    kind: str
    time: datetime | None
    session_id: str
    device_id: str
    device_name: str
    detail: str


def _enum_name(enum_type: Any, value: int, prefix: str) -> str:
    try:
        name = str(enum_type.Name(value))
    except ValueError:
        return str(value)
    return name.removeprefix(prefix)


class AuthClient:
    """Synchronous AuthService client bound to one client home.

    Args:
        address: ``host:port`` of the auth service.
        store: Where the session is kept.
        stub: An AuthService stub; by default one on an insecure channel to ``address``
            (tests pass a fake here).
        timeout: Seconds per RPC.
        now: Clock (UTC), injectable for tests.
    """

    def __init__(
        self,
        address: str,
        store: CredentialStore,
        *,
        stub: auth_pb2_grpc.AuthServiceStub | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.address = address
        self.store = store
        self._timeout = timeout
        self._now = now
        self._channel: grpc.Channel | None = None
        if stub is None:
            self._channel = grpc.insecure_channel(address)
            stub = auth_pb2_grpc.AuthServiceStub(self._channel)
        self._stub = stub

    def close(self) -> None:
        """Closes the channel (if this client opened it)."""
        if self._channel is not None:
            self._channel.close()
            self._channel = None

    def __enter__(self) -> AuthClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except grpc.RpcError as err:
            raise error_from_rpc(err, self.address) from None

    # -- anonymous RPCs -----------------------------------------------------------------

    def register(self, username: str, password: str) -> Registration:
        """Creates an account and starts TOTP enrollment (no session yet).

        Args:
            username: Wanted username.
            password: New password.

        Returns:
            The TOTP secret, URI and recovery codes to show the user.

        Raises:
            ClientError: e.g. reason ``WEAK_PASSWORD``, code ``ALREADY_EXISTS``.
        """
        request = auth_pb2.RegisterRequest(username=username, password=password)
        reply = self._call(lambda: self._stub.Register(request, timeout=self._timeout))
        return Registration(
            account_id=reply.account_id,
            username=reply.username,
            totp_secret=reply.totp_secret,
            otpauth_uri=reply.otpauth_uri,
            recovery_codes=tuple(reply.recovery_codes),
            enrollment_expire_time=_time(
                reply.enrollment_expire_time, reply.HasField("enrollment_expire_time")
            ),
        )

    def login(
        self,
        username: str,
        password: str,
        *,
        totp_code: str | None = None,
        recovery_code: str | None = None,
        device_name: str | None = None,
    ) -> LoginResult:
        """Logs in with password + one second factor and stores the new session.

        The device id stored for the same user (kept across logouts) is sent so the server
        reuses the device. The first login with a valid TOTP code confirms enrollment.

        Args:
            username: Username as typed.
            password: Password.
            totp_code: Current 6-digit TOTP code.
            recovery_code: One unused recovery code (instead of ``totp_code``).
            device_name: Display name of this device (default ``<hostname> (cli)``).

        Returns:
            The session summary.

        Raises:
            ClientError: Wrong credentials, rate limit, device cap, another user's session
                stored in this home, ...
        """
        if (totp_code is None) == (recovery_code is None):
            raise ClientError("give exactly one of a TOTP code or a recovery code")
        stored = self.store.load()
        device_id = ""
        if stored is not None:
            same_user = normalise_username(stored.username) == normalise_username(username)
            if stored.logged_in and not same_user:
                raise ClientError(
                    f"logged in as {stored.username} in this CONCLAVE_HOME "
                    "(run: conclave logout, or use another CONCLAVE_HOME)"
                )
            if same_user:
                device_id = stored.device_id
        request = auth_pb2.LoginRequest(
            username=username,
            password=password,
            device=auth_pb2.DeviceInfo(
                name=device_name or default_device_name(), platform=auth_pb2.PLATFORM_CLI
            ),
            device_id=device_id,
        )
        if totp_code is not None:
            request.totp_code = totp_code
        else:
            request.recovery_code = recovery_code or ""
        try:
            reply = self._stub.Login(request, timeout=self._timeout)
        except grpc.RpcError as err:
            error = error_from_rpc(err, self.address)
            if error.code == "NOT_FOUND" and device_id and stored is not None:
                # The stored device was removed (from another session): forget it so the
                # next attempt logs in as a new device. The code may be spent already.
                self.store.save(stored.logged_out(keep_device=False))
                error = ClientError(
                    "this device was removed from the account; log in again with a new code "
                    "to register it as a new device",
                    reason=error.reason,
                    code=error.code,
                )
            raise error from None
        tokens = reply.tokens
        if stored is not None and stored.account_id == tokens.account_id:
            base = stored
        else:
            base = Credentials(account_id=tokens.account_id, username=normalise_username(username))
        credentials = self._apply_tokens(base, tokens)
        with self.store.locked():
            self.store.save(credentials)
        return LoginResult(
            account_id=tokens.account_id,
            username=credentials.username,
            session_id=tokens.session_id,
            device_id=tokens.device_id,
            new_device=reply.new_device,
            approval_pending=reply.approval_state == auth_pb2.DEVICE_APPROVAL_STATE_PENDING,
            totp_enrollment_confirmed=reply.totp_enrollment_confirmed,
            recovery_codes_remaining=reply.recovery_codes_remaining,
            session_expire_time=credentials.session_expire_time,
        )

    @staticmethod
    def _apply_tokens(base: Credentials, tokens: auth_pb2.SessionTokens) -> Credentials:
        return base.with_tokens(
            access_token=tokens.access_token,
            access_token_expire_time=_time(
                tokens.access_token_expire_time, tokens.HasField("access_token_expire_time")
            ),
            refresh_token=tokens.refresh_token,
            refresh_token_expire_time=_time(
                tokens.refresh_token_expire_time, tokens.HasField("refresh_token_expire_time")
            ),
            session_id=tokens.session_id or base.session_id,
            device_id=tokens.device_id or base.device_id,
            session_expire_time=_time(
                tokens.session_expire_time, tokens.HasField("session_expire_time")
            ),
        )

    # -- session handling ---------------------------------------------------------------

    def credentials(self) -> Credentials:
        """Returns the stored session.

        Raises:
            NotLoggedIn: No session stored.
        """
        stored = self.store.load()
        if stored is None or not stored.logged_in:
            raise NotLoggedIn
        return stored

    def _needs_refresh(self, credentials: Credentials) -> bool:
        expiry = credentials.access_token_expire_time
        if not credentials.access_token or expiry is None:
            return True
        return expiry - self._now() <= REFRESH_MARGIN

    def refresh(self, force: bool = False) -> Credentials:
        """Rotates the session's tokens if the access token is (nearly) expired.

        Runs under the credentials lock and re-reads the file, so concurrent processes never
        present the same refresh token twice. The rotated tokens are on disk before this
        returns.

        Args:
            force: Refresh even if the stored access token still looks valid.

        Returns:
            Credentials with a usable access token.

        Raises:
            NotLoggedIn: No session stored.
            SessionEnded: The server refused the refresh token (the local session is
                cleared; the device id is kept).
            ClientError: Any other failure (the stored tokens are unchanged).
        """
        return self._refresh(force=force, stale_refresh_token=None)

    def _refresh(self, *, force: bool, stale_refresh_token: str | None) -> Credentials:
        with self.store.locked():
            current = self.credentials()
            rotated_elsewhere = (
                stale_refresh_token is not None and current.refresh_token != stale_refresh_token
            )
            if rotated_elsewhere or not (force or self._needs_refresh(current)):
                return current
            request = auth_pb2.RefreshSessionRequest(refresh_token=current.refresh_token)
            try:
                reply = self._stub.RefreshSession(request, timeout=self._timeout)
            except grpc.RpcError as err:
                error = error_from_rpc(err, self.address)
                if error.code == "UNAUTHENTICATED":
                    self.store.save(current.logged_out(keep_device=True))
                    why = {
                        "REFRESH_TOKEN_REUSED": "its refresh token was used twice, so the "
                        "server revoked it"
                    }.get(error.reason or "", error.message)
                    raise SessionEnded(
                        f"session ended: {why} (run: conclave login {current.username})",
                        reason=error.reason,
                        code=error.code,
                    ) from None
                raise error from None
            updated = self._apply_tokens(current, reply.tokens)
            self.store.save(updated)  # durable before the new access token is ever used
            return updated

    def authorized_metadata(self) -> tuple[tuple[str, str], ...]:
        """Returns gRPC metadata carrying a valid access token, refreshing first if needed.

        Returns:
            ``(("authorization", "Bearer <access token>"),)``.

        Raises:
            NotLoggedIn: No session stored.
            SessionEnded: The session cannot be refreshed any more.
        """
        credentials = self.credentials()
        if self._needs_refresh(credentials):
            credentials = self.refresh()
        return (("authorization", f"Bearer {credentials.access_token}"),)

    def _authorized(self, call: Callable[[tuple[tuple[str, str], ...]], T]) -> T:
        return self.authorized(call)

    def authorized(
        self,
        call: Callable[[tuple[tuple[str, str], ...]], T],
        *,
        service: str = "auth",
        address: str | None = None,
    ) -> T:
        """Runs ``call(metadata)`` with this session's access token, on any service.

        The token is refreshed first if it is (nearly) expired; a call that still meets
        ``UNAUTHENTICATED`` (other than ``FRESH_AUTH_REQUIRED``) refreshes once and is
        retried once.

        Args:
            call: Makes the RPC with the given metadata.
            service: Name of the service called, for error messages.
            address: Its address (default: the auth service's).

        Raises:
            NotLoggedIn: No session stored.
            SessionEnded: The session cannot be refreshed any more.
            ClientError: The call failed.
        """
        where = address or self.address
        metadata = self.authorized_metadata()
        try:
            return call(metadata)
        except grpc.RpcError as err:
            error = error_from_rpc(err, where, service)
            if error.code != "UNAUTHENTICATED" or error.reason == "FRESH_AUTH_REQUIRED":
                raise error from None
        # The token was refused although it looked valid (clock skew, key rotation, a
        # restarted server): refresh once and retry once.
        used = metadata[0][1].removeprefix("Bearer ")
        stored = self.credentials()
        if stored.access_token == used:
            credentials = self._refresh(force=True, stale_refresh_token=stored.refresh_token)
        else:  # another process refreshed meanwhile: its token is the one to try
            credentials = stored
        metadata = (("authorization", f"Bearer {credentials.access_token}"),)
        try:
            return call(metadata)
        except grpc.RpcError as err:
            raise error_from_rpc(err, where, service) from None

    # -- session RPCs -------------------------------------------------------------------

    def reauthenticate(
        self, password: str, *, totp_code: str | None = None, recovery_code: str | None = None
    ) -> Credentials:
        """Re-checks password + second factor; stores the fresh access token it returns.

        ``AUTH_MODE_FRESH`` RPCs (export, account deletion) need a token whose
        ``auth_time`` is recent. The refresh token is unchanged, so only the access token
        (and its expiry) is replaced, under the credentials lock.

        Raises:
            ClientError: ``PERMISSION_DENIED`` (wrong password or code), rate limits, ...
        """
        if (totp_code is None) == (recovery_code is None):
            raise ClientError("give exactly one of a TOTP code or a recovery code")
        request = auth_pb2.ReauthenticateRequest(password=password)
        if totp_code is not None:
            request.totp_code = totp_code
        else:
            request.recovery_code = recovery_code or ""
        reply = self._authorized(
            lambda md: self._stub.Reauthenticate(request, metadata=md, timeout=self._timeout)
        )
        with self.store.locked():
            current = self.credentials()
            updated = replace(
                current,
                access_token=reply.access_token,
                access_token_expire_time=_time(
                    reply.access_token_expire_time, reply.HasField("access_token_expire_time")
                ),
            )
            self.store.save(updated)
        return updated

    def logout(self, remove_device: bool = False) -> bool:
        """Ends the current session on the server and forgets it locally.

        Args:
            remove_device: Also remove this device (its keys) from the account; the next
                login then registers a new device.

        Returns:
            True if the server ended the session now; False if it had already ended.

        Raises:
            NotLoggedIn: No session stored.
            ClientError: The server could not be reached (the session stays stored so the
                logout can be retried).
        """
        current = self.credentials()
        request = auth_pb2.LogoutRequest(remove_device=remove_device)
        ended_now = True
        try:
            self._authorized(
                lambda md: self._stub.Logout(request, metadata=md, timeout=self._timeout)
            )
        except SessionEnded:
            ended_now = False
        except ClientError as err:
            if err.code != "UNAUTHENTICATED":
                raise
            ended_now = False
        latest = self.store.load() or current
        self.store.save(latest.logged_out(keep_device=not remove_device))
        return ended_now

    def lookup_accounts(self, usernames: Sequence[str]) -> dict[str, str]:
        """Resolves usernames to account ids (LookupAccounts).

        Args:
            usernames: At most 100 names as typed.

        Returns:
            Normalised username -> account id for the confirmed accounts found (unknown
            names are simply absent).
        """
        request = auth_pb2.LookupAccountsRequest(usernames=list(usernames))
        reply = self._authorized(
            lambda md: self._stub.LookupAccounts(request, metadata=md, timeout=self._timeout)
        )
        return {a.username: a.account_id for a in reply.accounts}

    def lookup_account_ids(self, account_ids: Sequence[str]) -> dict[str, str]:
        """Resolves account ids to usernames (LookupAccounts).

        Args:
            account_ids: At most 100 account ids.

        Returns:
            Account id -> normalised username for the confirmed accounts found.
        """
        request = auth_pb2.LookupAccountsRequest(account_ids=list(account_ids))
        reply = self._authorized(
            lambda md: self._stub.LookupAccounts(request, metadata=md, timeout=self._timeout)
        )
        return {a.account_id: a.username for a in reply.accounts}

    def list_sessions(self) -> list[SessionInfo]:
        """Lists the account's live sessions (newest use first)."""
        request = auth_pb2.ListSessionsRequest()
        reply = self._authorized(
            lambda md: self._stub.ListSessions(request, metadata=md, timeout=self._timeout)
        )
        return [
            SessionInfo(
                session_id=s.session_id,
                device_id=s.device.device_id,
                device_name=s.device.name,
                platform=_enum_name(auth_pb2.Platform, s.device.platform, "PLATFORM_"),
                current=s.current,
                created=_time(s.create_time, s.HasField("create_time")),
                last_seen=_time(s.last_used_time, s.HasField("last_used_time")),
                idle_expires=_time(s.idle_expire_time, s.HasField("idle_expire_time")),
                expires=_time(s.absolute_expire_time, s.HasField("absolute_expire_time")),
            )
            for s in reply.sessions
        ]

    def revoke_session(self, session_id: str, remove_device: bool = False) -> bool:
        """Ends one session of the account.

        Args:
            session_id: Session to end (may be the current one).
            remove_device: Also remove that session's device.

        Returns:
            True when the revoked session was this home's own (now forgotten locally).
        """
        request = auth_pb2.RevokeSessionRequest(session_id=session_id, remove_device=remove_device)
        self._authorized(
            lambda md: self._stub.RevokeSession(request, metadata=md, timeout=self._timeout)
        )
        stored = self.store.load()
        if stored is not None and stored.session_id == session_id:
            self.store.save(stored.logged_out(keep_device=not remove_device))
            return True
        return False

    def revoke_other_sessions(self, remove_devices: bool = False) -> int:
        """Ends every session of the account except this one; returns how many ended."""
        request = auth_pb2.RevokeOtherSessionsRequest(remove_devices=remove_devices)
        reply = self._authorized(
            lambda md: self._stub.RevokeOtherSessions(request, metadata=md, timeout=self._timeout)
        )
        return int(reply.revoked_count)

    def _list_audit_call(
        self, request: auth_pb2.ListAuditEventsRequest
    ) -> Callable[[tuple[tuple[str, str], ...]], auth_pb2.ListAuditEventsResponse]:
        def call(metadata: tuple[tuple[str, str], ...]) -> auth_pb2.ListAuditEventsResponse:
            return self._stub.ListAuditEvents(request, metadata=metadata, timeout=self._timeout)

        return call

    def audit(self, limit: int = 50, kinds: Sequence[str] = ()) -> list[AuditEntry]:
        """Returns up to ``limit`` audit events, newest first (fetching pages as needed).

        Args:
            limit: Maximum number of events (at least 1).
            kinds: Only these kinds (names with or without the ``AUDIT_EVENT_KIND_`` prefix).

        Raises:
            ClientError: An unknown kind, or any failure of the call.
        """
        kind_values: list[auth_pb2.AuditEventKind.ValueType] = []
        for kind in kinds:
            name = kind.upper()
            if not name.startswith("AUDIT_EVENT_KIND_"):
                name = "AUDIT_EVENT_KIND_" + name
            try:
                kind_values.append(auth_pb2.AuditEventKind.Value(name))
            except ValueError:
                raise ClientError(f"unknown audit event kind: {kind}") from None
        entries: list[AuditEntry] = []
        token = ""
        while len(entries) < limit:
            page = types_pb2.PageRequest(
                page_size=min(limit - len(entries), AUDIT_PAGE_MAX), page_token=token
            )
            request = auth_pb2.ListAuditEventsRequest(page=page, kinds=kind_values)
            reply = self._authorized(self._list_audit_call(request))
            entries.extend(
                AuditEntry(
                    event_id=e.event_id,
                    kind=_enum_name(auth_pb2.AuditEventKind, e.kind, "AUDIT_EVENT_KIND_"),
                    time=_time(e.event_time, e.HasField("event_time")),
                    session_id=e.session_id,
                    device_id=e.device_id,
                    device_name=e.device_name,
                    detail=e.detail,
                )
                for e in reply.events
            )
            token = reply.page.next_page_token
            if not token or not reply.events:
                break
        return entries[:limit]
