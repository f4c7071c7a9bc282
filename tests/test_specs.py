"""Spec validation: unknown keys, wrong types and out-of-range values name the key and the value."""

from __future__ import annotations

import pytest
import tomllib

from secure_fl.errors import SpecError
from secure_fl.protocol.spec import PROTOCOLS_DIR, list_protocols, load_protocol, parse_protocol
from secure_fl.run.experiment import load_experiment, parse_experiment

PLAIN = tomllib.loads((PROTOCOLS_DIR / "plain-fedavg.toml").read_text())


def _patched(**tables):
    data = {k: (dict(v) if isinstance(v, dict) else v) for k, v in PLAIN.items()}
    for key, value in tables.items():
        data[key] = value
    return data


def test_every_catalogue_protocol_parses():
    names = list_protocols()
    assert "plain-fedavg" in names
    for name in names:
        spec = load_protocol(name)
        assert spec.name == name, f"protocols/{name}.toml declares name {spec.name!r}"
        assert spec.threat_model.adversary and spec.threat_model.guarantees


@pytest.mark.parametrize(
    "patch, message",
    [
        ({"colour": "blue"}, r"unknown key\(s\) \['colour'\]"),
        ({"aggregation": {"server_lr": "fast"}}, r"\[aggregation\].server_lr: expected a number, found 'fast'"),
        ({"aggregation": {"server_lr": -1.0}}, r"\[aggregation\].server_lr: must be > 0, found -1.0"),
        (
            {"aggregation": {"server": "fedsgd"}},
            r"\[aggregation\].server: expected one of \['fedavg', 'fedadam'\], found 'fedsgd'",
        ),
        ({"aggregation": {"weigthing": "uniform"}}, r"\[aggregation\]: unknown key\(s\) \['weigthing'\]"),
        ({"secure_sum": {"kind": "quantum"}}, r"\[secure_sum\].kind: unknown secure sum 'quantum'"),
        (
            {"threat_model": {**PLAIN["threat_model"], "aggregator_sees": "masked"}},
            r"aggregator_sees: the spec says 'masked' but its layers show the aggregator 'plain'",
        ),
        (
            {"threat_model": {**PLAIN["threat_model"], "aggregator_sees": "nothing"}},
            r"aggregator_sees: expected one of",
        ),
        (
            {"threat_model": {**PLAIN["threat_model"], "assumptions": [1]}},
            r"assumptions\[0\]: expected a string, found 1",
        ),
    ],
)
def test_protocol_spec_errors(patch, message):
    with pytest.raises(SpecError, match=message):
        parse_protocol(_patched(**patch), "x.toml")


def test_missing_required_key():
    data = _patched()
    del data["threat_model"]
    with pytest.raises(SpecError, match="x.toml: missing required key 'threat_model'"):
        parse_protocol(data, "x.toml")


def test_unknown_protocol_lists_catalogue():
    with pytest.raises(SpecError, match="unknown protocol 'nope'; the catalogue has"):
        load_protocol("nope")


EXP = """
name = "e"
protocols = ["plain-fedavg"]
rounds = 3
[task]
name = "synthetic-tabular"
"""


@pytest.mark.parametrize(
    "extra, message",
    [
        ("rounds = 0", r"\.rounds: must be >= 1, found 0"),
        ("seeds = [1, 'two']", r"seeds\[1\]: expected an integer, found 'two'"),
        ("[federation]\nfraction = 1.5", r"\[federation\]\.fraction: must be <= 1, found 1.5"),
        ("[federation]\ndropout = 1.0", r"\[federation\]\.dropout: must be < 1, found 1.0"),
        ("[training]\nbatch_size = 0", r"\[training\]\.batch_size: must be >= 1, found 0"),
        ("[training]\noptimiser = 'sgd'", r"\[training\]: unknown key\(s\) \['optimiser'\]"),
        ("[sweep]\n'privacy.target_epsilon' = 2", r"\[sweep\]\.privacy.target_epsilon: expected a non-empty list"),
    ],
)
def test_experiment_spec_errors(extra, message):
    if extra.startswith("["):
        text = EXP + "\n" + extra
    else:  # a top-level key goes before the first table
        key = extra.split("=")[0].strip()
        lines = [line for line in EXP.splitlines() if not line.startswith(key + " ")]
        text = extra + "\n" + "\n".join(lines)
    data = tomllib.loads(text)
    with pytest.raises(SpecError, match=message):
        parse_experiment(data, "e.toml")


def test_experiment_unknown_protocol_and_duplicates():
    with pytest.raises(SpecError, match=r"protocols\[0\]: unknown protocol 'fedprox'"):
        parse_experiment(tomllib.loads(EXP.replace('["plain-fedavg"]', '["fedprox"]')), "e.toml")
    with pytest.raises(SpecError, match="listed twice"):
        parse_experiment(tomllib.loads(EXP.replace('["plain-fedavg"]', '["pooled", "pooled"]')), "e.toml")


def test_every_shipped_experiment_parses():
    from secure_fl.run.experiment import EXPERIMENTS_DIR

    paths = sorted(EXPERIMENTS_DIR.glob("*.toml"))
    assert any(p.stem == "quickstart" for p in paths)
    for p in paths:
        exp = load_experiment(p)
        assert exp.variants
