"""Where DP noise comes from: an injected seeded generator (tests, experiments) or the OS CSPRNG.

Every random draw that a DP guarantee rests on (Gaussian noise, Poisson sampling of
patients) goes through a :class:`NoiseSource`, so the choice is made in one place:

* ``NoiseSource.seeded(rng)`` wraps an injected :class:`numpy.random.Generator`. Runs are
  reproducible; this is what tests and ``secure_noise = false`` experiments use. The noise
  is *statistically* right but predictable to whoever knows the seed, so it gives no
  guarantee against an adversary who can guess it.
* ``NoiseSource.secure()`` reads the kernel CSPRNG (``os.urandom`` / :mod:`secrets`). This is what
  ``secure_noise = true`` uses. Opacus's own ``secure_mode`` needs ``torchcsprng``, which is not
  installable here; this source plays that role for every mechanism of secure-fl, including
  DP-SGD (see :mod:`secure_fl.training.dp_sgd`).

Two kinds of draws, and what each guarantees:

* :meth:`NoiseSource.integers_below` gives *exactly* uniform integers (rejection sampling on
  whole machine words). The discrete Gaussian of :mod:`secure_fl.privacy.discrete_gaussian`
  (Canonne, Kamath, Steinke 2020) is built from these alone, so its output distribution is
  exactly ``N_Z(0, σ²)``. Mechanisms that release noised update vectors (``dp-fedavg`` local and
  central noise, the distributed discrete Gaussian ``ddg``) round the update onto a public
  fixed-point grid and add this integer noise, so every released value is grid × integer:
  its low-order bits carry nothing about the input.
* :meth:`NoiseSource.normal` draws float64 Gaussians (Box–Muller from 53-bit uniforms for the
  secure source). These are *not* exact: float Gaussians added to float data are open to the
  attacks of Mironov ("On significance of the least significant bits for differential
  privacy", CCS 2012) and Jin et al. ("Are we there yet? Timing and floating-point attacks on
  differential privacy systems", S&P 2022), and casting to float32 does not remove the leak.
  They remain where the data path is floating point anyway: DP-SGD noise added to float32
  gradients inside local training, the continuous shares of ``distributed-dp-sgd`` under CKKS
  (itself approximate arithmetic), and the clip-count noise of adaptive clipping. For those,
  the stated (ε, δ) is that of the ideal Gaussian mechanism and does not cover floating-point
  attacks.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass

import numpy as np

__all__ = ["NoiseSource"]

_TWO_PI = 2.0 * np.pi


@dataclass(frozen=True)
class NoiseSource:
    """Uniforms and Gaussians from either a seeded generator or the OS CSPRNG.

    Build with :meth:`seeded` or :meth:`secure`; ``rng`` is ``None`` for the secure source.
    """

    rng: np.random.Generator | None = None

    @classmethod
    def seeded(cls, rng: np.random.Generator) -> "NoiseSource":
        if not isinstance(rng, np.random.Generator):
            raise TypeError(f"noise rng must be a numpy.random.Generator, found {type(rng).__name__}")
        return cls(rng)

    @classmethod
    def secure(cls) -> "NoiseSource":
        return cls(None)

    @property
    def is_secure(self) -> bool:
        return self.rng is None

    @property
    def description(self) -> str:
        return ("os.urandom (CSPRNG): exact integers, Box-Muller floats" if self.is_secure
                else "seeded numpy Generator (reproducible, not secret)")

    def uniform(self, n: int) -> np.ndarray:
        """``n`` floats in [0, 1) with 53 random bits each."""
        if n < 0:
            raise ValueError(f"number of uniforms must be >= 0, found {n}")
        if self.rng is not None:
            return self.rng.random(n)
        words = np.frombuffer(os.urandom(8 * n), dtype="<u8")
        return (words >> np.uint64(11)).astype(np.float64) * 2.0**-53

    def normal(self, std: float, shape: int | tuple[int, ...]) -> np.ndarray:
        """Centred Gaussian noise of standard deviation ``std`` (float64)."""
        if not np.isfinite(std) or std < 0:
            raise ValueError(f"noise standard deviation must be finite and >= 0, found {std}")
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        size = int(np.prod(shape, dtype=np.int64))
        if std == 0:
            return np.zeros(shape)
        if self.rng is not None:
            return self.rng.normal(0.0, std, size=shape)
        # Box-Muller: u1 in (0, 1] so that log(u1) is finite.
        half = (size + 1) // 2
        u1 = self.uniform(half) + 2.0**-53
        u2 = self.uniform(half)
        radius = np.sqrt(-2.0 * np.log(u1))
        z = np.concatenate([radius * np.cos(_TWO_PI * u2), radius * np.sin(_TWO_PI * u2)])[:size]
        return (std * z).reshape(shape)

    def integers_below(self, bounds: np.ndarray) -> np.ndarray:
        """Exactly uniform integers, entry ``i`` in ``[0, bounds[i])`` (int64; ``1 <= bounds < 2^62``).

        The exact samplers of :mod:`secure_fl.privacy.discrete_gaussian` draw only these.
        Seeded: numpy's bounded integers (Lemire's rejection, exact given uniform bits).
        Secure: 63-bit words from :func:`secrets.token_bytes`, rejected at or above the
        largest multiple of the bound below 2^63, then reduced modulo the bound (exact).
        """
        b = np.asarray(bounds, dtype=np.int64)
        if b.size and (int(b.min()) < 1 or int(b.max()) >= 1 << 62):
            raise ValueError(f"integer bounds must be in [1, 2^62), found min {int(b.min())}, max {int(b.max())}")
        if self.rng is not None:
            return self.rng.integers(0, b, dtype=np.int64) if b.size else np.zeros(b.shape, dtype=np.int64)
        flat = b.reshape(-1)
        out = np.empty(flat.shape, dtype=np.int64)
        todo = np.arange(flat.size)
        while todo.size:
            words = (np.frombuffer(secrets.token_bytes(8 * todo.size), dtype="<u8") >> np.uint64(1)).astype(np.int64)
            bound = flat[todo]
            limit = (np.int64(2**63 - 1) // bound) * bound  # a multiple of bound, <= 2^63 - 1: [0, limit) is fair
            ok = words < limit
            out[todo[ok]] = words[ok] % bound[ok]
            todo = todo[~ok]
        return out.reshape(b.shape)

    def bernoulli(self, p: float, n: int) -> np.ndarray:
        """``n`` independent draws of Bernoulli(``p``) as a boolean mask (Poisson sampling)."""
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"sampling rate must be in [0, 1], found {p}")
        return self.uniform(n) < p
