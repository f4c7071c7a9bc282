"""Provisioning kits and the Flower engine's two halves, without Flower processes (fast).

The same DeployedRun and site runtime that the Flower App carries run here over an in-process
transport; tests/test_flower_deploy.py runs them over real SuperLink/SuperNode processes.
"""

import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest
import tomllib

from secure_fl.deploy.kit import KitError, load_kit
from secure_fl.deploy.provision import federation_toml, parse_federation, provision, site_names
from secure_fl.engine.flower.codec import decode, encode
from secure_fl.engine.flower.inprocess import InProcessTransport
from secure_fl.engine.flower.server import DeployedRun
from secure_fl.engine.flower.site import handle_request
from secure_fl.errors import SpecError
from secure_fl.run.experiment import parse_experiment
from secure_fl.run.federation import Federation
from secure_fl.tasks.registry import build_task

SITES = {"alpha": "site1", "beta": "site2", "gamma": "site3"}


def _federation_toml(tmp_path: Path, name: str = "test-fed", sites: dict[str, str] = SITES) -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(federation_toml(name, "127.0.0.1:19999", sites))
    return path


@pytest.fixture
def kits(tmp_path):
    out = tmp_path / "kits"
    provision(_federation_toml(tmp_path), out)
    return out


def _exp(tiny_experiment_toml, protocol: str, rounds: int = 2, n_sites: int = 3):
    task = f'name = "synthetic-tabular"\nn_sites = {n_sites}\nn_per_site = 60'
    text = tiny_experiment_toml(protocols=f'["{protocol}"]', task=task, rounds=rounds)
    return parse_experiment(tomllib.loads(text), "tiny.toml")


def _approve(kits: Path, spec, sites=SITES) -> None:
    for s in sites:
        load_kit(kits / "sites" / s).approve(spec.spec_hash, spec.name, "test")


def test_each_kit_holds_only_what_its_party_may_hold(kits):
    agg = load_kit(kits / "aggregator", role="aggregator")
    site = load_kit(kits / "sites" / "alpha", role="site")
    assert set(agg.config["files"]) == {
        "tls/ca.crt",
        "tls/server.pem",
        "tls/server.key",
        "ckks/public.ckks",
        "nodes/alpha.pub",
        "nodes/beta.pub",
        "nodes/gamma.pub",
    }
    assert set(site.config["files"]) == {
        "tls/ca.crt",
        "node/auth.key",
        "node/auth.pub",
        "ckks/secret.ckks",
        "identity/ed25519.key",
    }
    assert agg.federation_id == site.federation_id and agg.fingerprint != site.fingerprint
    assert agg.config["site_kits"]["alpha"] == site.fingerprint
    for root, dirs, files in os.walk(kits):
        for d in dirs:
            assert stat.S_IMODE(os.stat(Path(root) / d).st_mode) == 0o700
        for f in files:
            assert stat.S_IMODE(os.stat(Path(root) / f).st_mode) == 0o600
    # Flower 1.40 accepts an EC key in OpenSSH format and a one-line OpenSSH public key
    assert (kits / "sites/alpha/node/auth.key").read_bytes().startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----")
    assert (kits / "sites/alpha/node/auth.pub").read_text().startswith("ecdsa-sha2-nistp256 ")
    # the aggregator's CKKS context cannot decrypt; the site's can
    from secure_fl.crypto.ckks import load_public_context, load_secret_context

    assert not load_public_context(kits / "aggregator/ckks/public.ckks").can_decrypt
    assert load_secret_context(kits / "sites/alpha/ckks/secret.ckks").can_decrypt
    # the server certificate names the loopback address and chains to the CA
    from cryptography import x509

    cert = x509.load_pem_x509_certificate((kits / "aggregator/tls/server.pem").read_bytes())
    ca = x509.load_pem_x509_certificate((kits / "sites/alpha/tls/ca.crt").read_bytes())
    cert.verify_directly_issued_by(ca)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in sans.get_values_for_type(x509.DNSName)


