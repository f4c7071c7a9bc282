import os

import pytest
import torch

# small models: one thread is faster than two on a loaded 2-core machine (see run/compare.py)
torch.set_num_threads(int(os.environ.get("SECURE_FL_THREADS", "1")))


@pytest.fixture
def tiny_experiment_toml():
    def make(
        protocols: str = '["plain-fedavg", "pooled", "local-only"]',
        task: str = 'name = "synthetic-tabular"',
        rounds: int = 2,
        extra: str = "",
    ) -> str:
        return f"""
name = "tiny"
protocols = {protocols}
seeds = [0]
rounds = {rounds}
[task]
{task}
[training]
local_epochs = 1
batch_size = 16
lr = 0.1
{extra}
"""

    return make
