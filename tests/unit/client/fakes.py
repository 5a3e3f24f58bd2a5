"""A fake AuthService at the gRPC-stub boundary (unit tests only).

It mimics the contract closely enough for the client: refresh tokens rotate and a reused one
revokes the session, access tokens are checked on session RPCs, errors carry the
``conclave-error-reason`` / ``retry-after`` trailers.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import grpc
from conclave.auth.v1 import auth_pb2, auth_pb2_grpc
from google.protobuf.timestamp_pb2 import Timestamp

Metadata = tuple[tuple[str, str], ...] | None


class FakeRpcError(grpc.RpcError):
    """What a failed sync call raises: code, details and trailers."""

    def __init__(
        self, code: grpc.StatusCode, details: str, trailers: tuple[tuple[str, str], ...] = ()
    ) -> None:
        super().__init__(details)
        self._code = code
        self._details = details
        self._trailers = trailers

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def trailing_metadata(self) -> Any:
        return self._trailers


def rpc_error(
    code: grpc.StatusCode, details: str, reason: str | None = None, retry_after: int | None = None
) -> FakeRpcError:
    trailers: list[tuple[str, str]] = []
    if reason:
        trailers.append(("conclave-error-reason", reason))
    if retry_after is not None:
        trailers.append(("retry-after", str(retry_after)))
    return FakeRpcError(code, details, tuple(trailers))


@dataclass
class FakeSession:
    session_id: str
    account_id: str
    device_id: str
    device_name: str
    refresh_token: str
    access_token: str
    used_refresh_tokens: set[str] = field(default_factory=set)
    revoked: bool = False


@dataclass
class FakeAccount:
    account_id: str
    username: str
    password: str
    confirmed: bool = False
    devices: dict[str, str] = field(default_factory=dict)  # id -> name


def ts(value: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(value)
    return stamp


class FakeAuthStub:
    """Implements the AuthService stub methods the client uses."""

    TOTP = "123456"

    def __init__(self, now: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.now = now
        self.accounts: dict[str, FakeAccount] = {}
        self.sessions: dict[str, FakeSession] = {}
        self.calls: list[str] = []
        self.fail: dict[str, FakeRpcError] = {}
        self.on_call: Callable[[str], None] | None = None
        self.audit_events: list[auth_pb2.AuditEvent] = []
        self.access_ttl = timedelta(minutes=5)

    # helpers --------------------------------------------------------------------------
    def _enter(self, name: str) -> None:
        self.calls.append(name)
        if self.on_call is not None:
            self.on_call(name)
        if name in self.fail:
            raise self.fail.pop(name)

    def _tokens(self, session: FakeSession) -> auth_pb2.SessionTokens:
        now = self.now()
        return auth_pb2.SessionTokens(
            access_token=session.access_token,
            access_token_expire_time=ts(now + self.access_ttl),
            refresh_token=session.refresh_token,
            refresh_token_expire_time=ts(now + timedelta(hours=1)),
            session_id=session.session_id,
            account_id=session.account_id,
            device_id=session.device_id,
            session_expire_time=ts(now + timedelta(hours=12)),
        )

    def _session(self, metadata: Metadata) -> FakeSession:
        token = dict(metadata or ()).get("authorization", "").removeprefix("Bearer ")
        for session in self.sessions.values():
            if session.access_token == token and not session.revoked:
                return session
        raise rpc_error(grpc.StatusCode.UNAUTHENTICATED, "invalid access token")

    def expire_access_tokens(self) -> None:
        """Server-side: every current access token stops working (e.g. key rotation)."""
        for session in self.sessions.values():
            session.access_token = "at-" + secrets.token_hex(8)

    # AuthService ----------------------------------------------------------------------
    def Register(
        self, request: auth_pb2.RegisterRequest, timeout: float | None = None
    ) -> auth_pb2.RegisterResponse:
        self._enter("Register")
        if len(request.password) < 12:
            raise rpc_error(
                grpc.StatusCode.INVALID_ARGUMENT,
                "password too short: at least 12 characters",
                "WEAK_PASSWORD",
            )
        name = request.username.casefold()
        if name in self.accounts:
            raise rpc_error(grpc.StatusCode.ALREADY_EXISTS, "username taken")
        account = FakeAccount(str(uuid.uuid4()), name, request.password)
        self.accounts[name] = account
        return auth_pb2.RegisterResponse(
            account_id=account.account_id,
            username=name,
            totp_secret="JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP",
            otpauth_uri=f"otpauth://totp/Conclave:{name}?secret=JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"
            "&issuer=Conclave&algorithm=SHA1&digits=6&period=30",
            enrollment_token="enroll-" + secrets.token_hex(8),
            enrollment_expire_time=ts(self.now() + timedelta(hours=24)),
            recovery_codes=[f"AAAA-BBBB-CCCC-{i:04d}" for i in range(10)],
        )

    def Login(
        self, request: auth_pb2.LoginRequest, timeout: float | None = None
    ) -> auth_pb2.LoginResponse:
        self._enter("Login")
        account = self.accounts.get(request.username.casefold())
        factor = request.WhichOneof("second_factor")
        ok_factor = factor == "totp_code" and request.totp_code == self.TOTP
        ok_factor = ok_factor or (
            factor == "recovery_code" and account is not None and account.confirmed
        )
        if account is None or account.password != request.password or not ok_factor:
            raise rpc_error(grpc.StatusCode.UNAUTHENTICATED, "wrong username, password or code")
        confirmed_now = not account.confirmed
        account.confirmed = True
        new_device = not request.device_id
        if request.device_id:
            if request.device_id not in account.devices:
                raise rpc_error(grpc.StatusCode.NOT_FOUND, "no such device")
            device_id = request.device_id
            for s in self.sessions.values():
                if s.device_id == device_id:
                    s.revoked = True
        else:
            device_id = str(uuid.uuid4())
        account.devices[device_id] = request.device.name
        session = FakeSession(
            session_id=str(uuid.uuid4()),
            account_id=account.account_id,
            device_id=device_id,
            device_name=request.device.name,
            refresh_token="rt-" + secrets.token_hex(8),
            access_token="at-" + secrets.token_hex(8),
        )
        self.sessions[session.session_id] = session
        self.audit_events.insert(
            0,
            auth_pb2.AuditEvent(
                event_id=str(uuid.uuid4()),
                kind=auth_pb2.AUDIT_EVENT_KIND_LOGIN_SUCCEEDED,
                event_time=ts(self.now()),
                session_id=session.session_id,
                device_id=device_id,
                device_name=request.device.name,
                detail="login",
            ),
        )
        return auth_pb2.LoginResponse(
            tokens=self._tokens(session),
            new_device=new_device,
            approval_state=auth_pb2.DEVICE_APPROVAL_STATE_APPROVED,
            totp_enrollment_confirmed=confirmed_now,
            recovery_codes_remaining=10 if factor == "totp_code" else 9,
        )

    def RefreshSession(
        self, request: auth_pb2.RefreshSessionRequest, timeout: float | None = None
    ) -> auth_pb2.RefreshSessionResponse:
        self._enter("RefreshSession")
        for session in self.sessions.values():
            if request.refresh_token in session.used_refresh_tokens:
                session.revoked = True
                raise rpc_error(
                    grpc.StatusCode.UNAUTHENTICATED,
                    "refresh token already used; session revoked",
                    "REFRESH_TOKEN_REUSED",
                )
            if session.refresh_token == request.refresh_token and not session.revoked:
                session.used_refresh_tokens.add(session.refresh_token)
                session.refresh_token = "rt-" + secrets.token_hex(8)
                session.access_token = "at-" + secrets.token_hex(8)
                return auth_pb2.RefreshSessionResponse(tokens=self._tokens(session))
        raise rpc_error(grpc.StatusCode.UNAUTHENTICATED, "unknown refresh token")

    def Logout(
        self,
        request: auth_pb2.LogoutRequest,
        metadata: Metadata = None,
        timeout: float | None = None,
    ) -> auth_pb2.LogoutResponse:
        self._enter("Logout")
        session = self._session(metadata)
        session.revoked = True
        if request.remove_device:
            for account in self.accounts.values():
                account.devices.pop(session.device_id, None)
        return auth_pb2.LogoutResponse()

    def LookupAccounts(
        self,
        request: auth_pb2.LookupAccountsRequest,
        metadata: Metadata = None,
        timeout: float | None = None,
    ) -> auth_pb2.LookupAccountsResponse:
        self._enter("LookupAccounts")
        self._session(metadata)
        wanted = {name.casefold() for name in request.usernames}
        return auth_pb2.LookupAccountsResponse(
            accounts=[
                auth_pb2.AccountRef(account_id=a.account_id, username=a.username)
                for a in self.accounts.values()
                if a.username in wanted and a.confirmed
            ]
        )

    def ListSessions(
        self,
        request: auth_pb2.ListSessionsRequest,
        metadata: Metadata = None,
        timeout: float | None = None,
    ) -> auth_pb2.ListSessionsResponse:
        self._enter("ListSessions")
        me = self._session(metadata)
        now = self.now()
        return auth_pb2.ListSessionsResponse(
            sessions=[
                auth_pb2.Session(
                    session_id=s.session_id,
                    device=auth_pb2.Device(
                        device_id=s.device_id, name=s.device_name, platform=auth_pb2.PLATFORM_CLI
                    ),
                    create_time=ts(now),
                    last_used_time=ts(now),
                    idle_expire_time=ts(now + timedelta(minutes=30)),
                    absolute_expire_time=ts(now + timedelta(hours=12)),
                    current=s is me,
                )
                for s in self.sessions.values()
                if s.account_id == me.account_id and not s.revoked
            ]
        )

    def RevokeSession(
        self,
        request: auth_pb2.RevokeSessionRequest,
        metadata: Metadata = None,
        timeout: float | None = None,
    ) -> auth_pb2.RevokeSessionResponse:
        self._enter("RevokeSession")
        me = self._session(metadata)
        target = self.sessions.get(request.session_id)
        if target is None or target.revoked or target.account_id != me.account_id:
            raise rpc_error(grpc.StatusCode.NOT_FOUND, "no such session")
        target.revoked = True
        return auth_pb2.RevokeSessionResponse()

    def RevokeOtherSessions(
        self,
        request: auth_pb2.RevokeOtherSessionsRequest,
        metadata: Metadata = None,
        timeout: float | None = None,
    ) -> auth_pb2.RevokeOtherSessionsResponse:
        self._enter("RevokeOtherSessions")
        me = self._session(metadata)
        count = 0
        for s in self.sessions.values():
            if s.account_id == me.account_id and s is not me and not s.revoked:
                s.revoked = True
                count += 1
        return auth_pb2.RevokeOtherSessionsResponse(revoked_count=count)

    def ListAuditEvents(
        self,
        request: auth_pb2.ListAuditEventsRequest,
        metadata: Metadata = None,
        timeout: float | None = None,
    ) -> auth_pb2.ListAuditEventsResponse:
        self._enter("ListAuditEvents")
        self._session(metadata)
        start = int(request.page.page_token or "0")
        size = request.page.page_size or 50
        events = [e for e in self.audit_events if not request.kinds or e.kind in request.kinds]
        page = events[start : start + size]
        token = str(start + size) if start + size < len(events) else ""
        reply = auth_pb2.ListAuditEventsResponse(events=page)
        reply.page.next_page_token = token
        return reply


def as_stub(fake: FakeAuthStub) -> auth_pb2_grpc.AuthServiceStub:
    """The fake, typed as the real stub for the client's constructor."""
    return cast(auth_pb2_grpc.AuthServiceStub, fake)
