"""The per-site SQLite privacy ledger: charge before release, budget refusal, restart."""

from __future__ import annotations

import sqlite3

import pytest

from secure_fl.errors import SiteRejected
from secure_fl.privacy import accounting as A
from secure_fl.privacy.ledger import Budget, PrivacyLedger

ROUND = A.dp_sgd_event(1.0, 0.05, 50)  # ε(PLD) ≈ 2.67 for one round, 3.50 for two at δ=1e-5
KW = dict(protocol="dp-sgd-local", spec_hash="abc123", mechanism="dp-sgd")


def test_charges_persist_and_compose(tmp_path):
    path = tmp_path / "sites" / "A" / "ledger.sqlite"
    ledger = PrivacyLedger(path, "A")
    first = ledger.charge(0, ROUND, 1e-5, **KW)
    second = ledger.charge(1, ROUND, 1e-5, **KW)
    assert first.epsilon_pld == pytest.approx(2.6704, abs=1e-3)
    assert second.epsilon_pld == pytest.approx(3.5022, abs=1e-3)
    assert second.epsilon_rdp > second.epsilon_pld
    # a fresh process opening the file sees the same history (restart)
    again = PrivacyLedger(path, "A")
    rows = again.records()
    assert [r.round for r in rows] == [0, 1]
    assert rows[0].event == ROUND and rows[0].protocol == "dp-sgd-local" and rows[0].spec_hash == "abc123"
    assert again.spent(1e-5)["pld"] == pytest.approx(second.epsilon_pld)
    # the serialised event is in the file in plain JSON, readable by any tool
    raw = sqlite3.connect(path).execute("SELECT event FROM charges").fetchone()[0]
    assert '"PoissonSampledDpEvent"' in raw


def test_budget_refuses_the_round_that_would_exceed_it(tmp_path):
    ledger = PrivacyLedger(tmp_path / "l.sqlite", "Hungary", Budget(3.0, 1e-5))
    ledger.charge(0, ROUND, 1e-5, **KW)
    with pytest.raises(SiteRejected) as err:
        ledger.charge(1, ROUND, 1e-5, **KW)
    msg = str(err.value)
    assert err.value.site == "Hungary"
    assert "spent ε=2.6704 of ε_max=3" in msg and "would cost ε=0.8317 more" in msg and "ε=3.5022" in msg
    assert len(ledger.records()) == 1  # the refused round was not written
    # check() refuses the same way without writing
    with pytest.raises(SiteRejected):
        ledger.check(ROUND, 1)
    # a smaller event still fits
    ledger.charge(1, A.gaussian_event(30.0), 1e-5, **KW)


def test_budget_survives_restart_and_cannot_be_raised(tmp_path):
    path = tmp_path / "l.sqlite"
    PrivacyLedger(path, "A", Budget(3.0, 1e-5)).charge(0, ROUND, 1e-5, **KW)
    reopened = PrivacyLedger(path, "A")  # budget read back from the file
    assert reopened.budget == Budget(3.0, 1e-5)
    with pytest.raises(SiteRejected):
        reopened.charge(1, ROUND, 1e-5, **KW)
    with pytest.raises(ValueError, match="already has budget"):
        PrivacyLedger(path, "A", Budget(100.0, 1e-5))


def test_amend_replaces_a_round_and_keeps_history(tmp_path):
    ledger = PrivacyLedger(tmp_path / "l.sqlite", "A")
    ledger.charge(0, A.poisson_gaussian_event(2.0, 0.1), 1e-5, **KW)
    nominal = ledger.spent(1e-5)["pld"]
    ledger.amend(0, A.poisson_gaussian_event(1.0, 0.1), 1e-5, note="2 of 4 shares", **KW)
    assert ledger.spent(1e-5)["pld"] > nominal
    assert len(ledger.records()) == 1
    history = ledger.records(include_superseded=True)
    assert len(history) == 2 and history[0].superseded_by == history[1].id and history[1].note == "2 of 4 shares"


def test_ledgers_of_two_datasets_in_one_file_are_separate(tmp_path):
    path = tmp_path / "l.sqlite"
    PrivacyLedger(path, "A").charge(0, ROUND, 1e-5, **KW)
    assert PrivacyLedger(path, "B").records() == []


