"""Issue 8 item 12 (records): the aggregator-side run record of a protected protocol carries no
un-noised per-site value: no training metric on private batches, no exact value in a refusal reason.
They stay at the site (``Federation.site_records``)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tomllib

from secure_fl.run import federation
from secure_fl.run.compare import run_experiment
from secure_fl.run.experiment import parse_experiment
from secure_fl.run.federation import redact_reason
from secure_fl.training.local import LocalResult

# a site whose example count exceeds secagg's max_weight (10000) / whose update CKKS cannot encode (>= 2^127)
HUGE_COUNT = 123457
HUGE_VALUE = 1e40


def _run(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_experiment_toml: Any):
    losses: list[float] = []
    feds: list[federation.Federation] = []
    real_train, real_fed = federation.train_local, federation.Federation

    def train(model, x, y, cfg, loss_fn, seed, hook=None):
        res = real_train(model, x, y, cfg, loss_fn, seed, hook)
        losses.append(res.metrics["train_loss"])
        if len(losses) == 1 and name != "plain-fedavg":  # the first site of round 0 breaks a limit of the secure sum
            if name.startswith("secagg"):
                return LocalResult(res.delta, HUGE_COUNT, res.steps, res.metrics)
            return LocalResult(res.delta.astype(np.float64) * HUGE_VALUE, res.n_examples, res.steps, res.metrics)
        return res

    class Recorded(real_fed):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            feds.append(self)

    monkeypatch.setattr(federation, "train_local", train)
    monkeypatch.setattr(federation, "Federation", Recorded)
    # 7 sites: SecAgg (t = 5) releases a sum only over >= t + 1 = 6 survivors, so one site may be refused
    task = 'name = "synthetic-tabular"\nn_sites = 7\nn_per_site = 40'
    text = tiny_experiment_toml(protocols=f'["{name}"]', rounds=2, task=task)
    run = run_experiment(parse_experiment(tomllib.loads(text), "tiny.toml"), tmp_path, show_progress=False).runs[0]
    text = (Path(run.path) / "rounds.jsonl").read_text()
    return [json.loads(line) for line in text.splitlines()], text, losses, feds[0]


@pytest.mark.parametrize("name", ["secagg-fedavg", "ckks-fedavg"])
def test_a_protected_run_record_keeps_per_site_values_at_the_site(name, tmp_path, monkeypatch, tiny_experiment_toml):
    records, text, losses, fed = _run(name, tmp_path, monkeypatch, tiny_experiment_toml)
    first = records[0]
    assert first["applied"] and "site1" in first["dropped"] and "site1" not in first["participants"]
    # no training metric on private batches, under any key or as a bare value
    assert all("train" not in r for r in records)
    assert losses and not any(json.dumps(loss) in text for loss in losses)
    # the refusal says what kind of limit was broken, not the site's value
    reason = first["dropped"]["site1"]
    assert "<number>" in reason and not re.search(r"\d", reason), reason
    assert str(HUGE_COUNT) not in text and "e+4" not in text
    # ... which the site itself keeps
    kept = fed.site_records["site1"][0]
    assert kept["train"]["train_loss"] == losses[0]
    assert re.search(r"\d", kept["dropped"]) and kept["dropped"] != reason
    assert redact_reason(kept["dropped"]) == reason


def test_a_plain_run_record_still_shows_what_the_aggregator_sees_anyway(tmp_path, monkeypatch, tiny_experiment_toml):
    records, _, losses, _ = _run("plain-fedavg", tmp_path, monkeypatch, tiny_experiment_toml)
    assert [r["train"][s]["train_loss"] for r in records for s in sorted(r["train"])] == losses


def test_redaction_keeps_words_site_names_and_round_numbers():
    why = "round 3: site2 refused: max |value| = 3.2e+05, weight = 48 (limit 2**127), ratio -0.5"
    assert redact_reason(why) == ("round 3: site2 refused: max |value| = <number>, weight = <number> "
                                  "(limit <number>**<number>), ratio <number>")
