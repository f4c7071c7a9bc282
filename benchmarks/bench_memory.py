"""One secure-sum round in process against the number of sites: time, and peak memory in ``extra_info``.

    python -m pytest benchmarks/bench_memory.py --benchmark-enable [-k ckks]

Times :func:`secure_fl.engine.local.drive_round` on synthetic float32 updates of 100k parameters
(the real parties of each protocol in ``protocols/``, keys set up once). Each benchmark's
``extra_info`` holds the peak RSS of the same round run alone in a fresh process
(``scripts/bench_memory.py``, which also makes the README table over sites x parameters): the
memory the round adds beyond the inputs (``round_mb``) should not grow with the number of sites.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from secure_fl.engine.local import drive_round
from secure_fl.protocol.spec import load_protocol

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_memory.py"

PARAMS = 100_000


@pytest.mark.parametrize("sites", [4, 16])
@pytest.mark.parametrize("protocol", ["ckks-fedavg", "secagg-plus-fedavg"])
def test_round_memory(benchmark, protocol: str, sites: int) -> None:
    names = [f"site-{i:03d}" for i in range(sites)]
    proto = load_protocol(protocol).build_secure_sum()
    proto.setup(names, PARAMS)
    inputs = {  # the synthetic updates of scripts/bench_memory.py
        n: (np.random.default_rng(i).uniform(-0.01, 0.01, PARAMS).astype(np.float32), float(10 + i))
        for i, n in enumerate(names)
    }
    counter = iter(range(10**6))
    benchmark.group = f"round-memory:{protocol}"
    out = benchmark.pedantic(lambda: drive_round(proto, next(counter), inputs, PARAMS), rounds=2, iterations=1)
    assert out.aborted is None and out.result is not None
    assert np.isclose(out.result.weight, sum(w for _, w in inputs.values()), rtol=1e-3)
    # the peak of the same round alone, in a fresh process (ru_maxrss is a process-wide high-water mark)
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--json", "--protocol", protocol, "--sites", str(sites), "--params", str(PARAMS)],
        capture_output=True, text=True, check=True,
    )
    benchmark.extra_info.update(json.loads(proc.stdout.strip().splitlines()[-1]))
