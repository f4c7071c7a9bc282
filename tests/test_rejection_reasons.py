"""The aggregator's reason for refusing a site is the one recorded, and a bad message drops only its sender.

Whole runs of ckks-fedavg on a small synthetic federation, with one site's outgoing bytes changed
after its party produced them (as a broken or malicious site would send them). A tap on the
carrier records what the aggregator really received, so the tests check bytes, not labels.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from secure_fl.crypto.ckks import encrypt_chunks
from secure_fl.crypto.ckks_frame import FrameKind, pack_frame
from secure_fl.protocol.base import AGGREGATOR, Message
from secure_fl.protocol.ckks import BOUNDS, BOUNDS_SUM, MAX_EXP, MIN_EXP, SUBMIT, SUM, CkksSum
from secure_fl.run import federation
from secure_fl.run.compare import run_experiment
from secure_fl.run.experiment import parse_experiment
from secure_fl.run.records import read_rounds, resolve_latest

DIGEST = "corrupted frame: body digest does not match"


def _flip(msg: Message, proto: CkksSum) -> Message:
    """One bit changed in the ciphertext body: the frame's digest no longer matches."""
    p = msg.payload
    return dataclasses.replace(msg, payload=p[:-300] + bytes([p[-300] ^ 0x40]) + p[-299:])


def _truncate(msg: Message, proto: CkksSum) -> Message:
    return dataclasses.replace(msg, payload=msg.payload[:100])


def _spoof(msg: Message, proto: CkksSum) -> Message:
    """The message claims another site as its sender."""
    return dataclasses.replace(msg, sender="site1")


def _forge(msg: Message, proto: CkksSum) -> Message:
    """A well-formed bounds frame under the federation's key (any site can encrypt one) holding a histogram
    with two value exponents instead of one, and the sender's correct contributor tag."""
    ctx = proto._secret
    hist = np.zeros(2 * (MAX_EXP - MIN_EXP + 1))
    hist[[10, 20, MAX_EXP - MIN_EXP + 1 + 5]] = 2.0 ** -proto._h
    tags = np.zeros(len(proto.roster))
    tags[proto.roster.index(msg.sender)] = 0.5
    chunks = encrypt_chunks(ctx, np.concatenate([hist, tags]))
    return dataclasses.replace(msg, payload=pack_frame(FrameKind.BOUNDS, ctx.fingerprint, msg.round, chunks))


#: (round, site, stage) -> what that site's outgoing message becomes
TAMPER = {
    (0, "site2", SUBMIT): _flip,
    (1, "site3", BOUNDS): _flip,
    (2, "site1", BOUNDS): _truncate,
    (3, "site4", BOUNDS): _spoof,
    (4, "site4", BOUNDS): _forge,
}


@pytest.fixture(scope="module")
def tampered(tmp_path_factory):
    """One run of ckks-fedavg, 6 rounds, with the messages of TAMPER changed; a tap records what the aggregator got."""
    tmp_path = tmp_path_factory.mktemp("tamper")
    real_drive = federation.drive_round
    seen: list[Message] = []

    def drive(protocol, r, inputs, dim, drop_before=None, tap=None):  # type: ignore[no-untyped-def]
        real_site = protocol.site

        def site(site_id, round, values, weight):  # type: ignore[no-untyped-def]
            party = real_site(site_id, round, values, weight)
            real_step = party.step

            def step(stage, inbox):  # type: ignore[no-untyped-def]
                out = real_step(stage, inbox)
                change = TAMPER.get((round, site_id, stage))
                return [change(m, protocol) for m in out] if change else out

            party.step = step
            return party

        protocol.site = site
        try:
            return real_drive(protocol, r, inputs, dim, drop_before, tap=seen.append)
        finally:
            del protocol.site

    exp = parse_experiment({
        "name": "tamper", "protocols": ["ckks-fedavg"], "seeds": [0], "rounds": 6,
        "task": {"name": "synthetic-tabular", "n_sites": 4, "n_per_site": 40},
        "training": {"batch_size": 16, "lr": 0.1},
    })
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(federation, "drive_round", drive)
        result = run_experiment(exp, tmp_path / "runs", show_progress=False)
    run_dir = Path(result.runs[0].path)
    compare = json.loads((resolve_latest(tmp_path / "runs" / "tamper") / "compare.json").read_text())
    return read_rounds(run_dir), compare["sites"]["ckks-fedavg"], seen


def _got(seen: list[Message], r: int, stage: str) -> set[str]:
    return {m.receiver for m in seen if m.round == r and m.sender == AGGREGATOR and m.stage == stage}


def test_a_corrupted_update_records_the_aggregators_reason_and_drops_only_its_sender(tampered):
    rounds, sites, seen = tampered
    first = rounds[0]
    # the aggregator received site2's (corrupted) ciphertext, and sent it no sum to decrypt
    assert any(m.round == 0 and m.sender == "site2" and m.stage == SUBMIT for m in seen)
    assert _got(seen, 0, SUM) == {"site1", "site3", "site4"}
    assert first["dropped"] == {"site2": DIGEST}  # not the site's symptom ("expected one 'sum' message ... got 0")
    assert first["applied"] and first["participants"] == ["site1", "site3", "site4"]
    assert rounds[5]["applied"] and rounds[5]["participants"] == ["site1", "site2", "site3", "site4"]


@pytest.mark.parametrize("r, site, reason", [
    (1, "site3", DIGEST),
    (2, "site1", "truncated or padded"),
    (3, "site4", "message claims sender 'site1'"),
])
def test_a_malformed_or_spoofed_bounds_message_drops_only_its_sender(tampered, r, site, reason):
    rounds, sites, seen = tampered
    rec = rounds[r]
    others = sorted({"site1", "site2", "site3", "site4"} - {site})
    assert _got(seen, r, BOUNDS_SUM) == set(others) and _got(seen, r, SUM) == set(others)
    assert set(rec["dropped"]) == {site} and reason in rec["dropped"][site]
    assert rec["applied"] and rec["participants"] == others


def test_a_well_formed_forged_histogram_releases_nothing_and_says_so(tampered):
    """Stated in the spec's not_protected: a histogram that loads and adds but holds garbage cannot be
    traced to its sender without decrypting single sites' histograms (which would reveal each site's
    magnitude exponent to the others). Every site refuses the bounds sum; no update is sent or summed."""
    rounds, sites, seen = tampered
    rec = rounds[4]
    assert not rec["applied"] and rec["participants"] == [] and "no valid update ciphertext" in rec["aborted"]
    assert not [m for m in seen if m.round == 4 and m.stage in (SUBMIT, SUM)]
    assert set(rec["dropped"]) == {"site1", "site2", "site3", "site4"}
    assert all("forged or tampered histogram" in why for why in rec["dropped"].values())


def test_the_per_site_table_counts_each_refusal(tampered):
    rounds, sites, seen = tampered
    assert sites["site2"]["took_part"] == 4 and sites["site2"]["refused"]["rejected"] == 2  # round 0 and 4
    assert sites["site4"]["took_part"] == 4 and sites["site4"]["refused"]["rejected"] == 2  # round 3 and 4
    assert "forged or tampered histogram" in sites["site4"]["last_refusal"]