def test_a_wrong_altered_or_misused_kit_is_refused_by_name(kits, tmp_path):
    with pytest.raises(KitError, match="not a site kit"):
        load_kit(kits / "aggregator", role="site")
    with pytest.raises(KitError, match="not a aggregator kit|not a aggregator"):
        load_kit(kits / "sites/alpha", role="aggregator")
    key = kits / "sites/alpha/identity/ed25519.key"
    key.write_bytes(os.urandom(32))
    with pytest.raises(KitError, match="ed25519.key: its SHA-256 differs"):
        load_kit(kits / "sites/alpha")
    os.chmod(kits / "sites/beta/node/auth.key", 0o644)
    with pytest.raises(KitError, match="auth.key: readable by other users"):
        load_kit(kits / "sites/beta")
    cfg = json.loads((kits / "sites/gamma/kit.json").read_text())
    cfg["site"]["data"] = "site1"
    (kits / "sites/gamma/kit.json").write_text(json.dumps(cfg))
    with pytest.raises(KitError, match="fingerprint does not match"):
        load_kit(kits / "sites/gamma")
    with pytest.raises(SpecError, match="not empty"):
        provision(_federation_toml(tmp_path), kits)


def test_a_tasks_sites_become_a_federation_file():
    sites = site_names(["Cleveland", "VA Long Beach", "site1"])
    assert sites == {"cleveland": "Cleveland", "va-long-beach": "VA Long Beach", "site1": "site1"}
    text = federation_toml("m", "127.0.0.1:1", sites, {"budget_epsilon": 10.0, "budget_delta": 1e-5})
    fed = parse_federation(tomllib.loads(text), "m.toml")
    assert fed["sites"]["va-long-beach"] == {"data": "VA Long Beach", "budget": {"epsilon": 10.0, "delta": 1e-5}}
    with pytest.raises(SpecError, match="'Site 1' and 'site-1' make the same site name 'site-1'"):
        site_names(["Site 1", "site-1"])
    with pytest.raises(SpecError, match="task site '§§': no site name"):
        site_names(["§§"])


