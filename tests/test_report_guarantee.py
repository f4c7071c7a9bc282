"""Guarantee statements: golden structured fields per catalogue protocol, ε equal to the accountant's,
sentences that follow the spec, English and Japanese from the same facts.

Regenerate the golden file after an intended change of a guarantee with
``SECURE_FL_UPDATE_GOLDEN=1 pytest tests/test_report_guarantee.py`` and review its diff.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
from dp_accounting import dp_event
from dp_accounting.pld import pld_privacy_accountant

from secure_fl.cli import main
from secure_fl.errors import SpecError
from secure_fl.protocol.spec import list_protocols
from secure_fl.report.glossary import TERMS, markdown
from secure_fl.report.guarantee import Plan, guarantee_for
from secure_fl.report.phrases import PHRASES
from secure_fl.report.statement import party_table, sections, to_json, to_text

GOLDEN = Path(__file__).parent / "golden" / "guarantees.json"
PLAN = Plan(sites=4, rounds=2, examples_per_site=50, batch_size=10)
#: fixed σ where calibration would only cost test time (dp-fedavg-central keeps its calibration)
FIXED_SIGMA = {"dp-sgd-local": 1.1, "dp-distributed-ckks": 1.0, "dp-fedavg-secagg": 2.0}


def _guarantee(name: str, **overrides: Any):
    extra = {"privacy.noise_multiplier": FIXED_SIGMA[name]} if name in FIXED_SIGMA else {}
    extra.update(overrides)
    return guarantee_for(name, PLAN, overrides=extra)


@pytest.fixture(scope="module")
def catalogue() -> dict[str, Any]:
    return {name: _guarantee(name) for name in list_protocols()}


def _structure(g) -> dict[str, Any]:
    """The fields a golden test compares: fact keys and their values, numbers rounded; no prose."""
    def facts(fs):
        return [[f.key, {k: v for k, v in sorted(f.params.items())}] for f in fs]

    dp = None
    if g.dp is not None:
        dp = {k: g.dp[k] for k in ("mechanism", "noise", "unit", "relation", "delta", "accountant", "rounds")}
        dp["epsilon"] = round(g.dp["epsilon_max"], 6)
        dp["noise_multiplier"] = round(next(iter(g.dp["per_site"].values()))["noise_multiplier"], 6)
    return {
        "adversary": g.adversary, "parties": {p: facts(fs) for p, fs in g.parties.items()},
        "adversary_facts": facts(g.adversary_facts), "dp": dp, "crypto": g.crypto,
        "crypto_facts": facts(g.crypto_facts), "not_protected": [f.key for f in g.not_protected],
        "public": [f.key for f in g.public],
    }


def test_golden_statement_of_every_catalogue_protocol(catalogue):
    got = json.loads(json.dumps({name: _structure(g) for name, g in catalogue.items()}, default=str))
    if os.environ.get("SECURE_FL_UPDATE_GOLDEN"):
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(json.dumps(got, indent=1, sort_keys=True, ensure_ascii=False) + "\n")
    want = json.loads(GOLDEN.read_text())
    assert sorted(got) == sorted(want), "every catalogue protocol has a statement (and a golden entry)"
    for name in want:
        assert got[name] == want[name], f"{name}: the guarantee changed; review and regenerate (see module doc)"


def test_every_protocol_states_each_party_and_what_is_not_protected(catalogue):
    for name, g in catalogue.items():
        for lang in ("en", "ja"):
            table = party_table(g, lang)
            assert len(table) == 4 and all(said for _, said in table), name
            keys = [s.key for s in sections(g, lang)]
            assert "adversary" in keys and "not_protected" in keys and ("glossary" in keys) == bool(g.terms)
        assert g.not_protected, name
        assert ("dp" in [s.key for s in sections(g)]) == (g.dp is not None)


def _pld_epsilon(event: dp_event.DpEvent, delta: float) -> float:
    acc = pld_privacy_accountant.PLDAccountant(value_discretization_interval=1e-3)
    acc.compose(event)
    return float(acc.get_epsilon(delta))


def test_dp_sgd_epsilon_in_the_statement_is_the_accountants(catalogue):
    g = catalogue["dp-sgd-local"]
    q = PLAN.batch_size / PLAN.examples_per_site
    steps = PLAN.local_epochs * round(1 / q) * PLAN.rounds  # DP-SGD: epochs x 1/q steps per round
    sigma = FIXED_SIGMA["dp-sgd-local"]
    event = dp_event.SelfComposedDpEvent(dp_event.PoissonSampledDpEvent(q, dp_event.GaussianDpEvent(sigma)), steps)
    eps = _pld_epsilon(event, 1e-5)
    assert g.dp["epsilon_max"] == pytest.approx(eps, abs=1e-9)
    for lang in ("en", "ja"):
        text = to_text(g, lang, width=10_000)
        assert f"ε = {eps:.3f}" in text and f"σ = {sigma:.4g}" in text


def test_calibrated_epsilon_meets_the_target_and_is_the_accountants(catalogue, tmp_path):
    """Target ε = 4 over the planned rounds: σ is the one the DP layer itself calibrates, and ε is the
    project's accountant on the layer's own round event (whatever the mechanism's event is)."""
    import numpy as np

    from secure_fl.privacy.accounting import epsilon
    from secure_fl.protocol.dp import build_privacy_layer
    from secure_fl.protocol.spec import load_protocol
    from secure_fl.training.config import RunPlan, TrainingConfig

    g = catalogue["dp-fedavg-central"]
    spec = load_protocol("dp-fedavg-central")
    layer = build_privacy_layer(
        spec.privacy, weighting=spec.aggregation.weighting,
        plan=RunPlan(PLAN.rounds, PLAN.fraction, TrainingConfig(batch_size=PLAN.batch_size)),
        site_sizes=PLAN.sizes(), run_dir=tmp_path, noise_rng=np.random.default_rng(1),
        protocol_name=spec.name, spec_hash=spec.spec_hash,
    )
    sigma = layer.noise_multiplier_for("site1")
    event = dp_event.SelfComposedDpEvent(layer.round_event("site1", sigma), PLAN.rounds)
    eps = epsilon(event, spec.privacy.delta, g.dp["accountant"])
    assert g.dp["per_site"]["site1"]["noise_multiplier"] == pytest.approx(sigma, rel=1e-12)
    assert g.dp["epsilon_max"] == pytest.approx(eps, abs=1e-9) and eps <= 4.0
    assert g.dp["relation"] == "rel_add_remove_site"
    assert "one site's whole contribution added or removed" in to_text(g)
    tighter = guarantee_for("dp-fedavg-central", PLAN, epsilon=1.0)
    assert tighter.dp["epsilon_max"] <= 1.0 < g.dp["epsilon_max"]
    assert tighter.dp["per_site"]["site1"]["noise_multiplier"] > sigma


def _sentences(g) -> list[str]:
    out = [s for _, said in party_table(g) for s in said]
    return out + [s for sec in sections(g) if not sec.quoted for s in sec.lines]


@pytest.mark.parametrize(
    "name, key, value, expect",
    [
        ("ckks-fedavg", "secure_sum.min_contributors", 2, ["at least 2 sites", "fewer than 2 sites", "Up to 2 of"]),
        ("ckks-fedavg", "secure_sum.preset", "small", ["preset 'small'"]),
        ("secagg-fedavg", "secure_sum.threshold_fraction", 0.9, ["9 or more colluding", "any 9 of 10"]),
        ("dp-fedavg-central", "privacy.delta", 1e-6, ["δ = 1e-06"]),
    ],
)
def test_changing_a_spec_value_changes_the_sentence_that_depends_on_it(catalogue, name, key, value, expect):
    if name.startswith("secagg"):  # ten sites: room for t between the default (7) and n - 1
        plan = Plan(sites=10, rounds=PLAN.rounds)
        before = _sentences(guarantee_for(name, plan))
        after = _sentences(guarantee_for(name, plan, overrides={key: value}))
    else:
        before = _sentences(catalogue[name])
        after = _sentences(_guarantee(name, **{key: value}))
    changed = [s for s in after if s not in before]
    assert changed, f"{key} = {value!r} changed no sentence"
    for e in expect:
        assert any(e in s for s in changed), (e, changed)
    assert len(changed) < len(after) / 2, "only the sentences that depend on the value change"


def test_masking_statement_follows_the_survivor_rule_of_the_code(catalogue):
    g = catalogue["secagg-fedavg"]
    adv = g.adversary
    honest = adv["min_contributors"] - adv["collusion_bound"]
    coalition = [f.key for f in g.parties["coalition"]]
    # with at least two honest survivors in every released sum the coalition learns only sums; otherwise the
    # statement must say that a single site can be exposed (issue 8, item 3)
    assert ("coal_masked" in coalition) == (honest >= 2)
    assert ("coal_masked_one" in coalition) == (honest < 2)


def test_english_and_japanese_say_the_same_facts(catalogue):
    for key, (en, ja) in PHRASES.items():
        assert en and ja, key
        assert set(re.findall(r"{(\w+)}", en)) == set(re.findall(r"{(\w+)}", ja)), key
    for t in TERMS.values():
        assert all(t.en) and all(t.ja)
    g = catalogue["dp-distributed-ckks"]
    en, ja = to_json(g, "en")["statement"], to_json(g, "ja")["statement"]
    assert [len(v) for v in en["parties"].values()] == [len(v) for v in ja["parties"].values()]
    assert en["sections"].keys() == ja["sections"].keys()
    eps = f"{g.dp['epsilon_max']:.3f}"
    assert eps in " ".join(en["sections"]["dp"]) and eps in " ".join(ja["sections"]["dp"])
    assert "差分プライバシー" in to_text(g, "ja") and "CKKS" in markdown("ja")


def test_cli_guarantee_text_json_and_errors(capsys):
    assert main(["guarantee", "plain-fedavg", "--sites", "3"]) == 0
    out = capsys.readouterr().out
    assert "What plain-fedavg guarantees" in out and "At 3 sites" in out
    assert main(["guarantee", "secagg-fedavg", "--sites", "10", "--json", "--set",
                 "secure_sum.threshold_fraction=0.9"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["secure_sum"]["threshold"] == 9 and data["statement"]["parties"]["aggregator"]
    assert main(["guarantee", "plain-fedavg", "--epsilon", "1"]) == 2
    assert "has no [privacy] layer" in capsys.readouterr().err
    assert main(["guarantee", "ckks-fedavg", "--set", "secure_sum.min_contributors=1"]) == 2
    assert "min_contributors" in capsys.readouterr().err
    with pytest.raises(SpecError, match="unknown protocol"):
        guarantee_for("no-such-protocol", PLAN)
