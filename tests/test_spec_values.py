"""Every spec value fed a wrong value gives a SpecError naming the key, never a traceback.

NaN and infinities (which TOML allows and which pass every range comparison), negatives, zeros,
wrong types, cross-field mistakes (min_sites above the sites, budgets for sites that do not
exist, sweep keys into tables that do not exist) and the CLI overrides.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import pytest
import tomllib

from secure_fl.cli import main
from secure_fl.errors import SpecError
from secure_fl.protocol.spec import PROTOCOLS_DIR
from secure_fl.run.compare import prepare
from secure_fl.run.experiment import load_experiment

NAN, INF = float("nan"), float("inf")

BASE: dict[str, Any] = {
    "name": "e",
    "protocols": ["proto.toml"],
    "seeds": [0],
    "rounds": 2,
    "task": {"name": "synthetic-tabular", "n_sites": 3, "n_per_site": 40},
    "federation": {"fraction": 1.0},
    "training": {"batch_size": 16, "lr": 0.1},
}


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return "nan" if math.isnan(v) else ("inf" if v == INF else "-inf" if v == -INF else repr(v))
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, list):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f'"{k}" = {_value(x)}' for k, x in v.items()) + " }"
    return str(v)


def _toml(data: dict[str, Any]) -> str:
    """A small TOML writer (scalars, lists, inline tables, one level of tables) that keeps nan and inf."""
    top = [f'"{k}" = {_value(v)}' for k, v in data.items() if not isinstance(v, dict)]
    tables = [f"[{k}]\n" + "\n".join(f'"{kk}" = {_value(vv)}' for kk, vv in v.items())
              for k, v in data.items() if isinstance(v, dict)]
    return "\n".join(top) + "\n\n" + "\n\n".join(tables) + "\n"


def _protocol(name: str) -> dict[str, Any]:
    return tomllib.loads((PROTOCOLS_DIR / f"{name}.toml").read_text())


def _write(tmp_path: Path, exp: dict[str, Any], proto: dict[str, Any]) -> Path:
    (tmp_path / "proto.toml").write_text(_toml(proto))
    path = tmp_path / "e.toml"
    path.write_text(_toml(exp))
    return path


def _set(data: dict[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in data.items()}
    *tables, key = dotted.split(".")
    node = out
    for t in tables:
        node = node.setdefault(t, {})
    if value is _DELETE:
        node.pop(key, None)
    else:
        node[key] = value
    return out


_DELETE = object()

EXPERIMENT_CASES = [
    ("rounds", 0, "rounds: must be >= 1"),
    ("rounds", -1, "rounds: must be >= 1"),
    ("rounds", NAN, "rounds: expected an integer"),
    ("rounds", 2.5, "rounds: expected an integer"),
    ("seeds", [-1], "seeds[0]: must be >= 0"),
    ("seeds", [NAN], "seeds[0]: expected an integer"),
    ("seeds", [], "seeds: list at least one seed"),
    ("federation.fraction", NAN, "[federation].fraction: expected a finite number, found nan"),
    ("federation.fraction", INF, "[federation].fraction: expected a finite number, found inf"),
    ("federation.fraction", 0.0, "[federation].fraction: must be > 0"),
    ("federation.dropout", NAN, "[federation].dropout: expected a finite number"),
    ("federation.dropout", -0.1, "[federation].dropout: must be >= 0"),
    ("federation.min_sites", 0, "[federation].min_sites: must be >= 1"),
    ("federation.min_sites", 4, "[federation].min_sites: 4 exceeds the 3 sites"),
    ("training.lr", NAN, "[training].lr: expected a finite number, found nan"),
    ("training.lr", INF, "[training].lr: expected a finite number, found inf"),
    ("training.lr", -INF, "[training].lr: expected a finite number, found -inf"),
    ("training.lr", 0.0, "[training].lr: must be > 0"),
    ("training.momentum", NAN, "[training].momentum: expected a finite number"),
    ("training.momentum", 1.0, "[training].momentum: must be < 1"),
    ("training.weight_decay", INF, "[training].weight_decay: expected a finite number"),
    ("training.weight_decay", -1.0, "[training].weight_decay: must be >= 0"),
    ("training.batch_size", 0, "[training].batch_size: must be >= 1"),
    ("training.local_epochs", 0, "[training].local_epochs: must be >= 1"),
    ("training.local_steps", 0, "[training].local_steps: must be >= 1"),
    ("training.optimizer", "lbfgs", "[training].optimizer: expected one of"),
    ("task.n_sites", 0, "[task].n_sites: must be >= 1"),
    ("task.n_per_site", NAN, "[task].n_per_site: expected an integer"),
    ("task.test_fraction", NAN, "[task].test_fraction: expected a finite number"),
    ("task.test_fraction", 1.0, "[task].test_fraction: must be < 1"),
    ("task.colour", "blue", "allowed keys are ['hidden', 'model', 'n_features', 'n_per_site', 'n_sites', 'seed',"),
    ("sweep.privcy.target_epsilon", [1.0], "[sweep].privcy.target_epsilon: no listed protocol has a table 'privcy'"),
    ("sweep.training.lr", [0.1], "[sweep].training.lr: no listed protocol has a table 'training'"),
    ("sweep.privacy.target_epsilon", [NAN], "[sweep].privacy.target_epsilon[0]: expected a finite number"),
    ("sweep.privacy.target_epsilon", [INF], "[sweep].privacy.target_epsilon[0]: expected a finite number"),
    ("sweep.privacy.target_epsilon", [-1.0], "target_epsilon: must be > 0"),
    ("sweep.privacy.target_epsilonn", [1.0], "unknown key(s) ['target_epsilonn']"),
]


def _sweep(exp: dict[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    out = dict(exp)
    out["sweep"] = {dotted.split(".", 1)[1]: value}
    return out


@pytest.mark.parametrize("key, value, message", EXPERIMENT_CASES, ids=[f"{k}={v!r}" for k, v, _ in EXPERIMENT_CASES])
def test_experiment_values(tmp_path, key, value, message):
    exp = _sweep(BASE, key, value) if key.startswith("sweep.") else _set(BASE, key, value)
    path = _write(tmp_path, exp, _protocol("dp-sgd-local"))
    with pytest.raises(SpecError, match=re.escape(message)):
        prepare(load_experiment(path))


PROTOCOL_CASES = [
    ("dp-sgd-local", "privacy.max_grad_norm", INF, "[privacy].max_grad_norm: expected a finite number, found inf"),
    ("dp-sgd-local", "privacy.max_grad_norm", NAN, "[privacy].max_grad_norm: expected a finite number, found nan"),
    ("dp-sgd-local", "privacy.max_grad_norm", 0.0, "[privacy].max_grad_norm: must be > 0"),
    ("dp-sgd-local", "privacy.target_epsilon", INF, "[privacy].target_epsilon: expected a finite number, found inf"),
    ("dp-sgd-local", "privacy.target_epsilon", NAN, "[privacy].target_epsilon: expected a finite number, found nan"),
    ("dp-sgd-local", "privacy.target_epsilon", -1.0, "[privacy].target_epsilon: must be > 0"),
    ("dp-sgd-local", "privacy.delta", NAN, "[privacy].delta: expected a finite number"),
    ("dp-sgd-local", "privacy.delta", 1.0, "[privacy].delta: must be < 1"),
    ("dp-sgd-local", "privacy.delta", 0.0, "[privacy].delta: must be > 0"),
    ("dp-sgd-local", "privacy.epsilon_budget", INF, "[privacy].epsilon_budget: expected a finite number"),
    ("dp-sgd-local", "privacy.epsilon_budget", 0.0, "[privacy].epsilon_budget: must be > 0"),
    ("dp-sgd-local", "privacy.site_budgets", {"site9": 1.0}, "site_budgets: unknown site(s) ['site9']"),
    ("dp-sgd-local", "privacy.site_budgets", {"site1": INF},
     "site_budgets.site1: expected a finite number > 0, found inf"),
    ("dp-sgd-local", "privacy.site_budgets", {"site1": NAN}, "site_budgets.site1: expected a number > 0, found nan"),
    ("dp-sgd-local", "privacy.site_budgets", {"site1": -1.0}, "site_budgets.site1: expected a number > 0, found -1.0"),
    ("dp-sgd-local", "privacy.accountant", "moments", "[privacy].accountant: expected one of"),
    ("dp-sgd-local", "aggregation.server_lr", NAN, "[aggregation].server_lr: expected a finite number"),
    ("dp-sgd-local", "aggregation.server_lr", INF, "[aggregation].server_lr: expected a finite number"),
    ("dp-sgd-local", "aggregation.beta1", NAN, "[aggregation].beta1: expected a finite number"),
    ("dp-fedavg-central", "privacy.clip_learning_rate", INF, "[privacy].clip_learning_rate: expected a finite number"),
    ("dp-fedavg-central", "privacy.target_quantile", NAN, "[privacy].target_quantile: expected a finite number"),
    ("dp-distributed-ckks", "privacy.sample_rate", NAN, "[privacy].sample_rate: expected a finite number"),
    ("dp-distributed-ckks", "privacy.sample_rate", 0.0, "[privacy].sample_rate: must be > 0"),
    ("dp-distributed-ckks", "privacy.min_sites", 9, "[privacy].min_sites: 9 exceeds the 3 sites"),
]


@pytest.mark.parametrize("protocol, key, value, message", PROTOCOL_CASES,
                         ids=[f"{p}:{k}={v!r}" for p, k, v, _ in PROTOCOL_CASES])
def test_protocol_values(tmp_path, protocol, key, value, message):
    path = _write(tmp_path, BASE, _set(_protocol(protocol), key, value))
    with pytest.raises(SpecError, match=re.escape(message)):
        chosen, task = prepare(load_experiment(path))
        from secure_fl.run.federation import Federation  # errors found only when the privacy layer is built

        Federation(load_experiment(path), task, chosen[0], 0, tmp_path / "run")


@pytest.mark.parametrize(
    "args, message",
    [
        (["--rounds", "0"], "--rounds: must be an integer >= 1, found 0"),
        (["--rounds", "-1"], "--rounds: must be an integer >= 1, found -1"),
        (["--seeds", "-3"], "--seeds: every seed must be an integer >= 0, found [-3]"),
        (["--protocol", "nope"], "--protocol ['nope']: not in"),
    ],
)
def test_cli_overrides_are_validated(tmp_path, capsys, args, message):
    path = _write(tmp_path, BASE, _protocol("plain-fedavg"))
    for command in ("run", "compare"):
        assert main([command, str(path), *args, "--out", str(tmp_path / "runs"), "--quiet"]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()  # nothing was started


def test_a_nan_spec_value_is_a_clear_cli_error(tmp_path, capsys):
    path = _write(tmp_path, _set(BASE, "training.lr", NAN), _protocol("plain-fedavg"))
    assert main(["run", str(path), "--quiet", "--out", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert "[training].lr: expected a finite number, found nan" in err and "Traceback" not in err


def test_keys_provision_refuses_a_file_and_a_non_empty_folder(tmp_path, capsys):
    file = tmp_path / "keys.txt"
    file.write_text("not a folder")
    assert main(["keys", "provision", "--sites", "2", "--out", str(file)]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
    folder = tmp_path / "shared"
    folder.mkdir(mode=0o755)
    (folder / "notes.txt").write_text("x")
    folder.chmod(0o755)
    assert main(["keys", "provision", "--sites", "2", "--out", str(folder)]) == 2
    assert "the folder is not empty" in capsys.readouterr().err
    assert folder.stat().st_mode & 0o777 == 0o755 and sorted(p.name for p in folder.iterdir()) == ["notes.txt"]


def _wrong_values(value: Any) -> list[Any]:
    """Values no key of that kind accepts: for numbers NaN, infinity, a negative and a string;
    for booleans a string; for strings a number and a word no enumeration lists."""
    if isinstance(value, bool):
        return ["yes", 1]
    if isinstance(value, (int, float)):
        return [NAN, INF, -1, "x"]
    if isinstance(value, str):
        return [123, "no-such-value"]
    return []


@pytest.mark.parametrize("protocol", sorted(p.stem for p in PROTOCOLS_DIR.glob("*.toml")))
def test_every_key_of_every_catalogue_protocol_refuses_a_wrong_value(tmp_path, protocol):
    """Each scalar key of each table, fed each wrong value, is a SpecError naming the key: at parse
    time, or when the run builds its privacy layer and secure sum; never another exception."""
    from secure_fl.protocol.spec import parse_protocol
    from secure_fl.run.federation import Federation

    base = _protocol(protocol)
    tried = 0
    for table in ("secure_sum", "aggregation", "privacy"):
        for key, good in (base.get(table) or {}).items():
            for wrong in _wrong_values(good):
                data = _set(base, f"{table}.{key}", wrong)
                tried += 1
                with pytest.raises(SpecError, match=re.escape(key)) as err:
                    parse_protocol(data, source="proto.toml")
                    path = _write(tmp_path, BASE, data)
                    chosen, task = prepare(load_experiment(path))
                    Federation(load_experiment(path), task, chosen[0], 0, tmp_path / "run")
                assert f"[{table}]" in str(err.value) or table in str(err.value), (key, wrong, str(err.value))
    assert tried >= 8


@pytest.mark.parametrize("task, keys", [
    ("synthetic-tabular", {"seed": -1, "split_seed": -1, "n_features": 0, "hidden": NAN, "model": "tree"}),
    ("synthetic-faces", {"seed": -1, "split_seed": -1, "alpha": NAN, "image_size": [1], "n_sites": 0}),
    ("heart-disease", {"split_seed": -1, "hospitals": ["Mars"], "test_fraction": INF, "hidden": 0}),
])
def test_task_keys_refuse_wrong_values(tmp_path, task, keys):
    """Seeds below zero were a bare ValueError from NumPy; every task key error names the key."""
    from secure_fl.errors import SecureFLError

    for key, wrong in keys.items():
        exp = dict(BASE, task={"name": task, "n_sites": 3} if task == "synthetic-faces" else {"name": task})
        path = _write(tmp_path, _set(exp, f"task.{key}", wrong), _protocol("plain-fedavg"))
        with pytest.raises(SecureFLError, match=re.escape(f"[task].{key}")):
            prepare(load_experiment(path))
