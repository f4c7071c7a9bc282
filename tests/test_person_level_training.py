"""Person-level DP-SGD in local training: sampling and clipping per person, accounting and guarantee per person."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from secure_fl.errors import SecureFLError, SpecError
from secure_fl.privacy.noise import NoiseSource
from secure_fl.protocol.spec import load_protocol, parse_protocol
from secure_fl.training.config import TrainingConfig
from secure_fl.training.dp_sgd import DpSgdHook, PersonPoissonSampler
from secure_fl.training.local import train_local


def _clipped_sum(x: torch.Tensor, y: torch.Tensor, persons: np.ndarray, clip: float) -> torch.Tensor:
    """``summed_grad`` of the person-level optimizer after one full batch (every person sampled), before noise."""
    torch.manual_seed(0)
    model = nn.Linear(x.shape[1], 3)
    with torch.no_grad():
        model.weight.zero_()
        model.bias.zero_()
    hook = DpSgdHook(noise_multiplier=1.0, max_grad_norm=clip, sample_rate=1.0,
                     source=NoiseSource.seeded(np.random.default_rng(0)), unit="person")
    hook.use_people(persons)
    gsm, opt, loader = hook.wrap(model, torch.optim.SGD(model.parameters(), lr=0.1), DataLoader(TensorDataset(x, y)))
    (xb, yb), = list(loader)  # rate 1: one batch with every person
    assert len(yb) == len(y)
    nn.CrossEntropyLoss()(gsm(xb), yb).backward()
    opt.clip_and_accumulate()
    out = torch.cat([p.summed_grad.reshape(-1) for p in opt.params])
    hook.after_training(gsm, opt, 1)
    return out


def test_a_person_with_many_photographs_moves_the_clipped_sum_by_at_most_C() -> None:
    rng = np.random.default_rng(1)
    x_others = torch.tensor(rng.normal(size=(12, 5)), dtype=torch.float32)
    y_others = torch.tensor(rng.integers(0, 3, 12))
    p_others = np.repeat(np.arange(4), 3)
    # one person with 40 aligned, large photographs: per-example clipping would let them move the sum by 40·C
    x_me = torch.tensor(50.0 * (1 + 0.05 * rng.normal(size=(40, 5))), dtype=torch.float32)
    y_me = torch.full((40,), 2)
    clip = 0.7
    without = _clipped_sum(x_others, y_others, p_others, clip)
    with_me = _clipped_sum(torch.cat([x_others, x_me]), torch.cat([y_others, y_me]),
                           np.concatenate([p_others, np.full(40, 99)]), clip)
    moved = float(torch.linalg.vector_norm(with_me - without))
    assert moved <= clip * (1 + 1e-4)
    assert moved > 0.5 * clip  # the person does count (clipped to C, not dropped)
    # the same photographs as 40 separate people (per-example clipping) move it far more than C
    as_examples = _clipped_sum(torch.cat([x_others, x_me]), torch.cat([y_others, y_me]),
                               np.concatenate([p_others, 100 + np.arange(40)]), clip)
    assert float(torch.linalg.vector_norm(as_examples - without)) > 10 * clip


def test_people_are_sampled_with_all_of_their_examples() -> None:
    ids = np.repeat(np.arange(30), 4)
    rng = np.random.default_rng(3)
    rng.shuffle(ids)
    sampler = PersonPoissonSampler(ids, 0.3, 50, NoiseSource.seeded(np.random.default_rng(4)))
    sizes = []
    for batch in sampler:
        chosen = set(ids[batch].tolist())
        assert sorted(batch) == sorted(np.flatnonzero(np.isin(ids, list(chosen))).tolist())
        assert len(sampler.last_groups) == len(batch) and set(sampler.last_groups.tolist()) == set(range(len(chosen)))
        sizes.append(len(chosen))
    assert 0.2 < np.mean(sizes) / 30 < 0.4


def test_person_unit_without_person_ids_is_refused() -> None:
    hook = DpSgdHook(noise_multiplier=1.0, max_grad_norm=1.0, sample_rate=0.5,
                     source=NoiseSource.seeded(np.random.default_rng(0)), unit="person")
    x, y = torch.zeros(8, 3), torch.zeros(8, dtype=torch.long)
    with pytest.raises(SecureFLError, match="person id"):
        train_local(nn.Linear(3, 2), x, y, TrainingConfig(batch_size=4), nn.CrossEntropyLoss(), 0, hook)


def test_unit_person_changes_the_guarantee_and_the_adjacency_text() -> None:
    raw = load_protocol("dp-sgd-local").raw
    person = {**raw, "privacy": {**raw["privacy"], "unit": "person"}}
    cfg = parse_protocol(person, "person.toml").privacy
    assert cfg.unit == "person" and cfg.adjacency == "add/remove one person"
    assert cfg.guarantee()[0].startswith("person-level") and "ALL of their examples" in cfg.guarantee()[0]
    example = parse_protocol(raw, "example.toml").privacy
    assert example.unit == "patient" and example.adjacency == "add/remove one patient"
    with pytest.raises(SpecError, match="unit"):
        parse_protocol({**raw, "privacy": {**raw["privacy"], "unit": "photograph"}}, "bad.toml")


def test_a_federation_with_unit_person_samples_people_and_reports_epsilon_per_person(tmp_path: Path) -> None:
    from secure_fl.run.experiment import EXPERIMENTS_DIR, parse_experiment
    from secure_fl.run.federation import run_variant
    from secure_fl.tasks.registry import build_task

    exp = parse_experiment({
        "name": "person", "protocols": [str(EXPERIMENTS_DIR / "protocols" / "dp-sgd-local-person.toml")],
        "seeds": [0], "rounds": 1, "task": {"name": "synthetic-faces", "n_sites": 2},
        "training": {"local_steps": 2, "batch_size": 8, "lr": 0.1},
    }, "person.toml")
    task = build_task(exp.task_name, exp.task_params)
    assert all(len(set(s.person_ids().tolist())) < s.n_train for s in task.sites)  # several photographs a person
    seen: list[np.ndarray] = []
    original = PersonPoissonSampler.__iter__

    def spy(self):  # type: ignore[no-untyped-def]
        for batch in original(self):
            seen.append(self.person_ids[batch])
            yield batch

    PersonPoissonSampler.__iter__ = spy  # type: ignore[method-assign]
    try:
        run = run_variant(exp, task, exp.variants[0], 0, tmp_path / "run")
    finally:
        PersonPoissonSampler.__iter__ = original  # type: ignore[method-assign]
    assert run.status == "finished" and len(seen) >= 2
    ids_of = {s.name: s.person_ids() for s in task.sites}
    for batch_people in seen:  # every sampled person comes with all of their photographs at that site
        counts = {int(p): int((batch_people == p).sum()) for p in np.unique(batch_people)}
        assert any(all(int((ids == p).sum()) == c for p, c in counts.items()) for ids in ids_of.values())
    assert {v["adjacency"] for v in run.epsilon.values()} == {"add/remove one person"}


def test_unit_person_on_a_task_without_person_ids_fails_instead_of_degrading_to_examples(tmp_path: Path) -> None:
    from secure_fl.run.experiment import EXPERIMENTS_DIR, parse_experiment
    from secure_fl.run.federation import run_variant
    from secure_fl.tasks.registry import build_task

    exp = parse_experiment({
        "name": "person", "protocols": [str(EXPERIMENTS_DIR / "protocols" / "dp-sgd-local-person.toml")],
        "seeds": [0], "rounds": 1, "task": {"name": "synthetic-tabular", "n_sites": 2, "n_per_site": 40},
        "training": {"local_steps": 1, "batch_size": 8, "lr": 0.1},
    }, "person.toml")
    task = build_task(exp.task_name, exp.task_params)
    assert all(s.persons is None for s in task.sites)
    run = run_variant(exp, task, exp.variants[0], 0, tmp_path / "run")
    assert run.aborted_rounds == 1 and run.epsilon == {}  # nothing trained, nothing released, nothing charged
    for site in run.sites.values():  # every site refuses with the reason (not a second error from a half-wrapped model)
        assert "unit = 'person': the task gives no person id" in site["last_refusal"]


def test_example_level_dp_on_faces_reports_epsilon_per_photograph(tmp_path: Path) -> None:
    """Example-level DP-SGD on a faces task protects one photograph, and the reported ε says so (a person
    with several photographs gets only group privacy); a tabular task's example is a patient."""
    from secure_fl.run.experiment import parse_experiment
    from secure_fl.run.federation import run_variant
    from secure_fl.tasks.registry import build_task

    for task_table, unit in (({"name": "synthetic-faces", "n_sites": 2}, "photograph"),
                             ({"name": "synthetic-tabular", "n_sites": 2, "n_per_site": 40}, "patient")):
        exp = parse_experiment({
            "name": "example", "protocols": ["dp-sgd-local"], "seeds": [0], "rounds": 1, "task": task_table,
            "training": {"local_steps": 1, "batch_size": 8, "lr": 0.1},
        }, "example.toml")
        task = build_task(exp.task_name, exp.task_params)
        run = run_variant(exp, task, exp.variants[0], 0, tmp_path / unit)
        assert run.status == "finished"
        assert {v["adjacency"] for v in run.epsilon.values()} == {f"add/remove one {unit}"}
