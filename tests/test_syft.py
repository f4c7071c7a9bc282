"""PySyft datasites (secure_fl/engine/syft.py): the steward's approval gates everything; an approved run
returns only protected bytes and ends with the local engine's model.

Runs in the syft environment (``bash scripts/setup.sh --syft`` makes ``.venv-syft``: syft 0.9.5 pins
numpy 1.24.4, which flwr cannot share); the main suite runs this file there through
tests/test_syft_venv.py. Three in-memory datasites in this process, one kit each (``secure-fl provision``).
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

import numpy as np
import pytest

sy = pytest.importorskip(
    "syft", reason="syft is not installed here: it lives in .venv-syft (bash scripts/setup.sh --syft), "
    "where tests/test_syft_venv.py runs this file"
)

from payload_audit import Promise, SiteInput, audit, quantizer_of  # noqa: E402

import secure_fl.run.units as units  # noqa: E402
from secure_fl.deploy.kit import load_kit  # noqa: E402
from secure_fl.deploy.provision import provision  # noqa: E402
from secure_fl.engine import syft as sfl_syft  # noqa: E402
from secure_fl.engine.flower.codec import decode, encode  # noqa: E402
from secure_fl.engine.flower.server import DeployedRun  # noqa: E402
from secure_fl.protocol.base import AGGREGATOR, Message, ViewKind  # noqa: E402
from secure_fl.protocol.spec import load_protocol  # noqa: E402
from secure_fl.run.experiment import parse_experiment  # noqa: E402
from secure_fl.run.federation import Federation  # noqa: E402
from secure_fl.tasks.registry import build_task  # noqa: E402

SITES = {"alpha": "site1", "beta": "site2", "gamma": "site3"}
# as tests/test_views_payloads.py: 2,050 coordinates, enough power for the payload correlation check
TASK = {"name": "synthetic-tabular", "n_sites": 3, "n_per_site": 48, "model": "mlp", "hidden": 128}
ROUNDS = 2
RESEARCHER = {"email": "researcher@example.org", "password": "not-the-default-1"}


def _experiment(protocol: str) -> Any:
    return parse_experiment({
        "name": "syft", "protocols": [protocol], "rounds": ROUNDS, "seeds": [0], "task": dict(TASK),
        "training": {"local_epochs": 1, "batch_size": 16, "lr": 0.1},
    }, "syft.toml")


class Federated:
    """Kits, three in-memory datasites with their stewards, and the researcher's clients."""

    def __init__(self, tmp: Path) -> None:
        lines = ['name = "syft-test"', 'address = "127.0.0.1:19999"']
        for s, data in SITES.items():
            lines += [f"[sites.{s}]", f'data = "{data}"']
        (tmp / "fed.toml").write_text("\n".join(lines) + "\n")
        provision(tmp / "fed.toml", tmp / "kits")
        self.kits = tmp / "kits"
        task = build_task(TASK["name"], {k: v for k, v in TASK.items() if k != "name"})
        tag = secrets.token_hex(4)  # a datasite's store is named after it: concurrent test runs must not share one
        self.handles, self.stewards, self.clients, self.assets = {}, {}, {}, {}
        for s, data in SITES.items():
            handle, admin = sfl_syft.launch_datasite(f"secure-fl-{s}-{tag}")
            self.handles[s] = handle
            steward = sfl_syft.Steward(admin, self.kits / "sites" / s)
            steward.upload(next(site for site in task.sites if site.name == data))
            admin.register(name="Researcher", password_verify=RESEARCHER["password"], **RESEARCHER)
            self.stewards[s] = steward
            self.clients[s] = handle.login(**RESEARCHER)
            self.assets[s] = self.clients[s].datasets[f"secure-fl {s}"].assets["site-data"]

    def submit(self, spec: Any, sites: Any = SITES) -> dict[str, Any]:
        return {s: sfl_syft.submit_site_step(self.clients[s], self.assets[s], spec, ROUNDS) for s in sites}

    def land(self) -> None:
        for h in self.handles.values():
            h.land()


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory):
    f = Federated(tmp_path_factory.mktemp("syft"))
    yield f
    f.land()


