"""Sealed-sender certificates from auth carry the identity the key directory publishes."""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import pytest
from conclave.auth.v1 import auth_pb2, auth_pb2_grpc
from conclave.keys.v1 import keys_pb2, keys_pb2_grpc
from conclave_crypto.sealed_sender import SenderCertificate
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from tests.integration.client.test_cli_keys import user
from tests.integration.stack.conftest import RunningStack

pytestmark = pytest.mark.integration


def test_certificate_binds_the_published_identity(stack: RunningStack, tmp_path: Path) -> None:
    """A logged-in device (keys published by `conclave login`) gets a certificate that
    conclave_crypto accepts with auth's published key, naming exactly its directory identity."""
    alice = user(stack, tmp_path / "alice")
    login = alice.login()
    with grpc.insecure_channel(stack.grpc["auth"]) as channel:
        auth = auth_pb2_grpc.AuthServiceStub(channel)
        issued = auth.IssueSenderCertificate(
            auth_pb2.IssueSenderCertificateRequest(), metadata=alice.metadata(), timeout=10
        )
        published = auth.GetTokenVerificationKeys(
            auth_pb2.GetTokenVerificationKeysRequest(), timeout=10
        )
        with pytest.raises(grpc.RpcError) as err:
            auth.IssueSenderCertificate(auth_pb2.IssueSenderCertificateRequest(), timeout=10)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with grpc.insecure_channel(stack.grpc["keys"]) as channel:
        directory = keys_pb2_grpc.KeyServiceStub(channel).LookupIdentityKeys(
            keys_pb2.LookupIdentityKeysRequest(
                account_id=login["account_id"], device_id=login["device_id"]
            ),
            metadata=alice.metadata(),
            timeout=10,
        )
    (server_key,) = [
        k for k in published.keys if k.purpose == auth_pb2.KEY_PURPOSE_SENDER_CERTIFICATE
    ]
    assert server_key.key_id == issued.key_id
    certificate = SenderCertificate.parse(issued.certificate)
    trusted = {int(server_key.key_id): Ed25519PublicKey.from_public_bytes(server_key.public_key)}
    assert certificate.verify(trusted, now_ms=int(time.time() * 1000))
    assert (certificate.user_id, certificate.device_id) == (login["account_id"], login["device_id"])
    (device,) = directory.devices
    assert certificate.identity.encode() == (
        device.identity_key.signing_public_key + device.identity_key.agreement_public_key
    )
    lifetime_s = certificate.expires_ms / 1000 - time.time()
    assert 23 * 3600 < lifetime_s <= 24 * 3600
