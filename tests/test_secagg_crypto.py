"""Known-answer, round-trip and tamper tests of the masking primitives (secure_fl.crypto)."""

from __future__ import annotations

import itertools
import os

import numpy as np
import pytest

from secure_fl.crypto import aead, kdf, kex, prg, shamir

# ----------------------------------------------------------------- X25519 (RFC 7748)


def test_x25519_rfc7748_section_6_1_alice_and_bob() -> None:
    a_priv = bytes.fromhex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
    a_pub = bytes.fromhex("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
    b_priv = bytes.fromhex("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb")
    b_pub = bytes.fromhex("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f")
    shared = bytes.fromhex("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742")
    assert kex.public_bytes(a_priv) == a_pub
    assert kex.public_bytes(b_priv) == b_pub
    assert kex.exchange(a_priv, b_pub) == shared
    assert kex.exchange(b_priv, a_pub) == shared


def test_x25519_rfc7748_section_5_2_scalar_multiplication() -> None:
    scalar = bytes.fromhex("a546e36bf0527c9d3b16154b82465edd62144c0ac1fc5a18506a2244ba449ac4")
    u = bytes.fromhex("e6db6867583030db3594c1a424b15f7c726624ec26b3353b10a903a6d0ab1c4c")
    out = bytes.fromhex("c3da55379de9c6908e94ea4df28d084f32eccf03491c71f754b4075577a28552")
    assert kex.exchange(scalar, u) == out


def test_x25519_fresh_pairs_agree_and_differ() -> None:
    a, b = kex.generate_keypair(), kex.generate_keypair()
    assert a.private != b.private and a.public != b.public
    assert kex.exchange(a.private, b.public) == kex.exchange(b.private, a.public)
    assert "hidden" in repr(a) and a.private.hex() not in repr(a)


def test_x25519_refuses_bad_keys() -> None:
    a = kex.generate_keypair()
    with pytest.raises(ValueError, match="32 bytes, got 31 bytes"):
        kex.exchange(a.private, a.public[:31])
    with pytest.raises(ValueError, match="private key is 32 bytes"):
        kex.exchange(a.private[:5], a.public)
    with pytest.raises(ValueError, match="refused the peer public key"):
        kex.exchange(a.private, bytes(32))  # the point 0 has low order: all-zero shared secret


# ----------------------------------------------------------------- HKDF (RFC 5869)


def test_hkdf_rfc5869_test_case_1() -> None:
    okm = kdf.hkdf_sha256(
        bytes.fromhex("0b" * 22),
        42,
        salt=bytes.fromhex("000102030405060708090a0b0c"),
        info=bytes.fromhex("f0f1f2f3f4f5f6f7f8f9"),
    )
    assert okm.hex() == "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865"


def test_hkdf_rfc5869_test_case_3_empty_salt_and_info() -> None:
    okm = kdf.hkdf_sha256(bytes.fromhex("0b" * 22), 42, salt=b"", info=b"")
    assert okm.hex() == "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d9d201395faa4b61a96c8"


def test_hkdf_refuses_bad_lengths() -> None:
    with pytest.raises(ValueError, match="length must be an integer in"):
        kdf.hkdf_sha256(b"x", 0)
    with pytest.raises(ValueError, match="length must be an integer in"):
        kdf.hkdf_sha256(b"x", 255 * 32 + 1)


# ----------------------------------------------------------------- AES-256-GCM


def test_aes_gcm_known_answers_mcgrew_viega_cases_13_and_14() -> None:
    key, nonce = bytes(32), bytes(12)
    assert aead.seal(key, b"", b"", nonce=nonce) == nonce + bytes.fromhex("530f8afbc74536b9a963b4f1c4cb738b")
    sealed = aead.seal(key, bytes(16), b"", nonce=nonce)
    assert sealed[12:].hex() == "cea7403d4d606b6e074ec5d3baf39d18" + "d0d1c8a799996bf0265b98b5d48ab919"


def _ad(round: int = 3, sender: str = "a", receiver: str = "b") -> bytes:
    return aead.associated_data("secagg-share", round, sender, receiver)


def test_aead_round_trip_and_random_nonces() -> None:
    key = os.urandom(32)
    one, two = aead.seal(key, b"share", _ad()), aead.seal(key, b"share", _ad())
    assert one != two  # fresh nonce per message
    assert aead.open_sealed(key, one, _ad()) == b"share"
    assert len(one) == len(b"share") + aead.OVERHEAD


@pytest.mark.parametrize(
    "change",
    ["replayed from round 2", "redirected to c", "relabelled sender", "tampered", "truncated", "wrong key"],
)
def test_aead_rejects_replay_redirect_tamper_truncation(change: str) -> None:
    key = os.urandom(32)
    sealed = aead.seal(key, b"a share of a seed", _ad())
    ad, k = _ad(), key
    if change == "replayed from round 2":
        ad = _ad(round=2)
    elif change == "redirected to c":
        ad = _ad(receiver="c")
    elif change == "relabelled sender":
        ad = _ad(sender="c")
    elif change == "tampered":
        sealed = sealed[:20] + bytes([sealed[20] ^ 1]) + sealed[21:]
    elif change == "truncated":
        sealed = sealed[:-1]
    else:
        k = os.urandom(32)
    with pytest.raises(aead.AuthenticationError, match="altered or truncated|replayed or redirected"):
        aead.open_sealed(k, sealed, ad)


def test_aead_short_message_and_ambiguous_fields() -> None:
    with pytest.raises(aead.AuthenticationError, match="shorter than the 28-byte nonce and tag"):
        aead.open_sealed(bytes(32), b"x" * 27, b"")
    # length prefixes keep ("ab", "c") and ("a", "bc") apart
    assert aead.associated_data("ab", "c") != aead.associated_data("a", "bc")
    with pytest.raises(ValueError, match="AES-256-GCM key must be 32 bytes"):
        aead.seal(bytes(16), b"", b"")


# ----------------------------------------------------------------- PRG (AES-256-CTR)


def test_prg_keystream_nist_sp800_38a_f55_ctr_aes256() -> None:
    key = bytes.fromhex("603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4")
    counter = bytes.fromhex("f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff")
    plain = bytes.fromhex("6bc1bee22e409f96e93d7e117393172a")
    cipher = bytes.fromhex("601ec313775789a5b7a7f504bbf3d228")
    stream = prg.keystream(key, 16, nonce=counter)
    assert bytes(p ^ s for p, s in zip(plain, stream)) == cipher


def test_prg_refuses_a_modulus_above_the_one_limit() -> None:
    """One MAX_MODULUS_BITS for masks and quantised sums (crypto/prg.py, imported by crypto/quantize.py)."""
    from secure_fl.crypto import quantize

    assert quantize.MAX_MODULUS_BITS is prg.MAX_MODULUS_BITS
    with pytest.raises(ValueError, match=rf"\[1, {prg.MAX_MODULUS_BITS}\], got {prg.MAX_MODULUS_BITS + 1}"):
        prg.expand_mask(os.urandom(32), 4, prg.MAX_MODULUS_BITS + 1)


@pytest.mark.parametrize("bits", [1, 7, 23, 32, 33, 40, 62])
def test_prg_mask_is_deterministic_in_range_and_seed_dependent(bits: int) -> None:
    seed = os.urandom(32)
    a, b = prg.expand_mask(seed, 4096, bits), prg.expand_mask(seed, 4096, bits)
    assert a.dtype == (np.uint32 if bits <= 32 else np.uint64)
    assert np.array_equal(a, b)
    assert int(a.max()) < 2**bits
    if bits >= 16:
        assert not np.array_equal(a, prg.expand_mask(os.urandom(32), 4096, bits))
    # prefix property: a longer mask starts with the shorter one
    assert np.array_equal(prg.expand_mask(seed, 10, bits), a[:10])


def test_prg_mask_words_are_uniform_chi_square() -> None:
    # 2^16 draws of the low byte of a 23-bit mask: chi-square over 256 bins at alpha = 1e-4
    from scipy.stats import chisquare

    m = prg.expand_mask(os.urandom(32), 1 << 16, 23)
    counts = np.bincount((m & 0xFF).astype(np.int64), minlength=256)
    assert chisquare(counts).pvalue > 1e-4


def test_prg_refuses_bad_seed_and_modulus() -> None:
    with pytest.raises(ValueError, match="PRG seed must be 32 bytes, got 16 bytes"):
        prg.expand_mask(bytes(16), 4, 16)
    with pytest.raises(ValueError, match="modulus_bits must be an integer in"):
        prg.expand_mask(bytes(32), 4, 65)


# ----------------------------------------------------------------- Shamir


def _is_probable_prime(n: int) -> bool:
    d, s = n - 1, 0
    while d % 2 == 0:
        d, s = d // 2, s + 1
    for a in (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47):
        x = pow(a, d, n)
        if x in (1, n - 1):
            continue
        for _ in range(s - 1):
            x = pow(x, 2, n)
            if x == n - 1:
                break
        else:
            return False
    return True


def test_shamir_field_is_the_smallest_prime_above_2_256() -> None:
    assert shamir.PRIME > 2**256 and _is_probable_prime(shamir.PRIME)
    assert not any(_is_probable_prime(2**256 + i) for i in range(1, 297, 2))


@pytest.mark.parametrize("t,n", [(2, 3), (3, 5), (4, 7)])
def test_shamir_every_t_subset_reconstructs(t: int, n: int) -> None:
    secret = os.urandom(32)
    shares = shamir.split(secret, t, n)
    assert len({s.x for s in shares}) == n
    for subset in itertools.combinations(shares, t):
        assert shamir.combine(list(subset), t, 32) == secret
        # and through the wire format
        assert shamir.combine([shamir.Share.from_bytes(s.to_bytes()) for s in subset], t, 32) == secret


@pytest.mark.parametrize("t,n", [(2, 3), (3, 5), (4, 7)])
def test_shamir_t_minus_1_shares_fail(t: int, n: int) -> None:
    secret = os.urandom(32)
    shares = shamir.split(secret, t, n)
    for subset in itertools.combinations(shares, t - 1):
        with pytest.raises(ValueError, match=f"need {t} distinct shares"):
            shamir.combine(list(subset), t, 32)
        # interpolating the t - 1 points anyway gives a value unrelated to the secret
        points = [(s.x, s.ys[0]) for s in subset]
        assert shamir.interpolate_at_zero(points) != int.from_bytes(secret, "big")


def test_shamir_secrets_of_any_length_and_duplicates() -> None:
    for length in (1, 31, 32, 33, 100):
        secret = os.urandom(length)
        shares = shamir.split(secret, 3, 4)
        assert len(shares[0].to_bytes()) == shamir.share_bytes(length)
        assert shamir.combine(shares[1:], 3, length) == secret
    shares = shamir.split(os.urandom(32), 2, 3)
    with pytest.raises(ValueError, match="need 2 distinct shares"):
        shamir.combine([shares[0], shares[0]], 2, 32)
    with pytest.raises(ValueError, match="threshold must be an integer in"):
        shamir.split(b"x", 4, 3)


def test_shamir_tampered_share_changes_the_secret_and_bad_bytes_are_refused() -> None:
    secret = os.urandom(32)
    shares = shamir.split(secret, 2, 3)
    bad = shamir.Share(shares[0].x, ((shares[0].ys[0] + 1) % shamir.PRIME,))
    try:
        assert shamir.combine([bad, shares[1]], 2, 32) != secret
    except ValueError as exc:  # or the value no longer fits 32 bytes
        assert "inconsistent or tampered" in str(exc)
    with pytest.raises(ValueError, match="a share is 2 \\+ 33\\*c bytes"):
        shamir.Share.from_bytes(shares[0].to_bytes()[:-1])
    with pytest.raises(ValueError, match="x = 0"):
        shamir.Share.from_bytes(b"\x00\x00" + bytes(33))


@pytest.mark.parametrize("bits", [7, 32, 40])
def test_add_mask_streams_the_same_keystream_across_blocks(bits: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Blocks of 5 words (20 or 40 bytes: not AES-block aligned) give the AES-256-CTR keystream read whole."""
    monkeypatch.setattr(prg, "MASK_BLOCK", 5)
    seed, dim = os.urandom(32), 23
    dtype = prg.mask_dtype(bits)
    stream = np.frombuffer(prg.keystream(seed, dim * dtype.itemsize), dtype=dtype.newbyteorder("<")).astype(dtype)
    expected = stream & dtype.type((1 << bits) - 1)
    base = np.arange(dim, dtype=dtype)
    y = base.copy()
    prg.add_mask(y, seed, bits)
    assert np.array_equal(y, base + expected)
    prg.add_mask(y, seed, bits, subtract=True)
    assert np.array_equal(y, base)
    assert np.array_equal(prg.expand_mask(seed, dim, bits), expected)


def test_add_mask_refuses_a_target_of_the_wrong_word() -> None:
    with pytest.raises(ValueError, match="mask target must be a 1-D uint32 vector .* got float64"):
        prg.add_mask(np.zeros(4), os.urandom(32), 16)
