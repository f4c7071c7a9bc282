"""The site side of the Flower engine, independent of Flower: ``handle(kit, request) -> reply``.

Every message a SuperNode receives runs in a fresh ``flwr-clientapp`` process (Flower 1.40), so
the site reloads its kit, data and protocol each time and keeps its per-run state on disk:
``KIT/state/runs/RUN/site.pkl`` (0600 in the 0700 kit), holding the current global weights,
the server optimiser (for protocols that release the sum to the sites only) and the live
:class:`~secure_fl.protocol.base.SiteParty` objects. Why the kit and not ``context.state``:
the party holds the round's secrets (X25519 private keys, self-mask seeds, Shamir shares),
and ``context.state`` travels between the SuperNode and each ClientApp process over the
node's local Runtime API without TLS and lives in the SuperNode's memory; the kit folder is
the one place the site already trusts with its long-term secrets, survives a SuperNode
restart, and a round's party is deleted as soon as the round is over at this site. The pickle
is written and read only by this site's own processes (never received from the network:
requests use :mod:`.codec`). The protocol object and the CKKS context are not pickled: they are
rebuilt from the spec and the kit and re-attached on load (``persistent_id``).

A request is ``{"run", "federation_id", "ops": [...]}``; ops run in order, so one Flower
message can finish round r (e.g. CKKS decrypt and server step) and start round r+1 (train and
first stage): the fusion that keeps a round to few server round trips. Ops:

* ``hello``: check federation, kit, node name and spec approval; load the task; report dim.
* ``begin``: adopt the weights sent (or the site's own), evaluate them (the previous round's
  model), train, transform, charge the ledger, create this round's party. A DP protocol runs
  the local engine's privacy layer (:mod:`.privacy`): the ledger is the kit's, the budget the
  kit's, and a round whose charge would exceed it is refused *before* anything of it is sent
  (the reply says so; the other ops of that round are skipped; the protocol sees a dropout).
  The round's update is kept (after its charge, before it is sent): a round replayed after an
  aggregator restart re-sends it from the model the round first started from, and is never
  charged again (:class:`~.ledger.RunLedger` keys charges by run and round).
* ``step``: one protocol stage; when the site holds the released sum (CKKS, ``release =
  "sites"``) it also applies the server step to its own copy of the model.
* ``evaluate`` / ``final``: metrics of the current model (with score histograms for the pooled
  AUC); the final model's digest (and, from the designated site, the model and its model card).

Every refusal raises a :class:`~secure_fl.errors.SecureFLError` whose message names the spec,
hash, file or federation at fault; the ClientApp turns it into a refusal reply.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import os
import pickle
import re
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ...crypto.ckks import CkksContext
from ...deploy.kit import Kit, KitError, load_kit, write_private
from ...errors import ProtocolError, SecureFLError, SiteRejected
from ...protocol.base import AGGREGATOR, SecureSum, SiteParty
from ...protocol.spec import ProtocolSpec, parse_protocol
from ..memory import peak_rss_bytes
from .codec import message_from_dict, message_to_dict
from .privacy import LEDGER_FILE, check_site_may_run, deployed_privacy_layer
from .setup import setup_protocol

__all__ = ["SiteRuntime", "SpecNotApproved", "handle_request"]

_RUN = re.compile(r"^[0-9a-f]{8,64}$")


class SpecNotApproved(SecureFLError):
    """The site has not approved the protocol spec it is asked to run."""


@dataclass
class _State:
    weights: np.ndarray | None = None
    server: Any = None
    parties: dict[int, SiteParty] = field(default_factory=dict)
    roster: list[str] = field(default_factory=list)
    dim: int = 0
    #: every site's training-set size (public; the privacy layer calibrates from them)
    sizes: dict[str, int] = field(default_factory=dict)
    #: this round's update as it enters the secure sum (values, weight, training metrics): a replayed
    #: round re-sends it instead of training (and charging) again
    updates: dict[int, tuple[np.ndarray, float, dict[str, float]]] = field(default_factory=dict)
    #: the model and server optimiser each of the last rounds started from (a replayed round starts there again)
    starts: dict[int, tuple[np.ndarray, Any]] = field(default_factory=dict)
    #: state of the seeded noise generator (``secure_noise = false`` only), continued across rounds
    noise_state: dict[str, Any] | None = None


class _Pickler(pickle.Pickler):
    def persistent_id(self, obj: Any) -> str | None:
        if isinstance(obj, SecureSum):
            return "protocol"
        if isinstance(obj, CkksContext):
            return "ckks"
        return None


class _Unpickler(pickle.Unpickler):
    def __init__(self, fh: Any, refs: dict[str, Any]) -> None:
        super().__init__(fh)
        self._refs = refs

    def persistent_load(self, pid: Any) -> Any:
        try:
            return self._refs[pid]
        except KeyError:
            raise ProtocolError(f"site state refers to {pid!r}, which this process has not set up") from None


def approve_message(spec: ProtocolSpec, kit: Kit) -> str:
    return (
        f"site {kit.name!r} has not approved protocol spec {spec.name!r} (spec hash {spec.spec_hash}); "
        f"its data officer can approve it with `secure-fl site approve {kit.path} <spec.toml>`"
    )


class SiteRuntime:
    """One site's view of one deployed run, rebuilt in every ClientApp process."""

    def __init__(self, kit_path: str | Path, node_site: str | None = None) -> None:
        self.kit = load_kit(kit_path, role="site")
        if node_site and node_site != self.kit.name:
            raise KitError(f"this SuperNode was started as site {node_site!r} "
                           f"but its kit {self.kit.path} is site {self.kit.name!r}")
        self._run: str | None = None
        self._cfg: dict[str, Any] = {}
        self._protocol: SecureSum | None = None
        self._spec: ProtocolSpec | None = None
        self._exp_obj: Any = None
        self._task_obj: Any = None
        self._index = -1
        self._ckks: CkksContext | None = None
        self._layer: Any = None
        self._sigmas: dict[str, float] | None = None

    # --- run folder at the site ---------------------------------------------------------
    def _run_dir(self) -> Path:
        assert self._run is not None
        d = self.kit.state_dir / "runs" / self._run
        d.mkdir(mode=0o700, parents=True, exist_ok=True)
        return d

    def _open_run(self, run: str) -> None:
        if not isinstance(run, str) or not _RUN.match(run):
            raise ProtocolError(f"bad run token {run!r}")
        self._run = run

    def _load_run_config(self) -> None:
        path = self._run_dir() / "run.json"
        if not path.exists():
            raise ProtocolError(f"site {self.kit.name!r} has no record of run {self._run}: "
                                "the run must start with a hello stage")
        self._cfg = json.loads(path.read_text())
        self._prepare(self._cfg)

    def _prepare(self, cfg: dict[str, Any]) -> None:
        """Check the spec (approval, the kit's DP rules); the experiment and the task load on first use, so a
        message that only steps the protocol (most SecAgg+ stages) imports neither torch nor the data."""
        spec = parse_protocol(cfg["protocol"], cfg.get("protocol_source", "<aggregator>"))
        approved = self.kit.approvals()
        if spec.spec_hash not in approved:
            raise SpecNotApproved(approve_message(spec, self.kit))
        self._budget = check_site_may_run(self.kit, spec, not spec.build_secure_sum().releases_to_aggregator)
        self._spec = spec
        self._cfg = cfg
        self._exp_obj = None
        self._task_obj = None

    @property
    def _exp(self) -> Any:
        if self._exp_obj is None:
            from ...run.experiment import parse_experiment

            self._exp_obj = parse_experiment(self._cfg["experiment"], "<aggregator experiment>")
        return self._exp_obj

    @property
    def _task(self) -> Any:
        if self._task_obj is None:
            from ...tasks.registry import build_task

            exp = self._exp
            data = self.kit.site_config.get("data", self.kit.name)
            params = dict(exp.task_params)
            if "data_path" in self.kit.site_config:
                params["paths"] = [self.kit.site_config["data_path"]]
            task = build_task(exp.task_name, params, f"experiment [task] at site {self.kit.name!r}")
            names = [s.name for s in task.sites]
            if "data_path" in self.kit.site_config:
                self._index = 0
            elif data in names:
                self._index = names.index(data)
            else:
                raise KitError(f"{self.kit.path}/kit.json: site data {data!r} is not a site of task "
                               f"{exp.task_name!r} (it has {names})")
            self._task_obj = task
        return self._task_obj

    def _privacy(self, sizes: dict[str, int]) -> Any:
        """This run's privacy layer (built once per process; the ledger is the kit's, keyed by run and round)."""
        if self._layer is None:
            assert self._spec is not None and self._run is not None
            run = self._run

            from .ledger import RunLedger

            def ledger_for(site: str) -> RunLedger:
                if site != self.kit.name:
                    raise ProtocolError(f"site {self.kit.name!r} keeps no ledger for site {site!r}")
                return RunLedger(self.kit.ledger_dir / LEDGER_FILE, self.kit.name, self._budget, run)

            self._layer = deployed_privacy_layer(self._spec, self._exp, int(self._cfg["seed"]), sizes,
                                                 self._run_dir(), ledger_for, self._sigmas)
            if self._spec.privacy is not None:
                self._sigmas = {s: self._layer.noise_multiplier_for(s) for s in sizes}
        return self._layer

    def _protocol_for(self, roster: list[str], dim: int, sizes: dict[str, int]) -> SecureSum:
        if self._protocol is None:
            assert self._spec is not None
            proto = self._spec.build_secure_sum()
            if self._spec.privacy is not None:
                bounds = getattr(self._privacy(sizes), "public_bounds", lambda: None)()
                if bounds is not None and hasattr(proto, "use_public_bounds"):
                    proto.use_public_bounds(*bounds)  # as run/federation.py: no per-site magnitude travels
            setup_protocol(
                proto, roster, dim,
                ckks_file=self.kit.file("ckks/secret.ckks"), ckks_kind="secret",
                identities=self.kit.identity_public_keys(),
                signing_keys={self.kit.name: self.kit.file("identity/ed25519.key").read_bytes()},
            )
            self._protocol = proto
            self._ckks = getattr(proto, "_secret", None)
        return self._protocol

    def _load_state(self) -> _State:
        path = self._run_dir() / "site.pkl"
        if not path.exists():
            return _State()
        with path.open("rb") as fh:
            head = pickle.load(fh)  # roster and dim first: the protocol is set up before the parties load
            self._sigmas = head.get("sigmas")
            proto = self._protocol_for(head["roster"], head["dim"], head.get("sizes", {})) if head["roster"] else None
            refs = {"protocol": proto, "ckks": self._ckks}
            state: _State = _Unpickler(fh, refs).load()
        return state

    def _save_state(self, state: _State) -> None:
        buf = io.BytesIO()
        pickle.dump({"roster": state.roster, "dim": state.dim, "sizes": state.sizes, "sigmas": self._sigmas}, buf)
        _Pickler(buf, protocol=pickle.HIGHEST_PROTOCOL).dump(state)
        tmp = self._run_dir() / "site.pkl.tmp"
        tmp.unlink(missing_ok=True)
        write_private(tmp, buf.getvalue())
        os.replace(tmp, self._run_dir() / "site.pkl")

    # --- ops ------------------------------------------------------------------------------
    def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        fed_id = str(request.get("federation_id", ""))
        self.kit.check_peer(fed_id, str(request.get("federation", "?")), "the aggregator that sent this request")
        self._open_run(str(request.get("run", "")))
        ops = request.get("ops", [])
        if not ops or ops[0].get("op") != "hello":
            self._load_run_config()
        state: _State | None = None
        results: list[dict[str, Any]] = []
        refused: set[int] = set()
        for op in ops:
            kind = op.get("op")
            if kind == "hello":
                results.append(self._hello(op))
                continue
            if state is None:
                state = self._load_state()
            if kind == "begin":
                try:
                    results.append(self._begin(state, op))
                except SiteRejected as exc:  # e.g. its budget: nothing of this round leaves the site
                    refused.add(int(op["round"]))
                    print(f"secure-fl site: round {op['round']} refused: {exc.reason}", file=sys.stderr, flush=True)
                    results.append({"op": "begin", "round": int(op["round"]), "refused": exc.reason})
            elif kind == "step":
                if int(op["round"]) not in refused:
                    results.append(self._step(state, op))
            elif kind == "evaluate":
                results.append(self._evaluate(state, op))
            elif kind == "final":
                results.append(self._final(state, op))
            else:
                raise ProtocolError(f"unknown op {kind!r}")
        if state is not None:
            self._save_state(state)
        return {"site": self.kit.name, "results": results}

    def _hello(self, op: dict[str, Any]) -> dict[str, Any]:
        cfg = {k: op[k] for k in ("experiment", "protocol", "protocol_source", "seed")}
        self._prepare(cfg)
        model = self._task.make_model(int(cfg["seed"]))
        from ...training.flat import flatten

        dim = int(flatten(model).size)
        write_private(self._run_dir() / "run.json", json.dumps(cfg).encode(), overwrite=True)
        self._cfg = cfg
        (self._run_dir() / "site.pkl").unlink(missing_ok=True)
        site = self._task.sites[self._index]
        assert self._spec is not None
        return {
            "op": "hello", "site": self.kit.name, "federation_id": self.kit.federation_id,
            "kit_fingerprint": self.kit.fingerprint, "dim": dim, "initial_weights": flatten(model).astype(np.float64),
            "data": site.name, "n_train": site.n_train, "n_test": site.n_test, "spec_hash": self._spec.spec_hash,
        }

    def _model(self, state: _State) -> Any:
        from ...training.flat import flatten, load_flat

        model = self._task.make_model(int(self._cfg["seed"]))
        if state.weights is None:
            state.weights = flatten(model)
        load_flat(model, state.weights)
        return model

    def _metrics(self, state: _State) -> dict[str, Any]:
        site = self._task.sites[self._index]
        if not site.n_test:
            return {}
        import torch

        from .server import score_histograms

        model = self._model(state)
        logits = self._task.predict(model, site.x_test)
        out: dict[str, Any] = {k: float(v) for k, v in self._task.metrics_from_logits(logits, site.y_test).items()}
        if self._task.num_classes == 2:  # for the pooled AUC over all sites' test patients
            scores = torch.softmax(logits.double(), 1)[:, 1].numpy()
            out["score_hist"] = score_histograms(scores, site.y_test.numpy())
        return out

    def _begin(self, state: _State, op: dict[str, Any]) -> dict[str, Any]:
        from ...aggregation.server import make_server
        from ...run.federation import derive_seed
        from ...run.units import site_update

        r = int(op["round"])
        roster = [str(s) for s in op["roster"]]
        if self.kit.name not in roster:
            raise ProtocolError(f"round {r}: roster {roster} does not list this site {self.kit.name!r}")
        unknown = sorted(set(roster) - set(self.kit.sites))
        if unknown:
            raise KitError(f"round {r}: the aggregator's roster names sites {unknown} "
                           "that this federation never provisioned")
        if state.roster and state.roster != roster:
            raise ProtocolError(f"round {r}: roster changed from {state.roster} to {roster} within one run")
        dim = int(op["dim"])
        sizes = {str(k): int(v) for k, v in dict(op.get("sizes") or {}).items()}
        site = self._task.sites[self._index]
        if self._spec is not None and self._spec.privacy is not None:
            if set(sizes) != set(roster) or sizes.get(self.kit.name) != site.n_train:
                raise ProtocolError(f"round {r}: the aggregator's site sizes {sizes} do not match the roster {roster} "
                                    f"and this site's {site.n_train} training examples")
            if state.sizes and state.sizes != sizes:
                raise ProtocolError(f"round {r}: site sizes changed from {state.sizes} to {sizes} within one run")
        state.roster, state.dim, state.sizes = roster, dim, sizes
        proto = self._protocol_for(roster, dim, sizes)
        if op.get("weights") is not None:
            w = np.asarray(op["weights"], dtype=np.float64)
            if w.size != dim:
                raise ProtocolError(f"round {r}: the aggregator sent {w.size} weights, the model has {dim}")
            state.weights = w.astype(np.float32)
        assert self._spec is not None
        if state.server is None:
            agg = self._spec.aggregation
            state.server = make_server(agg.server, agg.server_lr, agg.beta1, agg.beta2, agg.tau)
        if state.weights is None:
            self._model(state)
        assert state.weights is not None
        # an aggregator that restarts replays the rounds after its last finished one (at most the last two here):
        # such a round starts again from the model it first started from and re-sends the update it first sent
        if op.get("weights") is None and r in state.starts:
            w0, server0 = state.starts[r]
            state.weights, state.server = w0.copy(), copy.deepcopy(server0)
        state.starts = {k: v for k, v in state.starts.items() if r - 1 <= k < r}
        state.starts[r] = (state.weights.copy(), copy.deepcopy(state.server))
        out: dict[str, Any] = {"op": "begin", "round": r}
        if r > 0 and op.get("evaluate", True):
            out["eval"] = self._metrics(state)
        model = self._model(state)  # sets state.weights when the site has none yet
        weights = state.weights
        if weights is None:
            raise ProtocolError(f"site {self.kit.name!r}: no global weights after loading the model")
        for old in [k for k in state.parties if k < r]:
            del state.parties[old]
        privacy = self._privacy(sizes).site(self.kit.name)
        rng = getattr(getattr(privacy, "source", None), "rng", None)  # a seeded noise stream continues across rounds
        if rng is not None and state.noise_state is not None:
            rng.bit_generator.state = state.noise_state
        if r in state.updates:  # a replayed round: the same update again, already charged
            values, weight, metrics = state.updates[r]
        else:
            seed = derive_seed(int(self._cfg["seed"]), r, self._index)
            values, weight, metrics = site_update(model, weights, site, privacy, self._exp.training,
                                                  self._task.loss_fn(), seed, r)  # SiteRejected before training
            state.updates = {k: v for k, v in state.updates.items() if r - 1 <= k < r}
            state.updates[r] = (values, weight, metrics)
            if rng is not None:
                state.noise_state = rng.bit_generator.state
        state.parties[r] = proto.site(self.kit.name, r, values, weight)
        # as the local engine's record: training metrics leave the site only when the spec hides nothing
        out["train"] = metrics if self._spec.threat_model.aggregator_sees == "plain" else {}
        spent = privacy.spent()
        if spent:
            out["spent"] = spent  # public: ε, δ, σ of the site's ledger (after this round's charge)
        return out

    def _step(self, state: _State, op: dict[str, Any]) -> dict[str, Any]:
        from ...run.units import server_update

        r, stage = int(op["round"]), str(op["stage"])
        party = state.parties.get(r)
        if party is None:
            raise ProtocolError(f"site {self.kit.name!r} has no party for round {r} (stage {stage!r}): "
                                "it did not begin this round")
        inbox = [message_from_dict(m) for m in op.get("inbox", [])]
        for m in inbox:
            if m.sender != AGGREGATOR or m.receiver != self.kit.name:
                raise ProtocolError(f"round {r}: message from {m.sender!r} to {m.receiver!r} "
                                    f"delivered to {self.kit.name!r}")
        sent = party.step(stage, inbox)
        out: dict[str, Any] = {"op": "step", "round": r, "stage": stage, "out": [message_to_dict(m) for m in sent]}
        proto = self._protocol
        assert proto is not None and self._spec is not None
        result = party.result()
        if result is not None and not proto.releases_to_aggregator:
            # this site holds the key that opens the sum: it takes the server step on its own copy
            assert state.weights is not None
            layer = self._privacy(state.sizes)  # e.g. distributed DP: -Σ / (q · N) and the minimum check
            state.weights = server_update(layer, state.server, state.weights, result, r, list(result.contributors))
            out["released"] = {"contributors": list(result.contributors), "model_sha256": _digest(state.weights)}
            del state.parties[r]
        elif op.get("last"):
            del state.parties[r]
        return out

    def _evaluate(self, state: _State, op: dict[str, Any]) -> dict[str, Any]:
        if op.get("weights") is not None:
            state.weights = np.asarray(op["weights"], dtype=np.float32)
        return {"op": "evaluate", "eval": self._metrics(state)}

    def _final(self, state: _State, op: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {"op": "final", "eval": self._metrics(state)}
        assert state.weights is not None
        out["model_sha256"] = _digest(state.weights)
        np.save(self._run_dir() / "model.npy", state.weights)
        if op.get("send_model"):
            out["weights"] = state.weights.astype(np.float32)  # as the site holds it: 4 bytes per parameter
        from ...tasks.export import model_card, save_site_stats

        # the site's own preprocessing statistics stay at the site, for its own predictions (secure-fl predict --stats)
        save_site_stats(self._task, self._run_dir(), only=self._task.sites[self._index].name)
        if op.get("card"):  # how to rebuild the model (model.json of the run folder; tasks/export.py)
            out["card"] = model_card(self._task, self._model(state))
        if op.get("cleanup"):
            state.parties.clear()
        return out


def _digest(w: np.ndarray) -> str:
    return hashlib.sha256(np.asarray(w, dtype="<f4").tobytes()).hexdigest()


def handle_request(kit_path: str | Path, request: dict[str, Any], node_site: str | None = None) -> dict[str, Any]:
    """Run one request at a site; a refusal comes back as ``{"refused": reason}`` (and is logged)."""
    t0 = time.perf_counter()
    try:
        reply = SiteRuntime(kit_path, node_site).handle(request)
        reply["seconds"] = time.perf_counter() - t0  # the site's own work, for the aggregator's timing record
        reply["peak_rss_bytes"] = peak_rss_bytes()  # this ClientApp process's peak memory, for the same record
        return reply
    except SecureFLError as exc:
        print(f"secure-fl site: refused: {exc}", file=sys.stderr, flush=True)
        return {"refused": str(exc), "error": type(exc).__name__}


def remove_run_state(kit: Kit, run: str) -> None:
    if _RUN.match(run):
        shutil.rmtree(kit.state_dir / "runs" / run, ignore_errors=True)