def _runs(kit: Path) -> list[Path]:
    d = kit / "state" / "runs"
    return sorted(d.iterdir()) if d.exists() else []


def test_an_unapproved_request_runs_nothing(fed: Federated, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = load_protocol("secagg-fedavg")
    entered: list[str] = []
    real = sfl_syft.run_site_job
    monkeypatch.setattr(sfl_syft, "run_site_job", lambda *a, **k: entered.append(str(a[0]["name"])) or real(*a, **k))
    requests = fed.submit(spec, ["alpha"])
    transport = sfl_syft.SyftTransport({"alpha": fed.clients["alpha"]}, {"alpha": fed.assets["alpha"]},
                                       spec.spec_hash)
    probe = encode({"run": "0" * 32, "federation_id": "x", "ops": [{"op": "hello"}]})
    (reply,) = transport.exchange({"alpha": probe}, 10.0).values()
    assert not isinstance(reply, bytes) and reply.reply is None
    assert "approval" in str(reply.error) and "PENDING" in str(reply.error), reply.error
    assert entered == [] and _runs(fed.kits / "sites" / "alpha") == []
    assert "PENDING" in str(fed.stewards["alpha"].own(requests["alpha"]).status)

    # a steward who approves the syft request without secure-fl's check (the kit never approved the spec):
    # the job runs, and the site runtime refuses the round before anything of it exists
    fed.stewards["alpha"].own(requests["alpha"]).approve()
    exp = _experiment("secagg-fedavg")
    hello = {"op": "hello", "experiment": exp.raw, "protocol": spec.raw, "protocol_source": "x.toml", "seed": 0}
    kit = load_kit(fed.kits / "sites" / "alpha")
    request = encode({"run": "1" * 32, "federation_id": kit.federation_id, "federation": kit.federation,
                      "ops": [hello]})
    (got,) = transport.exchange({"alpha": request}, 10.0).values()
    # syft runs approved code on the private asset and on its mock; the mock run touches nothing
    assert isinstance(got, bytes) and sorted(entered) == ["site1", "site1 (mock)"]
    answer = decode(got)
    assert answer["error"] == "SpecNotApproved" and "secure-fl site approve" in answer["refused"], answer
    assert _runs(fed.kits / "sites" / "alpha") == []


def test_the_steward_refuses_code_that_is_not_the_pinned_site_step(fed: Federated) -> None:
    spec = load_protocol("plain-fedavg")
    name = sfl_syft.site_step_name(spec.spec_hash)
    src = sfl_syft.site_step_source(spec.spec_hash, "0.1.0")
    tampered = src.replace("from secure_fl.engine.syft import run_site_job", "run_site_job = eval(request)")
    ns: dict[str, Any] = {}
    import linecache

    linecache.cache["<tampered>"] = (len(tampered), None, tampered.splitlines(True), "<tampered>")
    exec(compile(tampered, "<tampered>", "exec"), ns)
    from syft.service.code.user_code import syft_function

    code = syft_function(input_policy=sy.MixedInputPolicy(data=fed.assets["beta"], request=str,
                                                          client=fed.clients["beta"]))(ns[name])
    request = fed.clients["beta"].code.request_code_execution(code)
    with pytest.raises(sfl_syft.SyftApprovalError, match="not the pinned secure-fl site step"):
        fed.stewards["beta"].approve(request, spec)
    assert "PENDING" in str(fed.stewards["beta"].own(request).status)
    assert spec.spec_hash not in load_kit(fed.kits / "sites" / "beta").approvals()
    with pytest.raises(sfl_syft.SyftApprovalError, match="spec hash must be"):
        sfl_syft.site_step_source("abc; import os", "0.1.0")


def _local_weights(exp: Any) -> np.ndarray:
    task = build_task(exp.task_name, exp.task_params)
    local = Federation(exp, task, exp.variants[0], 0, Path("/nonexistent-unused"))
    for r in range(exp.rounds):
        local.round(r)
    return local.weights


@pytest.mark.parametrize("protocol, tol", [("ckks-fedavg", 1e-6), ("secagg-plus-fedavg", 1e-3)])
def test_an_approved_run_sends_only_protected_bytes_and_gives_the_local_engines_model(
    fed: Federated, monkeypatch: pytest.MonkeyPatch, protocol: str, tol: float
) -> None:
    exp = _experiment(protocol)
    spec = exp.variants[0].spec
    for s, request in fed.submit(spec).items():
        review = fed.stewards[s].approve(request, spec)
        assert spec.spec_hash in review and "no sandbox" in review
    # what each site hands to the secure sum, captured at the site (the job runs in this process)
    plain: dict[int, dict[str, SiteInput]] = {}
    real_update = units.site_update

    def site_update(model, weights, site, privacy, training, loss_fn, seed, round, **kw):
        values, weight, metrics = real_update(model, weights, site, privacy, training, loss_fn, seed, round, **kw)
        owner = next(s for s, d in SITES.items() if d == site.name)
        plain.setdefault(round, {})[owner] = SiteInput(np.array(values, dtype=np.float64), float(weight))
        return values, weight, metrics

    monkeypatch.setattr(units, "site_update", site_update)
    views: list[Message] = []
    transport = sfl_syft.SyftTransport(fed.clients, fed.assets, spec.spec_hash)
    run = DeployedRun(load_kit(fed.kits / "aggregator"), exp, spec, 0, transport, tap=views.append, log=lambda s: None)
    records = run.run()
    assert [r["applied"] for r in records] == [True] * ROUNDS and records[0]["participants"] == sorted(SITES)
    assert sorted(plain) == list(range(ROUNDS)) and all(len(p) == 3 for p in plain.values())
    assert run.weights is not None and np.allclose(run.weights, _local_weights(exp), atol=tol, rtol=0)

    ids = sorted(SITES)
    proto = run.protocol
    promise = Promise(spec.threat_model.aggregator_sees, proto.min_contributors, quantizer_of(proto, len(ids)),
                      getattr(proto.aggregator(0, ids, run.dim), "context", None))
    # the protocol messages the aggregator carried, by round, as in the views invariant
    for r in range(ROUNDS):
        carried = [m for m in views if m.round == r and m.stage != "final_model"]
        assert any(m.receiver == AGGREGATOR for m in carried)
        assert audit(carried, plain[r], promise) == []
    # every byte each syft job returned (the released final model aside: the global model, an aggregate)
    blobs = []
    for trip in transport.replies:
        for s, raw in trip.items():
            reply = decode(raw)
            assert "refused" not in reply, reply
            for res in reply["results"]:
                assert set(res) <= sfl_syft.REPLY_KEYS[res["op"]]
                res.pop("weights", None) if res["op"] == "final" else None
            blobs.append(Message(0, "syft-job", s, AGGREGATOR, encode(reply), ViewKind.MASKED))
    assert len(blobs) >= 3 * (ROUNDS + 1)
    leak = encode({"site": "alpha", "results": [{"op": "step", "out": [plain[0]["alpha"].values]}]})
    assert audit([Message(0, "syft-job", "alpha", AGGREGATOR, leak, ViewKind.MASKED)], plain[0], Promise("masked"))
    for r in range(ROUNDS):
        assert audit(blobs, plain[r], Promise("masked")) == []
        for s, inp in plain[r].items():  # the plain update's bytes, checked directly too
            for enc in (inp.values.astype("<f8"), inp.values.astype("<f4"), (inp.values / inp.weight).astype("<f4")):
                assert not any(enc[:8].tobytes() in b.payload for b in blobs), f"{s}'s round-{r} update left the site"
