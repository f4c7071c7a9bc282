"""CKKS primitives: presets vs the HE standard, keys and their files, frames, chunk packing."""

from __future__ import annotations

import argparse
import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest
import tenseal as ts
from hypothesis import given, settings
from hypothesis import strategies as st

from secure_fl.cli.keys import add_parser
from secure_fl.crypto.ckks import (
    CkksKeyError,
    chunk_count,
    decrypt_chunks,
    encrypt_chunks,
    generate_keys,
    load_context,
    load_manifest,
    load_public_context,
    load_secret_context,
    provision,
)
from secure_fl.crypto.ckks_frame import FrameError, FrameKind, load_vectors, pack_frame, unpack_frame
from secure_fl.crypto.ckks_params import (
    HE_STANDARD_MAX_LOG_Q,
    PRESETS,
    CkksParamError,
    CkksPreset,
    check_parameters,
    get_preset,
    noise_std,
    security_bits,
)
from secure_fl.errors import SpecError

SMALL = PRESETS["small"]  # N = 4096: fast


@pytest.fixture(scope="module")
def keys():
    return generate_keys(SMALL)


# --- presets --------------------------------------------------------------------------------


def test_every_preset_meets_the_he_standard() -> None:
    for p in PRESETS.values():
        assert p.total_bits <= HE_STANDARD_MAX_LOG_Q[128][p.poly_degree]
        assert p.security >= 128
        assert p.scale <= p.data_bits - 2


def test_security_levels_follow_the_table() -> None:
    assert security_bits(8192, 218) == 128
    assert security_bits(8192, 219) is None
    assert security_bits(8192, 152) == 192
    assert security_bits(8192, 118) == 256
    assert PRESETS["nvflare"].security == 192  # 140 bits at N = 8192
    assert PRESETS["compact"].security == 256  # 76 bits at N = 8192


@pytest.mark.parametrize(
    ("degree", "bits", "scale", "needle"),
    [
        (8192, [60, 60, 60, 60], 40, "240 bits exceeds 218"),
        (4096, [60, 40, 40], 40, "140 bits exceeds 109"),
        (2048, [36, 20], 20, "56 bits exceeds 54"),
        (16384, [60] * 8, 40, "480 bits exceeds 438"),
        (3000, [40, 40], 20, "poly_degree 3000 is not in the HE standard table"),
        (8192, [40], 20, "at least 2 primes"),
        (8192, [61, 40], 40, "17..60 bits"),
        (8192, [40, 16], 20, "17..60 bits"),
        (8192, [38, 38], 37, "scale_bits must be an integer in [10, 36]"),
        (8192, [38, 38], 5, "scale_bits must be an integer in [10, 36]"),
    ],
)
def test_refused_parameter_sets_say_why(degree: int, bits: list[int], scale: int, needle: str) -> None:
    with pytest.raises(CkksParamError, match=needle.replace("[", r"\[").replace("]", r"\]")) as info:
        check_parameters(degree, bits, scale, where="test")
    assert isinstance(info.value, SpecError)


def test_preset_constructor_refuses_insecure_parameters() -> None:
    with pytest.raises(CkksParamError, match="exceeds 218"):
        CkksPreset("too-big", 8192, (60, 60, 60, 60))
    with pytest.raises(CkksParamError, match="encryption"):
        CkksPreset("odd", 8192, (40, 40), encryption="both")  # type: ignore[arg-type]


def test_unknown_preset_lists_known_ones() -> None:
    with pytest.raises(CkksParamError, match=r"unknown CKKS preset 'huge'.*compact"):
        get_preset("huge")


# --- keys -----------------------------------------------------------------------------------


def test_public_context_has_no_secret_key_and_cannot_decrypt(keys) -> None:
    secret, public = keys.secret(), keys.public()
    assert secret.can_decrypt and not public.can_decrypt
    assert not public.context.is_private()
    assert secret.fingerprint == public.fingerprint
    [blob] = encrypt_chunks(secret, np.array([0.75, -0.5]))
    vec = ts.ckks_vector_from(public.context, blob)
    with pytest.raises(CkksKeyError, match="no secret key"):
        decrypt_chunks(public, [vec])
    with pytest.raises(ValueError):
        vec.decrypt()  # TenSEAL itself refuses: the key is not there
    # and the public context serialises without any secret key material
    assert len(keys.public_bytes) < 1000 < len(keys.secret_bytes)


def test_public_context_cannot_encrypt_under_a_symmetric_preset(keys) -> None:
    with pytest.raises(CkksKeyError, match="cannot encrypt"):
        encrypt_chunks(keys.public(), np.ones(3))


