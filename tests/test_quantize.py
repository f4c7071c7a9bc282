"""Quantization for the masked secure sum: clipping, stochastic rounding, modulus sizing."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from secure_fl.crypto.quantize import (
    MAX_MODULUS_BITS,
    Quantizer,
    clip,
    from_wire,
    stochastic_round,
    to_wire,
    wire_bytes_per_value,
)


def test_modulus_is_the_smallest_that_cannot_wrap() -> None:
    q = Quantizer(bits=16, clip_range=1.0, max_weight=1000, n_sites=100)
    worst = 100 * 1000 * (2**16 - 1)
    assert 2 ** (q.modulus_bits - 1) <= worst < 2**q.modulus_bits
    assert q.modulus_bits == 33 and q.dtype == np.uint64
    assert Quantizer(16, 1.0, 1, 10).modulus_bits == 20 and Quantizer(16, 1.0, 1, 10).dtype == np.uint32


def test_worst_case_sum_does_not_wrap() -> None:
    # every site at max_weight and at the top of the range: the slot sum is still exact
    q = Quantizer(bits=8, clip_range=0.5, max_weight=7, n_sites=10)
    rng = np.random.default_rng(0)
    slots = [q.encode(np.full(4, 0.5 * 7), 7, rng) for _ in range(10)]
    total = np.zeros(5, dtype=q.dtype)
    for s in slots:
        total += s
    total &= q.dtype.type(q.modulus_mask)
    assert int(total[0]) == 10 * 7 * 255 and int(total[-1]) == 70
    values, weight = q.decode(total, 10)
    assert weight == 70 and np.allclose(values, 10 * 7 * 0.5)


def test_refuses_a_configuration_that_cannot_fit_with_the_numbers() -> None:
    with pytest.raises(ValueError) as err:
        Quantizer(bits=32, clip_range=1.0, max_weight=2**20, n_sites=10_000)
    msg = str(err.value)
    for piece in ("n_sites=10000", "max_weight=1048576", f"2^{MAX_MODULUS_BITS}", "needs k = "):
        assert piece in msg


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf")])
def test_refuses_a_zero_or_non_finite_clip_range(bad: float) -> None:
    with pytest.raises(ValueError, match="clip_range"):
        Quantizer(16, bad, 1, 2)
    with pytest.raises(ValueError, match="clip_range"):
        clip(np.zeros(3), bad)


@pytest.mark.parametrize(
    "kwargs,needle",
    [
        ({"bits": 0}, "bits"),
        ({"bits": 33}, "bits"),
        ({"max_weight": 0}, "max_weight"),
        ({"n_sites": 0}, "n_sites"),
        ({"noise_bound": -1}, "noise_bound"),
        ({"bits": True}, "bits"),
    ],
)
def test_refuses_bad_parameters_naming_them(kwargs: dict, needle: str) -> None:
    base = {"bits": 16, "clip_range": 1.0, "max_weight": 10, "n_sites": 5}
    base.update(kwargs)
    with pytest.raises(ValueError, match=needle):
        Quantizer(**base)


@pytest.mark.parametrize(
    "weight,needle", [(11, "exceeds max_weight = 10"), (2.5, "integer count"), (-1, ">= 0"), (float("nan"), "finite")]
)
def test_refuses_bad_weights(weight: float, needle: str) -> None:
    q = Quantizer(16, 1.0, 10, 5)
    with pytest.raises(ValueError, match=needle):
        q.encode(np.zeros(3), weight, np.random.default_rng(0))


def test_refuses_non_finite_values_and_wrong_shapes() -> None:
    q = Quantizer(16, 1.0, 10, 5)
    with pytest.raises(ValueError, match="1 non-finite"):
        q.encode(np.array([0.0, np.nan]), 1, np.random.default_rng(0))
    with pytest.raises(ValueError, match="1-D"):
        q.encode(np.zeros((2, 2)), 1, np.random.default_rng(0))


def test_stochastic_rounding_is_unbiased_and_seeded() -> None:
    x = np.full(200_000, 2.3)
    r = stochastic_round(x, np.random.default_rng(1))
    assert set(np.unique(r)) == {2, 3}
    assert abs(r.mean() - 2.3) < 5 * math.sqrt(0.21 / x.size)
    assert np.array_equal(r, stochastic_round(x, np.random.default_rng(1)))
    with pytest.raises(TypeError, match="numpy.random.Generator"):
        stochastic_round(x, np.random.RandomState(0))  # type: ignore[arg-type]


def test_decoded_mean_is_unbiased() -> None:
    q = Quantizer(bits=4, clip_range=1.0, max_weight=3, n_sites=2)
    rng = np.random.default_rng(5)
    delta = np.linspace(-0.9, 0.9, 7)
    totals = []
    for _ in range(3000):
        total = q.encode(delta * 3, 3, rng) + q.encode(delta * 2, 2, rng)
        totals.append(q.decode(total, 2)[0])
    est = np.mean(totals, axis=0)
    # per coordinate, the std of one decoded total is at most 5 * step / 2
    assert np.all(np.abs(est - 5 * delta) < 5 * (5 * q.step / 2) / math.sqrt(3000))


def test_integer_noise_hook_is_added_and_bounded() -> None:
    q = Quantizer(bits=8, clip_range=1.0, max_weight=1, n_sites=3, noise_bound=5)

    def noise(dim: int, rng: np.random.Generator) -> np.ndarray:
        return rng.integers(-5, 6, size=dim)

    rng_a, rng_b = np.random.default_rng(9), np.random.default_rng(9)
    noisy = q.encode(np.zeros(50), 1, rng_a, add_integer_noise=noise)
    plain = q.encode(np.zeros(50), 1, rng_b)
    z = noisy[:-1].astype(np.int64) - plain[:-1].astype(np.int64)
    assert np.abs(z).max() <= 5 and np.any(z != 0)
    assert noisy[-1] == 1
    values, _ = q.decode(noisy, 1)
    assert np.allclose(values, q.decode(plain, 1)[0] + z * q.step)

    def too_loud(dim: int, rng: np.random.Generator) -> np.ndarray:
        return np.full(dim, 6)

    with pytest.raises(ValueError, match="beyond noise_bound = 5"):
        q.encode(np.zeros(4), 1, rng_a, add_integer_noise=too_loud)
    with pytest.raises(ValueError, match="integer array"):
        q.encode(np.zeros(4), 1, rng_a, add_integer_noise=lambda d, r: np.zeros(d))


def test_wire_packing_refuses_wrong_lengths_and_high_bits() -> None:
    words = np.array([1, 2, 3], dtype=np.uint32)
    with pytest.raises(ValueError, match="expected 9"):
        from_wire(to_wire(words, 23)[:-1], 23, 3)
    with pytest.raises(ValueError, match="at or above 2\\^20"):
        from_wire(to_wire(np.array([2**21], dtype=np.uint32), 23), 20, 1)


@settings(max_examples=60, deadline=None)
@given(
    bits=st.integers(1, 32),
    modulus_bits=st.integers(1, 62),
    data=st.data(),
)
def test_wire_round_trip(bits: int, modulus_bits: int, data: st.DataObject) -> None:
    dim = data.draw(st.integers(0, 40))
    words = np.array(
        data.draw(st.lists(st.integers(0, 2**modulus_bits - 1), min_size=dim, max_size=dim)), dtype=np.uint64
    )
    dtype = np.uint32 if modulus_bits <= 32 else np.uint64
    words = words.astype(dtype)
    payload = to_wire(words, modulus_bits)
    assert len(payload) == dim * wire_bytes_per_value(modulus_bits)
    assert np.array_equal(from_wire(payload, modulus_bits, dim), words)


finite = st.floats(-10, 10, allow_nan=False, allow_infinity=False)


@settings(max_examples=80, deadline=None)
@given(
    bits=st.integers(2, 24),
    clip_range=st.floats(1e-3, 100, allow_nan=False),
    weights=st.lists(st.integers(0, 50), min_size=1, max_size=6),
    data=st.data(),
    seed=st.integers(0, 2**32 - 1),
)
def test_encode_sum_decode_round_trip(
    bits: int, clip_range: float, weights: list[int], data: st.DataObject, seed: int
) -> None:
    """The decoded sum equals the weighted sum of clipped deltas within one step per unit of weight."""
    dim = data.draw(st.integers(1, 8))
    q = Quantizer(bits=bits, clip_range=clip_range, max_weight=50, n_sites=len(weights))
    rng = np.random.default_rng(seed)
    deltas = [np.array(data.draw(st.lists(finite, min_size=dim, max_size=dim))) for _ in weights]
    total = np.zeros(dim + 1, dtype=q.dtype)
    for w, d in zip(weights, deltas):
        slots = q.encode(d * w, w, rng)
        assert int(slots[:-1].max()) <= w * q.levels and int(slots[-1]) == w
        total += slots
    total &= q.dtype.type(q.modulus_mask)
    values, weight = q.decode(total, len(weights))
    assert weight == sum(weights)
    expected = sum(w * np.clip(d, -clip_range, clip_range) for w, d in zip(weights, deltas))
    assert np.all(
        np.abs(values - expected) <= sum(weights) * q.step * (1 + 1e-9) + 1e-9 * clip_range * max(1, sum(weights))
    )