def test_bad_inputs(tmp_path):
    with pytest.raises(ValueError, match="epsilon_max must be > 0, found -1"):
        Budget(-1, 1e-5)
    with pytest.raises(ValueError, match="unknown accountant 'gdp'"):
        Budget(1.0, 1e-5, "gdp")
    with pytest.raises(TypeError, match="must be a dp_accounting DpEvent, found dict"):
        PrivacyLedger(tmp_path / "l.sqlite", "A").charge(0, {"eps": 1}, 1e-5, **KW)  # type: ignore[arg-type]


def test_charge_is_on_disk_before_the_update_leaves(tmp_path):
    """The engine's order: transform -> charge -> secure sum -> release. A crash after charge over-counts."""
    import numpy as np

    from secure_fl.protocol.dp import build_privacy_layer, parse_privacy
    from secure_fl.protocol.plain import PlainSum
    from secure_fl.training.config import RunPlan, TrainingConfig

    table = {
        "mechanism": "dp-fedavg",
        "noise": "local",
        "delta": 1e-5,
        "noise_multiplier": 4.0,
        "max_grad_norm": 1.0,
        "secure_noise": False,
        "accountant": "rdp",
    }
    layer = build_privacy_layer(
        parse_privacy(table, "[privacy]", PlainSum()),
        weighting="uniform",
        plan=RunPlan(rounds=2, fraction=1.0, training=TrainingConfig()),
        site_sizes={"A": 5},
        run_dir=tmp_path,
        noise_rng=np.random.default_rng(0),
        protocol_name="dp-fedavg-local",
        spec_hash="feed",
    )
    sp = layer.site("A")
    sp.before_round(0)
    sp.transform(np.ones(3), 5, 0)
    returned = sp.charge(0)
    # "crash" here: nothing released yet, yet a fresh reader of the file sees the charge
    rows = PrivacyLedger(tmp_path / "sites" / "A" / "ledger.sqlite", "A").records()
    assert [(r.round, r.protocol, r.spec_hash, r.mechanism) for r in rows] == [
        (0, "dp-fedavg-local", "feed", "dp-fedavg")
    ]
    # σ/2 for sensitivity 2C, a little less: the grid rounding's sensitivity Δγ >= C is what is charged
    assert 2.0 * (1 - 1e-5) < rows[0].event.noise_multiplier <= 2.0
    assert returned["epsilon"] == pytest.approx(rows[0].epsilon_rdp) and returned["delta"] == 1e-5
    sp.before_round(1)
    with pytest.raises(RuntimeError, match=r"charge\(1\) before the round's update was computed"):
        sp.charge(1)


def test_cli_ledger_shows_spend_over_time(tmp_path, capsys):
    import argparse
    import json

    from secure_fl.cli.ledger import add_parser
    from secure_fl.errors import DataError

    site = tmp_path / "run" / "sites" / "Cleveland"
    ledger = PrivacyLedger(site / "ledger.sqlite", "Cleveland", Budget(5.0, 1e-5))
    for r in range(2):
        ledger.charge(r, ROUND, 1e-5, **KW)
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())

    def run(*argv: str) -> str:
        args = parser.parse_args(["ledger", *argv])
        assert args.func(args) == 0
        return capsys.readouterr().out

    out = run(str(site))
    assert "site Cleveland: budget ε_max=5 at δ=1e-05" in out and "Poisson(q=0.05)·Gaussian(σ=1) ×50" in out
    assert "2.6704" in out and "3.5022" in out
    rows = [json.loads(line) for line in run(str(tmp_path / "run"), "--json", "--delta", "1e-6").splitlines()]
    assert [r["round"] for r in rows] == [0, 1] and all(r["delta"] == 1e-6 for r in rows)
    assert rows[1]["epsilon_pld"] > 3.5022  # smaller δ, larger ε
    out = run(str(site / "ledger.sqlite"), "--opacus")
    assert "ε Opacus PRV" in out and "3.50" in out
    with pytest.raises(DataError, match="no privacy ledger here"):
        args = parser.parse_args(["ledger", str(tmp_path / "nothing")])
        args.func(args)
