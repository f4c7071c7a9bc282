"""Ed25519 site identities (secure_fl.crypto.identity): RFC 8032 known answers, round trip, tampering."""

from __future__ import annotations

import pytest

from secure_fl.crypto import identity

# RFC 8032 §7.1, TEST 1 (empty message) and TEST 2 (one byte 0x72)
RFC8032 = [
    (
        "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
        "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
        "",
        "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e06522490155"
        "5fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b",
    ),
    (
        "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
        "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
        "72",
        "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da"
        "085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00",
    ),
]


@pytest.mark.parametrize("sk,pk,msg,sig", RFC8032)
def test_rfc8032_known_answers(sk: str, pk: str, msg: str, sig: str) -> None:
    private, public, message, signature = map(bytes.fromhex, (sk, pk, msg, sig))
    assert identity.public_key(private) == public
    assert identity.sign(private, message) == signature
    assert identity.verify(public, message, signature)


def test_round_trip_and_every_tamper_is_refused() -> None:
    private, public = identity.generate()
    assert len(private) == len(public) == identity.KEY_BYTES and identity.public_key(private) == public
    sig = identity.sign(private, b"round 3 keys")
    assert len(sig) == identity.SIGNATURE_BYTES and identity.verify(public, b"round 3 keys", sig)
    assert not identity.verify(public, b"round 4 keys", sig)
    assert not identity.verify(public, b"round 3 keys", sig[:-1] + bytes([sig[-1] ^ 1]))
    assert not identity.verify(public, b"round 3 keys", sig[:10])
    other = identity.generate()[1]
    assert not identity.verify(other, b"round 3 keys", sig)
    assert identity.generate()[0] != private  # fresh from the CSPRNG


def test_malformed_keys_are_input_errors() -> None:
    with pytest.raises(ValueError, match="public key is 32 raw bytes, got 31 bytes"):
        identity.verify(b"\x01" * 31, b"m", b"\x00" * 64)
    with pytest.raises(ValueError, match="private key is 32 raw bytes, got a str"):
        identity.sign("secret", b"m")  # type: ignore[arg-type]
