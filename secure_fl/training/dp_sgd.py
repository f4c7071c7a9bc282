"""Patient-level DP-SGD inside a site's local training, on Opacus building blocks.

DP-SGD (Abadi et al., "Deep Learning with Differential Privacy", CCS 2016): each step
samples patients by Poisson sampling with rate ``q``, clips every per-example gradient to
L2 norm ``C``, sums them, adds N(0, (σC)²) and divides by the expected batch size ``qN``.
One step is a Poisson-subsampled Gaussian; a round of ``s`` steps is that event
self-composed ``s`` times (:func:`secure_fl.privacy.accounting.dp_sgd_event`).

What comes from Opacus and what does not:

* per-example gradients: :class:`opacus.GradSampleModule`; clipping and the noisy step:
  :class:`opacus.optimizers.DPOptimizer` (its ``add_noise`` reads a
  :class:`~secure_fl.privacy.noise.NoiseSource` here, so ``secure_noise = true`` uses the OS
  CSPRNG: Opacus's own ``secure_mode`` needs ``torchcsprng``, not available for this torch);
* Poisson sampling: :class:`PoissonBatchSampler` below draws from the same NoiseSource
  (the sampled subset is secret too: amplification by sampling assumes nobody can predict it);
* accounting: the DpEvent of each round goes to the site's ledger (``dp_accounting``);
  an Opacus RDP accountant is kept beside it as an independent opinion.

Why the hook object lives as long as the site (Opacus issue #688): Opacus charges privacy
through a hook that its ``PrivacyEngine`` attaches to each optimizer it wraps. Building a
fresh ``PrivacyEngine`` each federated round silently restarts the accountant at ε = 0.
Here the per-site :class:`DpSgdHook` keeps one Opacus accountant and a step count for the
whole run, attaches it to every round's optimizer, and every round's event is written to
the persistent ledger before the update leaves the site.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from dp_accounting import dp_event
from opacus import GradSampleModule
from opacus.accountants import RDPAccountant
from opacus.data_loader import dtype_safe, shape_safe, wrap_collate_with_empty
from opacus.optimizers import DPOptimizer
from opacus.optimizers.optimizer import _check_processed_flag, _mark_as_processed
from opacus.validators import ModuleValidator
from torch import nn
from torch.utils.data import DataLoader, Sampler
from torch.utils.data._utils.collate import default_collate

from ..errors import SecureFLError
from ..privacy.accounting import calibrate_noise_multiplier, dp_sgd_event, opacus_rdp_epsilon
from ..privacy.noise import NoiseSource
from ..privacy.person_level import sample_people

__all__ = [
    "IncompatibleModel",
    "check_dp_compatible",
    "PoissonBatchSampler",
    "PersonPoissonSampler",
    "SourcedDPOptimizer",
    "PersonDPOptimizer",
    "DpSgdHook",
    "calibrate_dp_sgd",
]

#: what Opacus's forward hook leaves on a layer until the matching backward pass takes it
_OPACUS_LAYER_ATTRS = ("activations", "max_batch_len")

_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


class IncompatibleModel(SecureFLError, ValueError):
    """The model cannot be trained with per-example DP; the message names the offending layer."""


def check_dp_compatible(model: nn.Module) -> None:
    """Refuse models whose layers break per-example privacy, naming each offending layer.

    BatchNorm mixes the examples of a batch (each output depends on the batch statistics),
    so per-example gradients, and with them the clipping bound, lose their meaning. Opacus's
    :class:`ModuleValidator` knows the full list of unsupported layers; its messages do not
    name the layer, so it is run module by module here. Replace BatchNorm by GroupNorm
    (``opacus.validators.ModuleValidator.fix``) or LayerNorm.
    """
    problems: list[str] = []
    for name, module in model.named_modules():
        label = name or "<root>"
        if isinstance(module, _BATCH_NORMS):
            problems.append(f"layer {label!r} ({type(module).__name__}): BatchNorm mixes examples of a batch")
            continue
        validator = ModuleValidator.VALIDATORS.get(type(module))
        if validator is not None:
            for err in validator(module):
                problems.append(f"layer {label!r} ({type(module).__name__}): {str(err).splitlines()[0]}")
    if problems:
        raise IncompatibleModel(
            "model is not compatible with patient-level DP-SGD: " + "; ".join(problems)
            + ". Use GroupNorm/LayerNorm instead of BatchNorm (opacus ModuleValidator.fix does it)"
        )


def calibrate_dp_sgd(
    target_epsilon: float, delta: float, sample_rate: float, steps: int, accountant: str = "rdp"
) -> float:
    """Noise multiplier for ``steps`` DP-SGD steps at rate ``sample_rate`` to reach (ε, δ) overall."""
    if steps < 1:
        raise ValueError(f"need at least one planned step to calibrate, found {steps}")
    return calibrate_noise_multiplier(target_epsilon, delta, lambda s: dp_sgd_event(s, sample_rate, steps), accountant)


class PoissonBatchSampler(Sampler[list[int]]):
    """``steps`` batches; each example is in each batch independently with probability ``sample_rate``."""

    def __init__(self, num_examples: int, sample_rate: float, steps: int, source: NoiseSource) -> None:
        if num_examples < 1:
            raise ValueError(f"cannot sample from {num_examples} examples")
        if not 0 < sample_rate <= 1:
            raise ValueError(f"sample rate must be in (0, 1], found {sample_rate}")
        if steps < 1:
            raise ValueError(f"steps must be >= 1, found {steps}")
        self.num_examples, self.sample_rate, self.steps, self.source = num_examples, sample_rate, steps, source

    def __len__(self) -> int:
        return self.steps

    def __iter__(self) -> Iterator[list[int]]:
        for _ in range(self.steps):
            yield np.flatnonzero(self.source.bernoulli(self.sample_rate, self.num_examples)).tolist()


class PersonPoissonSampler(Sampler[list[int]]):
    """``steps`` batches; each *person* is in each batch independently with probability ``sample_rate``,
    with all of their examples (:func:`secure_fl.privacy.person_level.sample_people`).

    After each batch is drawn, :attr:`last_groups` holds, for every example of that batch in order,
    the index (0..G-1) of its person within the batch: what :class:`PersonDPOptimizer` groups by.
    The data loader must draw one batch and train on it before drawing the next (a single-process
    loader does); the optimizer checks that the groups match the batch it clips.
    """

    def __init__(self, person_ids: np.ndarray, sample_rate: float, steps: int, source: NoiseSource) -> None:
        ids = np.asarray(person_ids)
        if ids.ndim != 1 or len(ids) < 1:
            raise ValueError(f"person_ids: expected a non-empty 1-d array, found shape {ids.shape}")
        if not 0 < sample_rate <= 1:
            raise ValueError(f"sample rate must be in (0, 1], found {sample_rate}")
        if steps < 1:
            raise ValueError(f"steps must be >= 1, found {steps}")
        self.person_ids, self.sample_rate, self.steps, self.source = ids, sample_rate, steps, source
        self.n_people = int(len(np.unique(ids)))
        self.last_groups = np.zeros(0, dtype=np.int64)

    def __len__(self) -> int:
        return self.steps

    def __iter__(self) -> Iterator[list[int]]:
        for _ in range(self.steps):
            idx = np.flatnonzero(sample_people(self.person_ids, self.sample_rate, self.source))
            self.last_groups = np.unique(self.person_ids[idx], return_inverse=True)[1].astype(np.int64)
            yield idx.tolist()


class SourcedDPOptimizer(DPOptimizer):
    """Opacus's DPOptimizer whose Gaussian noise comes from a :class:`NoiseSource`.

    Clipping, accumulation and scaling are Opacus's; only ``add_noise`` is replaced, so
    that noise can come from ``os.urandom`` (production) or a seeded generator (tests).
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        *,
        noise_multiplier: float,
        max_grad_norm: float,
        expected_batch_size: int,
        source: NoiseSource,
    ) -> None:
        super().__init__(
            optimizer,
            noise_multiplier=noise_multiplier,
            max_grad_norm=max_grad_norm,
            expected_batch_size=expected_batch_size,
            loss_reduction="mean",
        )
        self.source = source

    def add_noise(self) -> None:
        std = self.noise_multiplier * self.max_grad_norm
        for p in self.params:
            _check_processed_flag(p.summed_grad)
            draw = self.source.normal(std, tuple(p.summed_grad.shape))
            noise = torch.from_numpy(draw).to(dtype=p.summed_grad.dtype, device=p.summed_grad.device)
            p.grad = (p.summed_grad + noise).view_as(p)
            _mark_as_processed(p.summed_grad)