def test_federation_file_errors_name_the_key(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "x"\naddress = "nohost"\n[sites.a]\n[sites.b]\n')
    with pytest.raises(SpecError, match="address: expected HOST:PORT"):
        provision(bad, tmp_path / "o1")
    bad.write_text('name = "x"\naddress = "127.0.0.1:1"\n[sites.Bad_Name]\n[sites.b]\n')
    with pytest.raises(SpecError, match="site names are lowercase"):
        provision(bad, tmp_path / "o2")


def test_site_refuses_unapproved_spec_and_other_federation(kits, tmp_path, tiny_experiment_toml):
    exp = _exp(tiny_experiment_toml, "plain-fedavg")
    spec = exp.variants[0].spec
    agg = load_kit(kits / "aggregator")
    hello = {
        "op": "hello",
        "experiment": exp.raw,
        "protocol": spec.raw,
        "protocol_source": "plain-fedavg.toml",
        "seed": 0,
    }
    req = {"run": "ab" * 8, "federation_id": agg.federation_id, "federation": agg.federation, "ops": [hello]}
    reply = handle_request(kits / "sites/alpha", req)
    assert "refused" in reply
    assert (
        "'plain-fedavg'" in reply["refused"]
        and spec.spec_hash in reply["refused"]
        and "site approve" in reply["refused"]
    )
    other = tmp_path / "other"
    provision(_federation_toml(tmp_path, "other-fed"), other)
    reply = handle_request(other / "sites/alpha", req)
    assert (
        "refused" in reply
        and "federation 'other-fed'" in reply["refused"]
        and "another provisioning" in reply["refused"]
    )


def test_codec_round_trip_and_refuses_garbage():
    value = {"a": [1, 2.5, None, "x", b"\x00\xff"], "w": np.arange(5, dtype=np.float64)}
    back = decode(encode(value))
    assert back["a"] == value["a"] and np.array_equal(back["w"], value["w"])
    from secure_fl.errors import ProtocolError

    with pytest.raises(ProtocolError):
        decode(b"garbage")
    with pytest.raises(ProtocolError):
        decode(encode(value)[:-3])


def test_codec_sends_a_float32_model_at_4_bytes_per_parameter():
    """Sites hold float32 models: the weights travel as float32 (not widened to float64), exactly."""
    w = np.random.default_rng(0).normal(size=1000).astype(np.float32)
    small, wide = encode({"weights": w}), encode({"weights": w.astype(np.float64)})
    assert len(wide) - len(small) == 4 * w.size
    back = decode(small)["weights"]
    assert back.dtype == np.float32 and np.array_equal(back, w)


def _local_weights(exp, protocol: str, rounds: int) -> np.ndarray:
    task = build_task(exp.task_name, exp.task_params)
    fed = Federation(exp, task, exp.variants[0], 0, Path("/nonexistent-unused"))
    for r in range(rounds):
        fed.round(r)
    return fed.weights


@pytest.mark.parametrize(
    "protocol, trips, tol", [("plain-fedavg", 1, 0.0), ("ckks-fedavg", 2, 1e-6), ("secagg-plus-fedavg", 4, 1e-3)]
)
def test_deployed_run_gives_the_local_engines_model(kits, tiny_experiment_toml, protocol, trips, tol):
    exp = _exp(tiny_experiment_toml, protocol)
    spec = exp.variants[0].spec
    _approve(kits, spec)
    views = []
    transport = InProcessTransport({s: kits / "sites" / s for s in SITES})
    run = DeployedRun(load_kit(kits / "aggregator"), exp, spec, 0, transport, tap=views.append, log=lambda s: None)
    records = run.run()
    assert [r["applied"] for r in records] == [True, True]
    assert records[0]["participants"] == sorted(SITES)
    assert records[0]["trips"] == trips  # server round trips in a steady round (the last adds the final evaluation)
    for rec in records:  # peak memory per party: the aggregator's process, and per trip the largest site process
        peaks = rec["peak_rss_bytes"]
        site_trips = {k for k in rec["stage_seconds"] if k.startswith("site:")}
        assert set(peaks) == {"aggregator"} | site_trips | ({"site:final"} if rec is records[-1] else set())
        assert all(isinstance(v, int) and v > 50 * 2**20 for v in peaks.values())  # bytes: torch alone takes more
    assert np.allclose(run.weights, _local_weights(exp, protocol, 2), atol=tol, rtol=0)
    # every carried message is a view; no single site's message is plain unless the spec says so
    kinds = {v.kind.value for v in views if v.sender in SITES and v.stage != "final_model"}
    assert kinds <= ({"plain"} if protocol == "plain-fedavg" else {"ciphertext", "masked", "public", "aggregate"})
    if protocol == "ckks-fedavg":
        assert all(r["metrics"] for r in records) and "site1/accuracy" in records[-1]["metrics"]
    # the site's per-run state holds no party once the run is over
    for s in SITES:
        (state,) = (kits / "sites" / s / "state" / "runs").iterdir()
        assert stat.S_IMODE((state / "site.pkl").stat().st_mode) == 0o600


def test_secagg_round_survives_a_site_that_stops_answering_mid_round(tmp_path, tiny_experiment_toml):
    sites = {**SITES, "delta": "site4"}
    kits = tmp_path / "kits4"
    provision(_federation_toml(tmp_path, sites=sites), kits)
    exp = _exp(tiny_experiment_toml, "secagg-plus-fedavg", rounds=1, n_sites=4)
    spec = exp.variants[0].spec
    _approve(kits, spec, sites)

    class Flaky(InProcessTransport):
        def exchange(self, requests, timeout):
            if len(self.trips) == 3:  # hello, begin+advertise_keys, share_keys: gamma dies before masked_input
                self.offline.add("gamma")
            return super().exchange(requests, timeout)

    transport = Flaky({s: kits / "sites" / s for s in sites})
    run = DeployedRun(load_kit(kits / "aggregator"), exp, spec, 0, transport, stage_timeout=1, log=lambda s: None)
    (rec,) = run.run()
    assert rec["applied"], rec
    assert rec["participants"] == ["alpha", "beta", "delta"]
    assert "no reply" in rec["dropped"]["gamma"]
    # the released model is the mean over the two survivors (up to quantisation)
    task = build_task(exp.task_name, exp.task_params)
    fed = Federation(exp, task, exp.variants[0], 0, Path("/nonexistent-unused"))
    w0 = fed.weights.copy()
    ups = [fed._site_update(i, 0) for i in (0, 1, 3)]
    mean = sum(v for v, _, _ in ups) / sum(w for _, w, _ in ups)
    assert np.allclose(run.weights, w0 + mean, atol=1e-3)


# --- DP protocols deployed: the same privacy layer, ledgers and budgets in the sites' kits -------------------

DP_SITES = {"site1": "site1", "site2": "site2", "site3": "site3"}  # kit names = task site names: same noise streams


def _dp_kits(tmp_path: Path, budgets: dict[str, float], name: str = "dp-fed") -> Path:
    lines = [f'name = "{name}"', 'address = "127.0.0.1:19998"']
    for s, data in DP_SITES.items():
        lines += [
            f"[sites.{s}]",
            f'data = "{data}"',
            "allow_seeded_noise = true",
            f"budget_epsilon = {budgets.get(s, 100.0)}",
            "budget_delta = 1e-5",
        ]
    (tmp_path / f"{name}.toml").write_text("\n".join(lines) + "\n")
    out = tmp_path / f"kits-{name}"
    provision(tmp_path / f"{name}.toml", out)
    return out


def _dp_exp(tiny_experiment_toml, tmp_path: Path, protocol: str, rounds: int = 2, sigma: float = 1.0):
    """The catalogue's DP spec with seeded noise (so the local engine draws the same) and a fixed σ
    (no calibration: it takes seconds, and is the same code in both engines)."""
    import re

    text = (Path(__file__).resolve().parents[1] / "protocols" / f"{protocol}.toml").read_text()
    text = re.sub(r"(?m)^target_epsilon = .*$", f"noise_multiplier = {sigma}", text)
    text = re.sub(r"(?m)^secure_noise = true", "secure_noise = false", text)
    spec_file = tmp_path / f"{protocol}-seeded.toml"
    spec_file.write_text(text)
    task = 'name = "synthetic-tabular"\nn_sites = 3\nn_per_site = 60'
    text = tiny_experiment_toml(protocols=f'["{spec_file}"]', task=task, rounds=rounds)
    return parse_experiment(tomllib.loads(text), "tiny.toml")


def _deployed(kits: Path, exp, sites=DP_SITES, **kw):
    spec = exp.variants[0].spec
    _approve(kits, spec, sites)
    transport = kw.pop("transport", None) or InProcessTransport({s: kits / "sites" / s for s in sites})
    return DeployedRun(load_kit(kits / "aggregator"), exp, spec, 0, transport, log=lambda s: None, **kw)


@pytest.mark.parametrize("protocol, tol", [("dp-sgd-local", 1e-6), ("dp-distributed-ckks", 1e-5)])
def test_dp_run_deployed_gives_the_local_engines_model_and_charges_the_kit_ledgers(
    tmp_path, tiny_experiment_toml, protocol, tol
):
    kits = _dp_kits(tmp_path, {})
    exp = _dp_exp(tiny_experiment_toml, tmp_path, protocol)
    run = _deployed(kits, exp)
    records = run.run()
    assert [r["applied"] for r in records] == [True, True], records
    local = Federation(exp, build_task(exp.task_name, exp.task_params), exp.variants[0], 0, tmp_path / "local")
    local_records = [local.round(r) for r in range(2)]
    assert np.allclose(run.weights, local.weights, atol=tol, rtol=0)
    from secure_fl.privacy.ledger import PrivacyLedger

    for s in DP_SITES:
        ledger = PrivacyLedger(kits / "sites" / s / "ledger" / "ledger.sqlite", s)
        rows = ledger.records()
        assert [r.round for r in rows] == [0, 1]
        assert all(r.note.startswith(f"deployed run {run.run_token}") for r in rows)
        # the same ε as the local engine's ledger for that site
        local_eps = local_records[-1]["privacy_spent"][s]["epsilon"]
        assert records[-1]["privacy_spent"][s]["epsilon"] == pytest.approx(local_eps)


def test_a_site_refuses_the_round_that_would_exceed_its_own_budget_and_sends_nothing_for_it(
    tmp_path, tiny_experiment_toml
):
    from secure_fl.privacy.accounting import compose, dp_sgd_event, epsilon
    from secure_fl.privacy.ledger import PrivacyLedger

    # a round of dp-sgd-local here: σ = 1, Poisson rate 16/48, 3 steps; site2's own budget allows one round, not two
    one = dp_sgd_event(1.0, 16 / 48, 3)
    eps1, eps2 = epsilon(one, 1e-5, "pld"), epsilon(compose([one, one]), 1e-5, "pld")
    kits = _dp_kits(tmp_path, {"site2": (eps1 + eps2) / 2})
    exp = _dp_exp(tiny_experiment_toml, tmp_path, "dp-sgd-local")

    class Recording(InProcessTransport):
        replies: list[dict[str, bytes]] = []

        def exchange(self, requests, timeout):
            out = super().exchange(requests, timeout)
            self.replies.append(dict(out))
            return out

    transport = Recording({s: kits / "sites" / s for s in DP_SITES})
    views = []
    run = _deployed(kits, exp, transport=transport, tap=views.append)
    r0, r1 = run.run()
    assert r0["applied"] and r0["participants"] == ["site1", "site2", "site3"]
    assert r1["applied"] and r1["participants"] == ["site1", "site3"], r1
    assert "privacy budget exhausted" in r1["dropped"]["site2"]
    # what site2 sent in round 1's trip (begin + the plain stage), read from the bytes: the others' replies carry
    # their noised update (a protocol message), site2's only its refusal
    trip = transport.replies[2]  # hello, round 0, round 1
    assert b'"out"' in trip["site1"] and b'"out"' in trip["site3"]
    assert b'"out"' not in trip["site2"] and b"payload" not in trip["site2"]
    reply = decode(trip["site2"])
    assert set(reply) == {"site", "results", "seconds", "peak_rss_bytes"}  # the metering of the reply, nothing else
    assert reply["results"] == [{"op": "begin", "round": 1, "refused": reply["results"][0]["refused"]}]
    assert not [v for v in views if v.sender == "site2" and v.round == 1]
    # its ledger (in its kit) holds round 0 only; the others paid for both rounds
    rows = {
        s: [r.round for r in PrivacyLedger(kits / "sites" / s / "ledger" / "ledger.sqlite", s).records()]
        for s in DP_SITES
    }
    assert rows == {"site1": [0, 1], "site2": [0], "site3": [0, 1]}


# --- the deployed run folder: the local engine's format; report and predict read it ---------------------------


def test_deployed_run_folder_has_the_local_engines_format_and_report_and_predict_read_it(tmp_path, capsys):
    import csv

    from test_predict import _site_files

    from secure_fl.cli import main
    from secure_fl.engine.flower.server import write_run_folder
    from secure_fl.run.compare import run_experiment
    from secure_fl.tasks.export import load_model

    a_tr, a_te = _site_files(tmp_path, "a", 0)
    b_tr, b_te = _site_files(tmp_path, "b", 1)
    c_tr, c_te = _site_files(tmp_path, "c", 2)
    sites = "".join(
        f'[[task.sites]]\nname = "{n}"\ntrain = "{tr}"\ntest = "{te}"\n'
        for n, tr, te in (("hospA", a_tr, a_te), ("hospB", b_tr, b_te), ("hospC", c_tr, c_te))
    )
    text = f"""
name = "hosp"
protocols = ["ckks-fedavg"]
rounds = 2
[task]
name = "csv"
label_column = "num"
label_map = {{"0" = 0, "1" = 1, "2" = 1, "3" = 1, "4" = 1}}
positive = 1
[task.columns]
age = "numeric"
sex = {{type = "categorical", levels = ["F", "M"], reference = "F"}}
chol = "numeric"
{sites}
[training]
local_epochs = 2
batch_size = 8
lr = 0.1
"""
    exp = parse_experiment(tomllib.loads(text), "hosp.toml")
    local = run_experiment(exp, tmp_path / "runs", show_progress=False).runs[0]
    local_dir = Path(local.path)
    hosp = {"hospa": "hospA", "hospb": "hospB", "hospc": "hospC"}
    kits = tmp_path / "kits"
    provision(_federation_toml(tmp_path, "hosp-fed", hosp), kits)
    spec = exp.variants[0].spec
    _approve(kits, spec, hosp)
    out = tmp_path / "deployed"
    run = DeployedRun(
        load_kit(kits / "aggregator"),
        exp,
        spec,
        0,
        InProcessTransport({s: kits / "sites" / s for s in hosp}),
        log=lambda s: None,
        out=out,
    )
    run.run()
    write_run_folder(run, out, spec.name)
    # the same files and, per file, the same keys as the local engine's run folder
    for name in ("model.pt", "model.json", "summary.json", "rounds.jsonl", "views.jsonl", "resolved.json"):
        assert (out / name).exists(), name
    assert not (out / "checkpoint.pt").exists()
    local_summary = json.loads((local_dir / "summary.json").read_text())
    summary = json.loads((out / "summary.json").read_text())
    assert set(local_summary) <= set(summary) and summary["status"] == "finished"
    assert set(summary["sites"]["hospa"]) == set(local_summary["sites"]["hospA"])
    local_rounds = [json.loads(line) for line in (local_dir / "rounds.jsonl").read_text().splitlines()]
    rounds = [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines()]
    assert len(rounds) == 2 and set(local_rounds[-1]) <= set(rounds[-1])
    # the same model and the same metrics: per site exact, pooled AUC from the sites' score histograms
    model, card = load_model(out)
    local_model, local_card = load_model(local_dir)
    for (k, v), (k2, v2) in zip(model.state_dict().items(), local_model.state_dict().items()):
        assert k == k2 and torch_allclose(v, v2)
    assert card["architecture"] == local_card["architecture"] and card["preprocessing"] == local_card["preprocessing"]
    m, lm = rounds[-1]["metrics"], local_rounds[-1]["metrics"]
    assert set(lm) <= set(m)
    for k in lm:
        assert m[k] == pytest.approx(lm[k], abs=1e-6 if k != "pooled/auc" else 5e-3), k
    # secure-fl report and secure-fl predict work on the deployed run folder
    assert main(["report", str(out)]) == 0
    assert (out / "report.html").exists()
    capsys.readouterr()
    # the aggregator's folder holds no site's own statistics; site hospA keeps its own in its kit
    assert not (out / "sites" / "hospA" / "preprocessing.json").exists()
    assert main(["predict", str(out), "--data", a_te, "--site", "hospA"]) == 2
    own = list((kits / "sites" / "hospa" / "state" / "runs").glob("*/sites/hospA/preprocessing.json"))
    assert len(own) == 1 and not list((kits / "sites" / "hospb" / "state" / "runs").glob("*/sites/hospA/*"))
    capsys.readouterr()
    assert main(["predict", str(out), "--data", a_te, "--site", "hospA", "--stats", str(own[0])]) == 0
    rows = list(csv.reader(capsys.readouterr().out.splitlines()))
    assert main(["predict", str(local_dir), "--data", a_te, "--site", "hospA"]) == 0
    assert rows == list(csv.reader(capsys.readouterr().out.splitlines()))


def torch_allclose(a, b, atol: float = 1e-5) -> bool:
    return bool(np.allclose(a.numpy(), b.numpy(), atol=atol, rtol=0))


# --- an aggregator restart resumes from the last finished round, charging no ledger twice ----------------------


class _Killed(BaseException):
    """The aggregator process dies (not an error the engine may catch)."""


@pytest.mark.parametrize("protocol", ["dp-distributed-ckks", "dp-sgd-local"])
def test_a_killed_aggregator_resumes_after_its_last_finished_round_without_charging_twice(
    tmp_path, tiny_experiment_toml, protocol
):
    from secure_fl.privacy.ledger import PrivacyLedger
    from secure_fl.run.checkpoint import load_checkpoint

    kits = _dp_kits(tmp_path, {})
    exp = _dp_exp(tiny_experiment_toml, tmp_path, protocol, rounds=3)
    out = tmp_path / "run"

    class Dying(InProcessTransport):
        def exchange(self, requests, timeout):
            got = super().exchange(requests, timeout)  # the sites do this trip's work ...
            ops = [op for req in requests.values() for op in decode(req)["ops"]]
            if any(op["op"] == "begin" and op["round"] == 2 for op in ops):
                raise _Killed()  # ... and the aggregator dies before it reads their replies
            return got

    first = _deployed(kits, exp, transport=Dying({s: kits / "sites" / s for s in DP_SITES}), out=out)
    with pytest.raises(_Killed):
        first.run()
    finished = load_checkpoint(out)["round"]
    assert finished == 0 and [
        json.loads(line)["round"] for line in (out / "rounds.jsonl").read_text().splitlines()
    ] == [0]
    # every site had begun round 2 (trained, charged, sent): the resumed run replays rounds 1 and 2
    charged = {
        s: [r.round for r in PrivacyLedger(kits / "sites" / s / "ledger" / "ledger.sqlite", s).records()]
        for s in DP_SITES
    }
    assert charged == {s: [0, 1, 2] for s in DP_SITES}
    spec = exp.variants[0].spec
    resumed = DeployedRun.resume(
        load_kit(kits / "aggregator"),
        exp,
        spec,
        0,
        InProcessTransport({s: kits / "sites" / s for s in DP_SITES}),
        out,
        log=lambda s: None,
    )
    assert resumed.run_token == first.run_token and resumed.first_round == 1
    records = resumed.run()
    assert [r["round"] for r in records] == [0, 1, 2] and all(r["applied"] for r in records)
    assert [json.loads(line)["round"] for line in (out / "rounds.jsonl").read_text().splitlines()] == [0, 1, 2]
    # no ledger charged twice: one charge in force per round, none superseded, and the ε of an uninterrupted run
    for s in DP_SITES:
        ledger = PrivacyLedger(kits / "sites" / s / "ledger" / "ledger.sqlite", s)
        assert [r.round for r in ledger.records(include_superseded=True)] == [0, 1, 2]
    local = Federation(exp, build_task(exp.task_name, exp.task_params), exp.variants[0], 0, tmp_path / "local")
    local_records = [local.round(r) for r in range(3)]
    assert records[-1]["privacy_spent"]["site1"]["epsilon"] == pytest.approx(
        local_records[-1]["privacy_spent"]["site1"]["epsilon"]
    )
    # the replayed rounds re-sent the same (seeded-noise) updates: the model of an uninterrupted local run
    assert np.allclose(resumed.weights, local.weights, atol=1e-5, rtol=0)


def test_a_site_runs_a_dp_spec_only_within_its_own_kit_budget_and_with_secret_noise(
    kits, tmp_path, tiny_experiment_toml
):
    """The budget and δ cap come from the site's kit, never from the experiment or the aggregator."""

    def hello(kit_dir, exp):
        spec = exp.variants[0].spec
        load_kit(kit_dir).approve(spec.spec_hash, spec.name, "test")
        op = {"op": "hello", "experiment": exp.raw, "protocol": spec.raw, "protocol_source": "x.toml", "seed": 0}
        req = {
            "run": "cd" * 8,
            "federation_id": load_kit(kit_dir).federation_id,
            "federation": load_kit(kit_dir).federation,
            "ops": [op],
        }
        return handle_request(kit_dir, req)

    exp = _exp(tiny_experiment_toml, "dp-sgd-local")
    reply = hello(kits / "sites" / "alpha", exp)  # provisioned without a budget
    assert "refused" in reply and "has no privacy budget in its kit" in reply["refused"]
    assert "budget_epsilon" in reply["refused"]
    dp_kits = _dp_kits(tmp_path, {})
    # the experiment's own budget keys do not widen the site's: δ above the kit's cap is refused
    text = (Path(__file__).resolve().parents[1] / "protocols" / "dp-sgd-local.toml").read_text()
    loose = tmp_path / "loose.toml"
    loose.write_text(
        text.replace("delta = 1e-5", "delta = 1e-3").replace("secure_noise = true", "secure_noise = false")
    )
    task = 'name = "synthetic-tabular"\nn_sites = 3\nn_per_site = 60'
    exp = parse_experiment(tomllib.loads(tiny_experiment_toml(protocols=f'["{loose}"]', task=task)), "t.toml")
    reply = hello(dp_kits / "sites" / "site1", exp)
    assert "refused" in reply and "δ=0.001" in reply["refused"] and "δ cap 1e-05" in reply["refused"]
    # seeded noise (secure_noise = false) only at a site provisioned to allow it
    reply = hello(kits / "sites" / "beta", _dp_exp(tiny_experiment_toml, tmp_path, "dp-sgd-local"))
    assert "refused" in reply  # beta has no budget either; a budget but no allow_seeded_noise:
    fed = tmp_path / "strict.toml"
    fed.write_text(
        'name = "strict"\naddress = "127.0.0.1:19997"\n'
        + "".join(f'[sites.{s}]\ndata = "{s}"\nbudget_epsilon = 10.0\nbudget_delta = 1e-5\n' for s in DP_SITES)
    )
    provision(fed, tmp_path / "strict")
    reply = hello(tmp_path / "strict" / "sites" / "site1", _dp_exp(tiny_experiment_toml, tmp_path, "dp-sgd-local"))
    assert "refused" in reply and "secure_noise = false" in reply["refused"]
    assert "allow_seeded_noise" in reply["refused"]
    assert not list((tmp_path / "strict" / "sites" / "site1" / "ledger").iterdir())  # nothing charged


def test_deploy_run_resume_needs_a_checkpoint_of_a_deployed_run(kits, tmp_path, capsys):
    from secure_fl.cli import main

    code = main(
        [
            "deploy",
            "run",
            "heart-protocols",
            "--federation",
            str(kits / "aggregator"),
            "--protocol",
            "ckks-fedavg",
            "--out",
            str(tmp_path / "runs"),
            "--resume",
        ]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "--resume" in err and "holds no checkpoint of a deployed run" in err