def test_values_beyond_the_encodable_range_are_refused(keys) -> None:
    with pytest.raises(ValueError, match="values up to 1.5 exceed 1"):
        encrypt_chunks(keys.secret(), np.array([0.0, -1.5]))
    with pytest.raises(ValueError, match="exceed"):
        encrypt_chunks(keys.secret(), np.array([np.nan]))
    with pytest.raises(ValueError, match="empty"):
        encrypt_chunks(keys.secret(), np.array([]))


def test_two_key_sets_have_different_fingerprints() -> None:
    assert generate_keys(SMALL).fingerprint != generate_keys(SMALL).fingerprint


@settings(max_examples=6, deadline=None)
@given(n=st.integers(min_value=1, max_value=2 * 2048 + 3), seed=st.integers(0, 2**32 - 1))
def test_chunked_round_trip(keys, n: int, seed: int) -> None:
    x = np.random.default_rng(seed).uniform(-1, 1, size=n)
    ctx = keys.secret()
    blobs = encrypt_chunks(ctx, x)
    assert len(blobs) == chunk_count(n, SMALL.slots)
    sizes = [min(SMALL.slots, n - i * SMALL.slots) for i in range(len(blobs))]
    vecs = load_vectors(keys.public(), blobs, sizes)
    y = decrypt_chunks(ctx, [ts.ckks_vector_from(ctx.context, v.serialize()) for v in vecs])
    assert y.shape == x.shape
    assert np.max(np.abs(y - x), initial=0.0) < 1e-5


def test_noise_estimate_matches_measurement(keys) -> None:
    ctx = keys.secret()
    x = np.random.default_rng(0).uniform(-1, 1, size=SMALL.slots)
    vecs = [ts.ckks_vector_from(ctx.context, b) for b in encrypt_chunks(ctx, x) * 1]
    total = vecs[0]
    for _ in range(15):
        total = total + ts.ckks_vector_from(ctx.context, encrypt_chunks(ctx, x)[0])
    err = (np.asarray(total.decrypt()) - 16 * x) * 2.0**SMALL.scale
    measured, estimate = float(np.std(err)), noise_std(SMALL, 16)
    assert estimate / 3 < measured < estimate * 1.5, (measured, estimate)


# --- files ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def key_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("keys") / "set"
    provision(3, out, "small")
    return out


def test_provision_writes_owner_only_files(key_dir: Path) -> None:
    manifest = load_manifest(key_dir)
    assert stat.S_IMODE(key_dir.stat().st_mode) == 0o700
    files = list(manifest["sites"].values()) + [manifest["aggregator"], "manifest.json"]
    assert len(files) == 5
    for name in files:
        assert stat.S_IMODE((key_dir / name).stat().st_mode) == 0o600, name
    assert manifest["preset"] == "small"


def test_loaded_contexts_match_their_roles(key_dir: Path) -> None:
    manifest = load_manifest(key_dir)
    site = load_secret_context(key_dir / manifest["sites"]["site-000"])
    agg = load_public_context(key_dir / manifest["aggregator"])
    assert site.kind == "secret" and site.can_decrypt
    assert agg.kind == "public" and not agg.can_decrypt
    assert site.fingerprint == agg.fingerprint == manifest["fingerprint"]


def test_secret_context_handed_to_the_aggregator_is_refused(key_dir: Path) -> None:
    with pytest.raises(CkksKeyError, match="SECRET context.*aggregator must get the public context"):
        load_public_context(key_dir / "site-001.secret.ckks")


def test_public_context_handed_to_a_decrypting_site_is_refused(key_dir: Path) -> None:
    with pytest.raises(CkksKeyError, match="PUBLIC context without the secret key"):
        load_secret_context(key_dir / "aggregator.public.ckks")


def test_altered_or_foreign_files_are_refused(key_dir: Path, tmp_path: Path) -> None:
    blob = (key_dir / "site-000.secret.ckks").read_bytes()
    cases = {
        "bad magic": b"XXXXXXXX" + blob[8:],
        "truncated header": blob[:12],
        "digest": blob[:-10] + bytes(10),
    }
    for needle, data in cases.items():
        path = tmp_path / f"{needle.replace(' ', '_')}.ckks"
        path.write_bytes(data)
        os.chmod(path, 0o600)
        with pytest.raises(CkksKeyError, match=needle):
            load_secret_context(path)
    with pytest.raises(CkksKeyError, match="not found"):
        load_context(tmp_path / "missing.ckks", "secret")


