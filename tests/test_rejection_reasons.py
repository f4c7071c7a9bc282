"""The aggregator's reason for refusing a site is the one recorded, and a bad message drops only its sender.

Whole runs of ckks-fedavg on a small synthetic federation, with one site's outgoing bytes changed
after its party produced them (as a broken or malicious site would send them). A tap on the
carrier records what the aggregator really received, so the tests check bytes, not labels.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from secure_fl.protocol.base import AGGREGATOR, Message
from secure_fl.protocol.ckks import BOUNDS, BOUNDS_SUM, SUBMIT, SUM
from secure_fl.run import federation
from secure_fl.run.compare import run_experiment
from secure_fl.run.experiment import parse_experiment
from secure_fl.run.records import read_rounds, resolve_latest

DIGEST = "corrupted frame: body digest does not match"


def _flip(payload: bytes) -> bytes:
    """One bit changed in the ciphertext body: the frame's digest no longer matches."""
    return payload[:-300] + bytes([payload[-300] ^ 0x40]) + payload[-299:]


def _run_tampered(tmp_path: Path, monkeypatch, tamper: dict[tuple[int, str, str], object], rounds: int = 2):
    """Run ckks-fedavg; ``tamper[(round, site, stage)]`` changes that site's outgoing payload."""
    real_drive = federation.drive_round
    seen: list[Message] = []

    def drive(protocol, r, inputs, dim, drop_before=None, tap=None):  # type: ignore[no-untyped-def]
        real_site = protocol.site

        def site(site_id, round, values, weight):  # type: ignore[no-untyped-def]
            party = real_site(site_id, round, values, weight)
            real_step = party.step

            def step(stage, inbox):  # type: ignore[no-untyped-def]
                out = real_step(stage, inbox)
                change = tamper.get((round, site_id, stage))
                return [dataclasses.replace(m, payload=change(m.payload)) for m in out] if change else out

            party.step = step
            return party

        protocol.site = site
        try:
            return real_drive(protocol, r, inputs, dim, drop_before, tap=seen.append)
        finally:
            del protocol.site

    monkeypatch.setattr(federation, "drive_round", drive)
    exp = parse_experiment({
        "name": "tamper", "protocols": ["ckks-fedavg"], "seeds": [0], "rounds": rounds,
        "task": {"name": "synthetic-tabular", "n_sites": 4, "n_per_site": 40},
        "training": {"batch_size": 16, "lr": 0.1},
    })
    result = run_experiment(exp, tmp_path / "runs", show_progress=False)
    run_dir = Path(result.runs[0].path)
    compare = json.loads((resolve_latest(tmp_path / "runs" / "tamper") / "compare.json").read_text())
    return read_rounds(run_dir), compare["sites"]["ckks-fedavg"], seen


def test_a_corrupted_update_records_the_aggregators_reason_and_drops_only_its_sender(tmp_path, monkeypatch):
    rounds, sites, seen = _run_tampered(tmp_path, monkeypatch, {(0, "site2", SUBMIT): _flip})
    first, second = rounds
    # the aggregator received site2's (corrupted) ciphertext, and sent it no sum to decrypt
    assert any(m.round == 0 and m.sender == "site2" and m.stage == SUBMIT for m in seen)
    assert not any(m.round == 0 and m.receiver == "site2" and m.stage == SUM for m in seen)
    assert first["dropped"] == {"site2": DIGEST}  # not the site's symptom ("expected one 'sum' message ... got 0")
    assert first["applied"] and first["participants"] == ["site1", "site3", "site4"]
    assert second["applied"] and second["participants"] == ["site1", "site2", "site3", "site4"]
    assert sites["site2"]["took_part"] == 1 and sites["site2"]["refused"]["rejected"] == 1
    assert sites["site2"]["last_refusal"] == DIGEST
    assert all(sites[s]["took_part"] == 2 for s in ("site1", "site3", "site4"))


@pytest.mark.parametrize("change, reason", [
    (_flip, DIGEST),
    (lambda p: p[:100], "truncated or padded"),
    (lambda p: b"SFC1" + b"\x00" * 3, "shorter than a frame header"),
])
def test_a_malformed_bounds_message_drops_only_its_sender(tmp_path, monkeypatch, change, reason):
    rounds, sites, seen = _run_tampered(tmp_path, monkeypatch, {(0, "site3", BOUNDS): change}, rounds=1)
    (first,) = rounds
    assert any(m.sender == "site3" and m.stage == BOUNDS for m in seen)  # the aggregator held the bad bytes
    bounds_sums = {m.receiver for m in seen if m.sender == AGGREGATOR and m.stage == BOUNDS_SUM}
    assert bounds_sums == {"site1", "site2", "site4"}
    assert reason in first["dropped"]["site3"] and set(first["dropped"]) == {"site3"}
    assert first["applied"] and first["participants"] == ["site1", "site2", "site4"]
    assert sites["site3"]["refused"]["rejected"] == 1 and reason in sites["site3"]["last_refusal"]