class PersonDPOptimizer(SourcedDPOptimizer):
    """DP-SGD with a person as the unit: per-example gradients are summed per person, and each
    person's *sum* is clipped to ``max_grad_norm`` (McMahan et al. 2018, "Learning Differentially
    Private Recurrent Language Models", Alg. 1, a user's data as one unit; the clipped sum of
    :func:`secure_fl.privacy.person_level.clipped_person_sum`).

    ``groups()`` returns the person index (0..G-1) of every example of the current batch
    (:attr:`PersonPoissonSampler.last_groups`). Adding or removing one person, with any number of
    examples, changes ``summed_grad`` by at most C; noise N(0, (σC)²) and the division by the
    expected number of people ``expected_batch_size`` are Opacus's, unchanged.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, *, noise_multiplier: float, max_grad_norm: float,
                 expected_batch_size: int, source: NoiseSource, groups: Any) -> None:
        super().__init__(optimizer, noise_multiplier=noise_multiplier, max_grad_norm=max_grad_norm,
                         expected_batch_size=expected_batch_size, source=source)
        self.groups = groups

    def clip_and_accumulate(self) -> None:
        samples = self.grad_samples
        n = len(samples[0])
        groups = torch.as_tensor(np.asarray(self.groups()), dtype=torch.long)
        if len(groups) != n:
            raise SecureFLError(f"person-level DP-SGD: {len(groups)} person labels for a batch of {n} examples "
                                "(the batches must come from PersonPoissonSampler, one at a time)")
        n_groups = int(groups.max()) + 1 if n else 0
        per_person = []
        for p, g in zip(self.params, samples):
            _check_processed_flag(p.grad_sample)
            g = g.to(p.dtype)
            per_person.append(torch.zeros((n_groups, *g.shape[1:]), dtype=p.dtype, device=g.device)
                              .index_add_(0, groups.to(g.device), g))
        if n_groups:
            norms = torch.stack([pp.reshape(n_groups, -1).norm(2, dim=-1) for pp in per_person], dim=1).norm(2, dim=1)
            factor = (self.max_grad_norm / (norms + 1e-6)).clamp(max=1.0)
        else:
            factor = torch.zeros(0)
        for p, pp in zip(self.params, per_person):
            grad = torch.einsum("i,i...", factor.to(pp.device, pp.dtype), pp)
            if p.summed_grad is not None:
                p.summed_grad += grad
            else:
                p.summed_grad = grad
            _mark_as_processed(p.grad_sample)


class DpSgdHook:
    """The per-site DP-SGD wrapper handed to local training (``TrainingHook`` of pipeline.py).

    ``wrap`` returns (GradSampleModule sharing the model's parameters, DP optimizer over the
    given optimizer, Poisson-sampled loader over the same dataset). Train with the returned
    objects; the original ``model`` holds the trained weights (parameters are shared), so
    read the delta from it. ``after_training`` removes Opacus's hooks and closes the round;
    :meth:`round_event` is the DpEvent of the steps actually taken.
    """

    def __init__(self, *, noise_multiplier: float, max_grad_norm: float, sample_rate: float, source: NoiseSource,
                 unit: str = "example") -> None:
        if not (math.isfinite(noise_multiplier) and noise_multiplier > 0):
            raise ValueError(f"noise multiplier must be > 0, found {noise_multiplier}")
        if not (math.isfinite(max_grad_norm) and max_grad_norm > 0):
            raise ValueError(f"max_grad_norm must be > 0, found {max_grad_norm}")
        if not 0 < sample_rate <= 1:
            raise ValueError(f"sample rate must be in (0, 1], found {sample_rate}")
        if unit not in ("example", "person"):
            raise ValueError(f"unit must be 'example' or 'person', found {unit!r}")
        self.noise_multiplier, self.max_grad_norm, self.sample_rate = noise_multiplier, max_grad_norm, sample_rate
        self.source, self.unit = source, unit
        #: the person of every training example (``unit = "person"``), set by :meth:`use_people`
        self.person_ids: np.ndarray | None = None
        #: Opacus's accountant, alive for the whole run (third, independent opinion on ε)
        self.opacus_accountant = RDPAccountant()
        self.total_steps = 0
        self.round_steps = 0
        self._gsm: GradSampleModule | None = None
        #: (Opacus history, total steps) when the open round started; restored if its training fails
        self._before: tuple[list[tuple[float, float, int]], int] | None = None

    def use_people(self, person_ids: np.ndarray | None) -> None:
        """The person of each of the site's training examples (in the order local training sees them)."""
        self.person_ids = None if person_ids is None else np.asarray(person_ids)

    @property
    def steps_per_epoch(self) -> int:
        return max(1, round(1.0 / self.sample_rate))

    def wrap(self, model: nn.Module, optimizer: torch.optim.Optimizer, loader: DataLoader) -> tuple[Any, Any, Any]:
        check_dp_compatible(model)
        n_examples = len(loader.dataset)  # type: ignore[arg-type]
        if self.unit == "person" and (self.person_ids is None or len(self.person_ids) != n_examples):
            found = "no ids" if self.person_ids is None else f"{len(self.person_ids)} ids"
            raise SecureFLError(f"[privacy] unit = 'person': the task gives no person id per training example "
                                f"({found} for {n_examples} examples); use unit = 'example' or a task with person ids")
        if not model.training:
            model.train()
        self._close()  # a round of this site that was never closed must not leave its hooks on the model
        self.round_steps = 0
        self._before = (list(self.opacus_accountant.history), self.total_steps)
        gsm = GradSampleModule(model, batch_first=True, loss_reduction="mean")
        self._gsm = gsm
        try:
            return self._wrap_rest(gsm, optimizer, loader)
        except BaseException:
            self._close()
            raise

    def _wrap_rest(self, gsm: GradSampleModule, optimizer: torch.optim.Optimizer,
                   loader: DataLoader) -> tuple[Any, Any, Any]:
        dataset = loader.dataset
        n = len(dataset)  # type: ignore[arg-type]
        first = dataset[0]
        items = first if isinstance(first, (tuple, list)) else (first,)
        collate = wrap_collate_with_empty(
            collate_fn=loader.collate_fn or default_collate,
            sample_empty_shapes=[(0, *shape_safe(x)) for x in items],
            dtypes=[dtype_safe(x) for x in items],
        )
        dp_opt: SourcedDPOptimizer
        if self.unit == "person":
            if self.person_ids is None:  # checked in wrap() before Opacus touched the model
                raise SecureFLError("[privacy] unit = 'person': no person ids")
            people = PersonPoissonSampler(self.person_ids, self.sample_rate, self.steps_per_epoch, self.source)
            dp_loader = DataLoader(dataset, batch_sampler=people, collate_fn=collate)
            dp_opt = PersonDPOptimizer(
                optimizer, noise_multiplier=self.noise_multiplier, max_grad_norm=self.max_grad_norm,
                expected_batch_size=max(1, round(self.sample_rate * people.n_people)), source=self.source,
                groups=lambda: people.last_groups,
            )
        else:
            sampler = PoissonBatchSampler(n, self.sample_rate, self.steps_per_epoch, self.source)
            dp_loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=collate)
            dp_opt = SourcedDPOptimizer(
                optimizer, noise_multiplier=self.noise_multiplier, max_grad_norm=self.max_grad_norm,
                expected_batch_size=max(1, round(self.sample_rate * n)), source=self.source,
            )
        opacus_hook = self.opacus_accountant.get_optimizer_hook_fn(sample_rate=self.sample_rate)

        def on_step(optim: DPOptimizer) -> None:
            self.round_steps += 1
            self.total_steps += 1
            opacus_hook(optim)

        dp_opt.attach_step_hook(on_step)
        return gsm, dp_opt, dp_loader

    def after_training(self, model: Any, optimizer: Any, steps: int) -> None:
        """Close the round: detach Opacus's hooks (the model is plain again). ``steps`` is the
        engine's count; the charge uses the count of noisy steps actually taken."""
        self._close()
        self._before = None

    def abort_training(self, model: Any, optimizer: Any) -> None:
        """Training raised mid-round: detach Opacus's hooks and forget the round's steps.

        Nothing of the round leaves the site (the engine drops its update, the ledger is never charged),
        so Opacus's accountant is set back to where the round found it and stays equal to the ledger."""
        self._close()
        if self._before is not None:
            self.opacus_accountant.history, self.total_steps = self._before
            self._before = None
        self.round_steps = 0

    def _close(self) -> None:
        """Detach Opacus from the model. Opacus's own clean-up removes its hooks and per-parameter attributes but
        not what a forward pass without its backward leaves on each layer (``activations``, ``max_batch_len``):
        after a failure between the two, the next site's backward would read this site's activations."""
        if self._gsm is not None:
            gsm, self._gsm = self._gsm, None
            module = gsm._module
            gsm._close()
            for layer in module.modules():
                for name in _OPACUS_LAYER_ATTRS:
                    if name in layer.__dict__:
                        delattr(layer, name)

    def round_event(self) -> dp_event.DpEvent:
        return dp_sgd_event(self.noise_multiplier, self.sample_rate, self.round_steps)

    def opacus_epsilon(self, delta: float) -> float:
        """ε by Opacus's own RDP analysis over every step this site took (0 before any); the same value as
        ``self.opacus_accountant.get_epsilon(delta)``, with one step's RDP curve memoised."""
        return opacus_rdp_epsilon(self.opacus_accountant.history, delta)