def test_secret_file_readable_by_others_is_refused(key_dir: Path, tmp_path: Path) -> None:
    path = tmp_path / "loose.secret.ckks"
    path.write_bytes((key_dir / "site-002.secret.ckks").read_bytes())
    os.chmod(path, 0o644)
    with pytest.raises(CkksKeyError, match="readable by others.*chmod 600"):
        load_secret_context(path)


def test_provision_never_overwrites_and_checks_arguments(key_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(CkksKeyError, match="already holds a key set"):
        provision(2, key_dir, "small")
    with pytest.raises(CkksKeyError, match="n_sites must be a positive integer, found 0"):
        provision(0, tmp_path / "x", "small")
    with pytest.raises(CkksParamError, match="unknown CKKS preset 'nope'"):
        provision(2, tmp_path / "y", "nope")


def test_cli_provision_and_show(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser(prog="secure-fl")
    add_parser(parser.add_subparsers(dest="command"))
    out = tmp_path / "cli"
    args = parser.parse_args(["keys", "provision", "--sites", "2", "--out", str(out), "--preset", "small"])
    assert args.func(args) == 0
    fp = json.loads((out / "manifest.json").read_text())["fingerprint"]
    args = parser.parse_args(["keys", "show", str(out)])
    assert args.func(args) == 0
    shown = capsys.readouterr().out
    assert shown.count(fp) >= 4 and "public" in shown and "secret" in shown and "small" in shown
    with pytest.raises(SystemExit):
        parser.parse_args(["keys", "provision", "--sites", "0", "--out", str(out)])


# --- frames ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def framed(keys):
    chunks = encrypt_chunks(keys.secret(), np.arange(5.0) / 8)
    return chunks, pack_frame(FrameKind.UPDATE, keys.fingerprint, 3, chunks, {"a": 1})


def test_frame_round_trip(keys, framed) -> None:
    chunks, payload = framed
    frame = unpack_frame(payload, kind=FrameKind.UPDATE, fingerprint=keys.fingerprint, round=3, n_chunks=1)
    assert frame.chunks == chunks and frame.meta == {"a": 1}
    [vec] = load_vectors(keys.public(), frame.chunks, [5])
    assert vec.size() == 5


@pytest.mark.parametrize(
    ("mutate", "needle"),
    [
        (lambda p: p[:10], "shorter than a frame header"),
        (lambda p: b"NOPE" + p[4:], "not a CKKS frame"),
        (lambda p: p[:-100], "truncated or padded"),
        (lambda p: p + b"\x00", "truncated or padded"),
        (lambda p: p[:-50] + bytes([p[-50] ^ 1]) + p[-49:], "digest does not match"),
    ],
)
def test_bad_frames_are_refused(keys, framed, mutate, needle: str) -> None:
    with pytest.raises(FrameError, match=needle):
        unpack_frame(mutate(framed[1]), kind=FrameKind.UPDATE, fingerprint=keys.fingerprint, round=3, n_chunks=1)


def test_frame_checks_key_set_round_kind_and_layout(keys, framed) -> None:
    payload = framed[1]
    other = generate_keys(SMALL).fingerprint
    with pytest.raises(FrameError, match="another key set"):
        unpack_frame(payload, kind=FrameKind.UPDATE, fingerprint=other, round=3)
    with pytest.raises(FrameError, match="round 3, this is round 4"):
        unpack_frame(payload, kind=FrameKind.UPDATE, fingerprint=keys.fingerprint, round=4)
    with pytest.raises(FrameError, match="wrong message kind UPDATE, expected BOUNDS"):
        unpack_frame(payload, kind=FrameKind.BOUNDS, fingerprint=keys.fingerprint, round=3)
    with pytest.raises(FrameError, match="1 ciphertext chunk.*needs 2"):
        unpack_frame(payload, kind=FrameKind.UPDATE, fingerprint=keys.fingerprint, round=3, n_chunks=2)


def test_garbage_inside_a_valid_frame_is_an_error_not_a_crash(keys, framed) -> None:
    chunk = framed[0][0]
    rng = np.random.default_rng(7)
    public = keys.public()
    bad = [chunk[: len(chunk) // 2], rng.bytes(len(chunk)), b"", chunk[:40] + rng.bytes(200) + chunk[240:]]
    for blob in bad:
        with pytest.raises(FrameError, match="chunk 0"):
            load_vectors(public, [blob], [5])
    with pytest.raises(FrameError, match="holds 5 values, the layout needs 6"):
        load_vectors(public, [chunk], [6])
    foreign = encrypt_chunks(generate_keys(PRESETS["compact"]).secret(), np.arange(5.0) / 8)[0]
    with pytest.raises(FrameError, match="not a valid ciphertext for this context"):
        load_vectors(public, [foreign], [5])
