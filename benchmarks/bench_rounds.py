"""Whole federation rounds: protected protocols against plaintext FedAvg in the same run.

    .venv/bin/python -m pytest benchmarks/bench_rounds.py --benchmark-enable --benchmark-columns=mean,stddev,rounds

Each benchmark times ``Federation.round`` (local training at every site, update transforms,
the secure sum in process, release, server step, evaluation) on the real ORL ``faces`` encoder
(4 sites, 56×46 photographs, ~91k parameters) and on the four ``heart-disease`` hospitals.
The ratio to ``plain-fedavg`` of the same task is printed by ``benchmarks/rounds_table.py``.
"""

from __future__ import annotations

import pytest
import tomllib
import torch

from secure_fl.run.experiment import parse_experiment
from secure_fl.run.federation import Federation
from secure_fl.tasks.registry import build_task

torch.set_num_threads(1)

TASKS = {
    "faces": 'name = "faces"\nn_sites = 4\npartition = "dirichlet"\nalpha = 1.0\nimage_size = [56, 46]',
    "heart-disease": 'name = "heart-disease"',
}
PROTOCOLS = ["plain-fedavg", "ckks-fedavg", "secagg-fedavg", "secagg-plus-fedavg"]
_TASK_CACHE: dict[str, object] = {}


def make_federation(task_key: str, protocol: str, tmp_path, local_epochs: int = 1) -> Federation:
    text = f"""
name = "bench"
protocols = ["{protocol}"]
rounds = 1000
[task]
{TASKS[task_key]}
[training]
local_epochs = {local_epochs}
batch_size = 16
lr = 0.001
optimizer = "adam"
"""
    exp = parse_experiment(tomllib.loads(text), "bench.toml")
    if task_key not in _TASK_CACHE:
        _TASK_CACHE[task_key] = build_task(exp.task_name, exp.task_params)
    return Federation(exp, _TASK_CACHE[task_key], exp.variants[0], 0, tmp_path)


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("task_key", list(TASKS))
def test_round(benchmark, tmp_path, task_key, protocol):
    fed = make_federation(task_key, protocol, tmp_path)
    counter = iter(range(10**6))
    benchmark.group = f"round:{task_key}"
    record = benchmark.pedantic(lambda: fed.round(next(counter)), rounds=5, warmup_rounds=1)
    assert record["applied"], record["aborted"]
    benchmark.extra_info["bytes_up_per_site"] = record["bytes_up_per_site"]
    benchmark.extra_info["bytes_down_per_site"] = record["bytes_down_per_site"]
