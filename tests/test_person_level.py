"""Person-level sampling and clipping: one person, however many photographs, moves the sum by at most C."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from secure_fl.privacy.noise import NoiseSource
from secure_fl.privacy.person_level import clipped_person_sum, noisy_person_sum, sample_people


@settings(max_examples=40, deadline=None)
@given(
    n_photos=st.integers(1, 60), magnitude=st.floats(1e-3, 1e3), clip=st.floats(0.1, 10.0), seed=st.integers(0, 2**31)
)
def test_a_person_with_many_photographs_moves_the_clipped_sum_by_at_most_C(n_photos, magnitude, clip, seed):
    rng = np.random.default_rng(seed)
    others = rng.normal(size=(30, 8))
    other_ids = rng.integers(0, 10, size=30)
    direction = rng.normal(size=8)
    mine = magnitude * (direction + 0.1 * rng.normal(size=(n_photos, 8)))  # aligned: per-example clipping would add up
    with_me = clipped_person_sum(np.vstack([others, mine]), np.concatenate([other_ids, np.full(n_photos, 99)]), clip)
    without_me = clipped_person_sum(others, other_ids, clip)
    assert np.linalg.norm(with_me - without_me) <= clip * (1 + 1e-9)


def test_per_example_clipping_would_not_bound_a_person():
    """The contrast that motivates the person unit: 20 aligned photographs clipped one by one move the sum by 20·C."""
    g = np.tile([3.0, 4.0], (20, 1))
    per_example = clipped_person_sum(g, np.arange(20), 1.0)
    per_person = clipped_person_sum(g, np.zeros(20, dtype=int), 1.0)
    assert np.linalg.norm(per_example) == pytest.approx(20.0)
    assert np.linalg.norm(per_person) == pytest.approx(1.0)


def test_sampling_keeps_all_or_none_of_a_persons_photographs():
    ids = np.repeat(np.arange(2000), 5)
    mask = sample_people(ids, 0.3, NoiseSource.seeded(np.random.default_rng(0)))
    per_person = mask.reshape(2000, 5)
    assert (per_person.all(1) | ~per_person.any(1)).all()
    assert abs(per_person[:, 0].mean() - 0.3) < 0.04  # the person is the sampled unit: rate q per person
    with pytest.raises(ValueError, match="q must be in"):
        sample_people(ids, 0.0, NoiseSource.secure())


def test_noise_has_std_sigma_times_C_and_bad_inputs_are_named():
    g = np.zeros((4, 20000))
    out = noisy_person_sum(
        g, np.arange(4), clip=2.0, noise_multiplier=1.5, noise=NoiseSource.seeded(np.random.default_rng(1))
    )
    assert out.std() == pytest.approx(3.0, rel=0.03)
    with pytest.raises(ValueError, match="4 ids for 3 examples"):
        clipped_person_sum(np.zeros((3, 2)), np.arange(4), 1.0)
    with pytest.raises(ValueError, match="clip norm C must be > 0, found 0"):
        clipped_person_sum(np.zeros((3, 2)), np.arange(3), 0)
