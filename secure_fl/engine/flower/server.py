"""The aggregator side of the Flower engine, independent of Flower: drives a deployed run.

:class:`DeployedRun` drives the *same* :class:`~secure_fl.protocol.base.SecureSum` parties as the
local engine (routing contract of :mod:`secure_fl.protocol.base`): the aggregator party runs
here, every site stage is one **server round trip** (a *trip*) to the live sites through a
:class:`Transport` (Flower in a deployment, in-process in tests). Stages are fused into few,
fat trips:

* the first site stage of round r travels with the round's start (adopt the model, evaluate
  it, train, transform, charge the ledger);
* when the protocol releases the sum to the sites only (CKKS ``release = "sites"``), the last
  site stage of round r (decrypt, and the server step each site takes on its own copy) travels
  with the start of round r+1, or with the final evaluation after the last round.

So a round costs ``site stages - 1`` trips for CKKS (2), one per site stage for SecAgg(+) (4:
the next round's training needs the model the aggregator releases after ``unmask``) and 1 for
the plaintext baseline, plus one trip per run to discover the sites and one to evaluate the
final model.

Dropouts: a site that does not answer a trip within ``stage_timeout`` seconds, or answers with
an error or a refusal, is dropped for the round (the protocol recovers, per its own rules) and
is not asked again in this run (a site that refuses one round, e.g. over its privacy budget,
is asked again the next). Every protocol message the aggregator carries is passed to ``tap``
and recorded as a view, as the local engine does.

DP protocols: the aggregator builds the same privacy layer as the sites (from the public site
sizes the sites report at hello and it relays with every ``begin``) for the release step when
it holds the sum, and the public bounds a CKKS sum uses; it keeps no ledger (:mod:`.privacy`).

Run folder and restart: with ``out``, each finished round is appended to ``rounds.jsonl`` /
``views.jsonl`` and ``checkpoint.pt`` saves what the next round needs (run token, roster, site
sizes, the aggregator's weights and server optimiser); :meth:`DeployedRun.resume` continues
after the last finished round under the same run token, so the sites replay any round they had
begun with the update they already sent and paid for. :func:`write_run_folder` finishes the
folder in the local engine's format.
"""

from __future__ import annotations

import copy
import hashlib
import json
import secrets
import time
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ...aggregation.server import make_server
from ...deploy.kit import Kit
from ...errors import ProtocolError, RoundAborted, SecureFLError
from ...protocol.base import AGGREGATOR, Message, SecureSum, ViewKind
from ...protocol.pipeline import NoPrivacy
from ...protocol.spec import ProtocolSpec
from ..local import View
from ..memory import peak_rss_bytes
from .codec import decode, encode, message_from_dict, message_to_dict
from .setup import setup_protocol

__all__ = ["Transport", "DeployedRun", "TripReply"]

Tap = Callable[[Message], None]


@dataclass
class TripReply:
    """What came back from one site for one trip: the decoded reply, or why nothing usable did."""

    reply: dict[str, Any] | None
    error: str | None = None


class Transport(Protocol):
    def sites(self) -> list[str]:
        """Provisioned sites reachable now (unknown nodes are refused by the transport)."""

    def exchange(self, requests: Mapping[str, bytes], timeout: float) -> dict[str, TripReply | bytes]:
        """Send one request per site and wait for the replies, at most ``timeout`` seconds."""


@dataclass
class _Round:
    r: int
    agg: Any
    sites: list[str]
    t0: float
    alive: set[str] = field(default_factory=set)
    dropped: dict[str, str] = field(default_factory=dict)
    inbox_agg: list[Message] = field(default_factory=list)
    #: (site, stage) of the step results already taken: one per site and stage (routing contract)
    stepped: set[tuple[str, str]] = field(default_factory=set)
    #: seconds the aggregator spent on messages it took on arrival, counted in its next stage
    folding: float = 0.0
    inbox_site: dict[str, list[Message]] = field(default_factory=lambda: defaultdict(list))
    views: list[View] = field(default_factory=list)
    bytes_up: dict[str, int] = field(default_factory=dict)
    bytes_down: dict[str, int] = field(default_factory=dict)
    train: dict[str, dict[str, float]] = field(default_factory=dict)
    stage_seconds: dict[str, float] = field(default_factory=dict)
    #: per trip ("site:<label>"): the largest peak RSS any replying site's ClientApp process reported
    site_peak_rss: dict[str, int] = field(default_factory=dict)
    trips: int = 0
    contributors: list[str] | None = None
    model_digests: dict[str, str] = field(default_factory=dict)
    applied: bool = False
    aborted: str | None = None
    t_end: float | None = None
    spent: dict[str, dict[str, Any]] = field(default_factory=dict)


class DeployedRun:
    """One deployed run of ``spec`` on the experiment ``exp`` (task, rounds, training) under ``seed``."""

    def __init__(
        self,
        kit: Kit,
        exp: Any,
        spec: ProtocolSpec,
        seed: int,
        transport: Transport,
        *,
        stage_timeout: float = 120.0,
        tap: Tap | None = None,
        log: Callable[[str], None] = print,
        out: Path | None = None,
    ) -> None:
        if kit.role != "aggregator":
            raise SecureFLError(f"{kit.path} is a {kit.role} kit; the aggregator drives a run with the aggregator kit")
        self.kit, self.exp, self.spec, self.seed = kit, exp, spec, seed
        self.transport, self.stage_timeout, self.tap, self.log = transport, stage_timeout, tap, log
        self.run_token = secrets.token_hex(16)
        self.protocol: SecureSum = spec.build_secure_sum()
        self.sites: list[str] = []
        self.data_names: dict[str, str] = {}
        self.refused: dict[str, str] = {}
        self.unreachable: dict[str, str] = {}
        self.dim = 0
        self.weights: np.ndarray | None = None
        agg = spec.aggregation
        self.server = make_server(agg.server, agg.server_lr, agg.beta1, agg.beta2, agg.tau)
        self.privacy: Any = NoPrivacy(spec.aggregation.weighting)
        #: training-set size per joined site (public: the privacy layer calibrates from them)
        self.site_sizes: dict[str, int] = {}
        self.records: list[dict[str, Any]] = []
        self.all_views: list[View] = []
        self.trips_total = 0
        self.final_digest: str | None = None
        #: the run folder (rounds.jsonl, views.jsonl and checkpoint.pt are written as rounds finish), or None
        self.out = Path(out) if out is not None else None
        self.first_round = 0
        #: per site: training and test set sizes and the data name (public; from the hello stage)
        self.site_info: dict[str, dict[str, Any]] = {}
        #: the model card the designated site sent with the final model (see write_run_folder)
        self.model_card: dict[str, Any] | None = None
        from ...run.records import utc_now

        self.started_utc = utc_now()
        self.resumed: list[dict[str, Any]] = []

    # --- transport ------------------------------------------------------------------------
    def _request(self, ops: list[dict[str, Any]]) -> bytes:
        kit = self.kit
        return encode({"run": self.run_token, "federation_id": kit.federation_id, "federation": kit.federation,
                       "ops": ops})

    def _trip(self, ops: Mapping[str, list[dict[str, Any]]], label: str,
              timeout: float | None = None) -> dict[str, dict[str, Any] | str]:
        """One server round trip; per site its decoded reply, or a string saying why it is dropped."""
        self.trips_total += 1
        timeout = timeout or self.stage_timeout
        raw = self.transport.exchange({s: self._request(o) for s, o in ops.items()}, timeout)
        out: dict[str, dict[str, Any] | str] = {}
        for s in ops:
            got = raw.get(s)
            if got is None:
                out[s] = f"no reply within {timeout:g} s at {label} (declared dropped by the stage timeout)"
                continue
            if isinstance(got, TripReply):
                if got.reply is None:
                    out[s] = got.error or f"no reply at {label}"
                    continue
                got = got.reply  # type: ignore[assignment]
            try:
                reply = decode(got) if isinstance(got, (bytes, bytearray)) else got
            except ProtocolError as exc:
                out[s] = f"unreadable reply at {label}: {exc}"
                continue
            if not isinstance(reply, dict):
                out[s] = f"malformed reply at {label}"
            elif "refused" in reply:
                out[s] = f"refused at {label}: {reply['refused']}"
            elif reply.get("site") != s:
                out[s] = f"reply at {label} claims to come from site {reply.get('site')!r}"
            else:
                out[s] = reply
        return out

    # --- discovery ------------------------------------------------------------------------
    def discover(self) -> list[str]:
        roster = self.kit.sites
        reachable = self.transport.sites()
        hello = {
            "op": "hello", "experiment": self.exp.raw, "protocol": self.spec.raw,
            "protocol_source": f"{self.spec.name}.toml", "seed": self.seed,
        }
        # the first message of a run also installs the app at every SuperNode: twice the stage timeout
        replies = self._trip({s: [hello] for s in reachable}, "hello", 2 * self.stage_timeout)
        dims: dict[str, int] = {}
        initial: dict[str, np.ndarray] = {}
        for s, rep in sorted(replies.items()):
            if isinstance(rep, str):
                self.refused[s] = rep
                self.log(f"site {s!r} is not taking part: {rep}")
                continue
            res = rep["results"][0]
            expected_fp = self.kit.config.get("site_kits", {}).get(s)
            if s not in roster:
                self.refused[s] = f"{s!r} is not a provisioned site of federation {self.kit.federation!r}"
            elif res.get("federation_id") != self.kit.federation_id:
                other = str(res.get("federation_id"))[:12]
                self.refused[s] = f"site {s!r} answered with a kit of another federation (id {other}...)"
            elif expected_fp and res.get("kit_fingerprint") != expected_fp:
                fp = str(res.get("kit_fingerprint"))[:16]
                self.refused[s] = f"site {s!r} runs a kit with fingerprint {fp}..., provisioned: {expected_fp[:16]}..."
            elif res.get("spec_hash") != self.spec.spec_hash:
                self.refused[s] = (f"site {s!r} read spec hash {res.get('spec_hash')}, "
                                   f"the aggregator sent {self.spec.spec_hash}")
            else:
                dims[s] = int(res["dim"])
                self.data_names[s] = str(res.get("data", s))
                self.site_sizes[s] = int(res.get("n_train", 0))
                self.site_info[s] = {"data": self.data_names[s], "n_train": int(res.get("n_train", 0)),
                                     "n_test": int(res.get("n_test", 0))}
                initial[s] = np.asarray(res["initial_weights"], dtype=np.float32)
                continue
            self.log(f"refusing site {s!r}: {self.refused[s]}")
        if len(set(dims.values())) > 1:
            raise ProtocolError(f"sites disagree on the model size: {dims}")
        self.sites = sorted(dims)
        if len(self.sites) < max(2, self.exp.federation.min_sites):
            raise RoundAborted(
                f"only {len(self.sites)} site(s) joined ({self.sites}); "
                f"the run needs at least {max(2, self.exp.federation.min_sites)}. "
                f"Not taking part: {self.refused or 'none'}"
            )
        self.dim = next(iter(dims.values()))
        # the initial model is public (the experiment's seed): every site reports it; they must agree
        digests = {s: _digest(w) for s, w in initial.items() if s in self.sites}
        if len(set(digests.values())) != 1:
            raise ProtocolError(f"sites built different initial models from seed {self.seed}: {digests}")
        if self.protocol.releases_to_aggregator:
            self.weights = initial[self.sites[0]]
        self.site_sizes = {s: self.site_sizes[s] for s in self.sites}
        self._setup()
        self._checkpoint(-1)  # a restart before round 0 finishes resumes this run (its token) at round 0
        return self.sites

    def _setup(self) -> None:
        """The privacy layer (as the sites build it) and the aggregator's protocol party, for the joined sites."""
        if self.spec.privacy is not None:  # the same layer the sites build (their ledgers stay with them)
            from .privacy import deployed_privacy_layer

            self.privacy = deployed_privacy_layer(self.spec, self.exp, self.seed, self.site_sizes,
                                                  self.kit.state_dir / "runs" / self.run_token)
            bounds = getattr(self.privacy, "public_bounds", lambda: None)()
            if bounds is not None and hasattr(self.protocol, "use_public_bounds"):
                self.protocol.use_public_bounds(*bounds)
        setup_protocol(self.protocol, self.sites, self.dim, ckks_file=self.kit.file("ckks/public.ckks"),
                       ckks_kind="public", identities=self.kit.identity_public_keys(), signing_keys={})

    # --- run folder and restart ----------------------------------------------------------------
    def _checkpoint(self, last_round: int) -> None:
        """Save what the next round depends on (``checkpoint.pt`` in the run folder, atomically)."""
        if self.out is None:
            return
        from ...run.checkpoint import save_checkpoint

        self.out.mkdir(parents=True, exist_ok=True)

        save_checkpoint(self.out, {
            "engine": "flower", "run_token": self.run_token, "round": last_round, "seed": self.seed,
            "spec_hash": self.spec.spec_hash, "sites": list(self.sites), "site_sizes": dict(self.site_sizes),
            "site_info": dict(self.site_info), "data_names": dict(self.data_names), "refused": dict(self.refused),
            "dim": self.dim, "weights": None if self.weights is None else np.array(self.weights, dtype=np.float32),
            "server": copy.deepcopy(self.server.__dict__), "trips_total": self.trips_total,
            "started_utc": self.started_utc, "resumed": list(self.resumed),
        })

    @classmethod
    def resume(cls, kit: Kit, exp: Any, spec: ProtocolSpec, seed: int, transport: Transport, out: Path,
               **kwargs: Any) -> "DeployedRun":
        """The run whose folder ``out`` holds a checkpoint, continued after its last finished round.

        The run keeps its token, so every site finds its state of this run: a round the sites had begun
        is replayed with the update each site already sent (and paid for), never charged again.
        """
        from ...run.checkpoint import load_checkpoint
        from ...run.records import read_jsonl, read_rounds, utc_now

        ckpt = load_checkpoint(Path(out))
        if ckpt is None or ckpt.get("engine") != "flower":
            raise SecureFLError(f"{out}: no checkpoint of a deployed run here; start it without --resume")
        if ckpt["spec_hash"] != spec.spec_hash or int(ckpt["seed"]) != seed:
            raise SecureFLError(f"{out}: the checkpoint is of spec hash {ckpt['spec_hash']} and seed {ckpt['seed']}, "
                                f"not {spec.spec_hash} and seed {seed}; resume with the run's own protocol and seed")
        run = cls(kit, exp, spec, seed, transport, out=Path(out), **kwargs)
        run.run_token, run.sites, run.dim = str(ckpt["run_token"]), list(ckpt["sites"]), int(ckpt["dim"])
        run.site_sizes, run.site_info = dict(ckpt["site_sizes"]), dict(ckpt.get("site_info", {}))
        run.data_names, run.refused = dict(ckpt["data_names"]), dict(ckpt["refused"])
        run.weights = None if ckpt["weights"] is None else np.asarray(ckpt["weights"], dtype=np.float32)
        run.server.__dict__.update(copy.deepcopy(ckpt["server"]))
        run.trips_total = int(ckpt["trips_total"])
        run.first_round = int(ckpt["round"]) + 1
        run.started_utc = str(ckpt.get("started_utc", ""))
        run.resumed = [*ckpt.get("resumed", []), {"at_utc": utc_now(), "from_round": run.first_round}]
        last = int(ckpt["round"])
        run.records = [r for r in read_rounds(Path(out)) if r.get("round", last + 1) <= last]
        views = [v for v in read_jsonl(Path(out) / "views.jsonl") if v.get("round", last + 1) <= last]
        run.all_views = [View(v["round"], v["stage"], v["sender"], v["receiver"], v["kind"], v["nbytes"])
                         for v in views]
        from ...run.records import RunFolder

        folder = RunFolder(Path(out))
        folder.rewrite_jsonl("rounds.jsonl", run.records)  # drop the lines of rounds after the checkpoint
        folder.rewrite_jsonl("views.jsonl", [v.to_json() for v in run.all_views])
        run._setup()
        reachable = set(transport.sites())
        for s in run.sites:
            if s not in reachable:
                run.unreachable[s] = "not reachable when the run resumed"
        run.log(f"resuming run {run.run_token[:8]} after round {last} with sites {run.sites}")
        return run

    # --- carrying ----------------------------------------------------------------------------
    def _carry(self, rd: _Round, m: Message, site: str | None) -> None:
        """Record a message the aggregator carries (a view) and route it."""
        if self.tap is not None:
            self.tap(m)
        v = View(m.round, m.stage, m.sender, m.receiver, m.kind.value, m.nbytes)
        rd.views.append(v)
        if m.sender in rd.bytes_up:
            rd.bytes_up[m.sender] += m.nbytes
        if m.receiver in rd.bytes_down:
            rd.bytes_down[m.receiver] += m.nbytes

    def _drop(self, rd: _Round, site: str, reason: str) -> None:
        rd.alive.discard(site)
        rd.dropped.setdefault(site, reason)
        if "no reply" in reason or "Node Unavailable" in reason:  # not asked again in this run
            self.unreachable[site] = reason
        self.log(f"round {rd.r}: site {site!r} dropped: {reason}")

    def _take_step(self, rd: _Round, site: str, res: dict[str, Any]) -> None:
        """Check and carry one step's outbox of ``site``, then hand it to the aggregator at once (streaming,
        :meth:`~secure_fl.protocol.base.AggregatorParty.receive`). A second result for one stage is ignored: the
        routing contract delivers one step's outbox per site and stage, and the first may already be in a sum."""
        step = (site, str(res.get("stage")))
        if step in rd.stepped:
            self.log(f"round {rd.r}: ignored a second result of site {site!r} for stage {step[1]!r}")
            return
        rd.stepped.add(step)
        sent = [message_from_dict(d) for d in res.get("out", [])]
        for m in sent:
            if m.sender != site or m.receiver != AGGREGATOR or m.round != rd.r:
                self._drop(rd, site, f"sent a message labelled {m.sender!r} -> {m.receiver!r}, round {m.round}")
                return
        for m in sent:
            self._carry(rd, m, site)
        if sent and rd.agg is not None and not rd.aborted:
            t0 = time.perf_counter()
            try:
                rd.inbox_agg.extend(rd.agg.receive(site, sent))
            except RoundAborted as exc:  # e.g. on_bad_input = "abort": the other replies of this trip are still read
                rd.aborted = str(exc)
            rd.folding += time.perf_counter() - t0
        else:
            rd.inbox_agg.extend(sent)
        if "released" in res:
            rd.contributors = [str(c) for c in res["released"]["contributors"]]
            rd.model_digests[site] = str(res["released"]["model_sha256"])

    def _aggregator_stage(self, rd: _Round, stage: str) -> None:
        t0 = time.perf_counter() - rd.folding  # the messages it took on arrival count in this stage
        rd.folding = 0.0
        out = rd.agg.step(stage, rd.inbox_agg)
        rd.inbox_agg = []
        for m in out:
            self._carry(rd, m, None)
            rd.inbox_site[m.receiver].append(m)
        rd.stage_seconds[stage] = rd.stage_seconds.get(stage, 0.0) + time.perf_counter() - t0

    # --- the run ---------------------------------------------------------------------------------
    def run(self, progress: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
        if not self.sites:
            self.discover()
        fuse = not self.protocol.releases_to_aggregator
        stages = list(self.protocol.stages)
        site_stages = [s.name for s in stages if s.actor == "sites"]
        prev: _Round | None = None
        carry: dict[str, list[dict[str, Any]]] = {}
        evals: dict[int, dict[str, dict[str, float]]] = defaultdict(dict)
        for r in range(self.first_round, self.exp.rounds):
            if prev is not None:
                prev.t_end = time.perf_counter()  # a round's seconds run from its start to the next round's
            live = [s for s in self.sites if s not in self.unreachable]
            rd = _Round(r, None, live, time.perf_counter(), alive=set(live))
            rd.bytes_up = {s: 0 for s in live}
            rd.bytes_down = {s: 0 for s in live}
            try:
                rd.agg = self.protocol.aggregator(r, live, self.dim)
            except SecureFLError as exc:
                rd.aborted = f"{type(exc).__name__}: {exc}"
            for stage in stages if rd.agg is not None else []:
                if rd.aborted:
                    break
                try:
                    if stage.actor == "aggregator":
                        self._aggregator_stage(rd, stage.name)
                        continue
                    first, last = stage.name == site_stages[0], stage.name == site_stages[-1]
                    # called within this iteration only: the loop variables it reads are this stage's
                    step_op = lambda s: {"op": "step", "round": r, "stage": stage.name, "last": last,  # noqa: E731,B023
                                         "inbox": [message_to_dict(m) for m in rd.inbox_site.pop(s, [])]}  # noqa: B023
                    if last and fuse:
                        carry = {s: [step_op(s)] for s in sorted(rd.alive)}
                        break
                    ops: dict[str, list[dict[str, Any]]] = {}
                    for s in sorted(rd.alive):
                        ops[s] = list(carry.get(s, [])) if first else []
                        if first:
                            ops[s].append({"op": "begin", "round": r, "roster": self.sites, "dim": self.dim,
                                           "sizes": self.site_sizes, "weights": None if fuse else _f32(self.weights)})
                        ops[s].append(step_op(s))
                    if first and prev is not None:
                        for s in set(carry) - set(ops):  # a site that left still owes nothing more
                            prev.dropped.setdefault(s, "not reachable for the fused last stage")
                    label = ("begin+" if first else "") + stage.name
                    t0 = time.perf_counter()
                    replies = self._trip(ops, label)
                    rd.trips += 1
                    rd.stage_seconds[f"trip:{label}"] = time.perf_counter() - t0
                    self.log(f"round {r}: trip {label} done in {time.perf_counter() - t0:.1f} s ({len(ops)} sites)")
                    site_secs = [float(rep.get("seconds", 0.0)) for rep in replies.values() if isinstance(rep, dict)]
                    rd.stage_seconds[f"site:{label}"] = max(site_secs, default=0.0)
                    _note_site_peak(rd, label, replies)
                    for s, rep in replies.items():
                        if isinstance(rep, str):
                            self._drop(rd, s, rep)
                            if prev is not None and first and s in carry:
                                prev.dropped.setdefault(s, rep)
                            continue
                        for res in rep["results"]:
                            if res["op"] == "step" and res["round"] == r:
                                self._take_step(rd, s, res)
                            elif res["op"] == "step" and prev is not None and res["round"] == prev.r:
                                self._take_step(prev, s, res)
                            elif res["op"] == "begin":
                                if "eval" in res:
                                    evals[r - 1][s] = res["eval"]
                                if "refused" in res:  # the site refused this round before sending anything
                                    self._drop(rd, s, f"refused round {r}: {res['refused']}")
                                    continue
                                if res.get("train"):
                                    rd.train[s] = res["train"]
                                if res.get("spent"):
                                    rd.spent[s] = res["spent"]
                    if first:
                        carry = {}
                        if prev is not None:
                            self._finish(prev, evals.pop(prev.r, {}), progress)
                            prev = None
                except RoundAborted as exc:
                    rd.aborted = str(exc)
                except SecureFLError as exc:
                    rd.aborted = f"{type(exc).__name__}: {exc}"
            if prev is not None:  # the round before never reached a first trip of this round
                self._finish(prev, evals.pop(prev.r, {}), progress)
                prev = None
            if rd.agg is not None and not rd.aborted and not fuse:
                for s, reason in rd.agg.rejected.items():
                    rd.dropped[s] = reason  # the aggregator's reason, not the site's later symptom
                result = rd.agg.result()
                if result is None:
                    rd.aborted = "the protocol released no result"
                else:
                    self._apply(rd, result)
            if rd.aborted:
                carry = {}
            prev = rd
        # the final trip: the fused last stage of the last round (if any) and the final evaluation
        assert prev is not None
        live = [s for s in self.sites if s not in self.unreachable]
        send_model = fuse and not prev.aborted
        designated = min((s for s in live if s in (prev.contributors or live)), default=None)
        ops = {s: [*carry.get(s, []), {"op": "final", "send_model": send_model and s == designated,
                                        "card": s == designated, "cleanup": True}] for s in live}
        if not fuse:
            for s in ops:
                ops[s].insert(0, {"op": "evaluate", "weights": _f32(self.weights)})
        t0 = time.perf_counter()
        replies = self._trip(ops, "final")
        prev.trips += 1
        prev.stage_seconds["trip:final"] = time.perf_counter() - t0
        _note_site_peak(prev, "final", replies)
        final_eval: dict[str, dict[str, float]] = {}
        digests: dict[str, str] = {}
        for s, rep in replies.items():
            if isinstance(rep, str):
                prev.dropped.setdefault(s, rep)
                continue
            for res in rep["results"]:
                if res["op"] == "step":
                    self._take_step(prev, s, res)
                elif res["op"] == "final":
                    final_eval[s] = res["eval"]
                    digests[s] = res["model_sha256"]
                    if s == designated and isinstance(res.get("card"), dict):
                        self.model_card = res["card"]
                    if res.get("weights") is not None and s == designated:
                        w = np.asarray(res["weights"], dtype=np.float32)
                        if fuse and w.size == self.dim and _digest(w) == res["model_sha256"]:
                            self.weights = w
                            self._carry(prev, Message(prev.r, "final_model", s, AGGREGATOR, w.astype("<f4").tobytes(),
                                                      ViewKind.AGGREGATE), s)
        if len(set(digests.values())) > 1:
            self.log(f"warning: sites ended with different models: {digests}")
        self.final_digest = next(iter(set(digests.values()))) if len(set(digests.values())) == 1 else None
        if fuse and prev.contributors is not None:
            prev.applied = True
        self._finish(prev, final_eval, progress)
        return self.records

    def _apply(self, rd: _Round, result: Any) -> None:
        from ...run.units import server_update

        if len(result.contributors) < self.exp.federation.min_sites:
            n, k = len(result.contributors), self.exp.federation.min_sites
            rd.aborted = f"only {n} site(s) contributed; min_sites is {k}"
            return
        if self.weights is None:
            raise ProtocolError("internal: no initial weights (the sites report them at hello)")
        try:
            self.weights = server_update(self.privacy, self.server, self.weights, result, rd.r, rd.sites)
        except SecureFLError as exc:
            rd.aborted = f"{type(exc).__name__}: {exc}"
            return
        rd.contributors = list(result.contributors)
        rd.applied = True

    def _finish(self, rd: _Round, evals: dict[str, dict[str, float]],
                progress: Callable[[dict[str, Any]], None] | None) -> None:
        if rd.contributors is not None and rd.agg is not None and not self.protocol.releases_to_aggregator:
            rd.applied = rd.applied or bool(rd.contributors)
            for s, reason in rd.agg.rejected.items():
                rd.dropped[s] = reason  # the aggregator's reason, not the site's later symptom
        if not self.protocol.releases_to_aggregator and rd.contributors is None and not rd.aborted:
            rd.aborted = "no site reported the released sum"
        participants = list(rd.contributors or [])
        broadcast = 4 * self.dim if self.protocol.releases_to_aggregator else 0
        record = {
            "round": rd.r, "applied": rd.applied and not rd.aborted, "aborted": rd.aborted,
            "participants": participants,
            "dropped": dict(rd.dropped), "metrics": combine_metrics(evals, self.data_names), "train": rd.train,
            "bytes_up_per_site": float(np.mean([rd.bytes_up.get(s, 0) for s in participants] or [0])),
            "bytes_down_per_site": float(np.mean([rd.bytes_down.get(s, 0) + broadcast for s in participants] or [0])),
            "seconds": (rd.t_end or time.perf_counter()) - rd.t0, "stage_seconds": rd.stage_seconds, "trips": rd.trips,
            "engine": "flower", "privacy_spent": dict(rd.spent),
            # peak RSS in bytes: this aggregator process, and per trip the largest site ClientApp process
            "peak_rss_bytes": {"aggregator": peak_rss_bytes(), **rd.site_peak_rss},
        }
        record["seconds_sites_parallel"] = record["seconds"]  # a deployment's sites work in parallel
        if self.spec.threat_model.aggregator_sees == "plain":  # as the local engine: otherwise they stay at the site
            record["train"] = rd.train
        else:
            del record["train"]
        self.records.append(record)
        self.all_views.extend(rd.views)
        if self.out is not None:
            from ...run.records import RunFolder

            folder = RunFolder(self.out)
            folder.append("views.jsonl", *[v.to_json() for v in rd.views])
            folder.append("rounds.jsonl", record)
            if rd.r < self.exp.rounds - 1:
                self._checkpoint(rd.r)
        if progress:
            progress(record)


def _f32(w: np.ndarray | None) -> np.ndarray | None:
    """The model as sites hold it (float32, 4 bytes per parameter on the wire); sites cast to float32 on arrival."""
    return None if w is None else np.asarray(w, dtype=np.float32)


def _digest(w: np.ndarray) -> str:
    return hashlib.sha256(np.asarray(w, dtype="<f4").tobytes()).hexdigest()


def _note_site_peak(rd: _Round, label: str, replies: Mapping[str, dict[str, Any] | str]) -> None:
    """Record the largest ``peak_rss_bytes`` the sites reported for trip ``label`` (a site's own ru_maxrss)."""
    peaks = [int(rep["peak_rss_bytes"]) for rep in replies.values()
             if isinstance(rep, dict) and isinstance(rep.get("peak_rss_bytes"), int)]
    if peaks:
        rd.site_peak_rss[f"site:{label}"] = max(peaks)


#: bins of the score histograms sites send for the pooled AUC (see :func:`score_histograms`)
AUC_BINS = 1000


def score_histograms(scores: np.ndarray, y: np.ndarray, bins: int = AUC_BINS) -> dict[str, Any]:
    """Per label, how many test scores fall in each of ``bins`` equal bins of [0, 1] (sparse: [bin, count]).

    What a site sends, besides its own metrics, so that the aggregator can compute the AUC over every
    site's test patients (the local engine's ``pooled/auc``) without any patient's score leaving the site
    exactly: only counts per 1/``bins``-wide score interval and label.
    """
    idx = np.clip((np.asarray(scores, dtype=np.float64) * bins).astype(np.int64), 0, bins - 1)
    out: dict[str, Any] = {"bins": bins}
    for name, label in (("pos", 1), ("neg", 0)):
        counts = np.bincount(idx[np.asarray(y) == label], minlength=bins)
        nz = np.flatnonzero(counts)
        out[name] = [[int(i), int(counts[i])] for i in nz]
    return out


def pooled_auc(hists: list[Mapping[str, Any]]) -> float | None:
    """ROC AUC of the pooled test sets from the sites' :func:`score_histograms`.

    Pairs (positive, negative) in different bins are ordered exactly; pairs in one bin count 1/2 (as ties),
    so the value is within half the share of same-bin pairs of the exact pooled AUC.
    """
    if not hists:
        return None
    bins = int(hists[0]["bins"])
    pos, neg = np.zeros(bins), np.zeros(bins)
    for h in hists:
        if int(h["bins"]) != bins:
            raise ProtocolError(f"score histograms with {h['bins']} and {bins} bins cannot be pooled")
        for i, c in h["pos"]:
            pos[int(i)] += c
        for i, c in h["neg"]:
            neg[int(i)] += c
    p, n = pos.sum(), neg.sum()
    if not p or not n:
        return None
    below = np.concatenate([[0.0], np.cumsum(neg)[:-1]])
    return float(np.sum(pos * (below + 0.5 * neg)) / (p * n))


def combine_metrics(evals: Mapping[str, Mapping[str, Any]], data_names: Mapping[str, str]) -> dict[str, float]:
    """Per-site test metrics as ``DATA/metric``; ``pooled/accuracy`` (exact, weighted by test size),
    ``pooled/auc`` (from the sites' score histograms, see :func:`pooled_auc`) and ``site-mean/metric``,
    the keys of the local engine's ``Task.evaluate``."""
    out: dict[str, float] = {}
    n_tot, acc_tot = 0.0, 0.0
    for s, m in sorted(evals.items()):
        name = data_names.get(s, s)
        for k, v in m.items():
            if k not in ("n", "score_hist"):
                out[f"{name}/{k}"] = float(v)
        n = float(m.get("n", 0.0))
        if "accuracy" in m and n:
            n_tot += n
            acc_tot += n * float(m["accuracy"])
    if n_tot:
        out["pooled/accuracy"] = acc_tot / n_tot
    auc = pooled_auc([m["score_hist"] for m in evals.values() if isinstance(m.get("score_hist"), dict)])
    if auc is not None:
        out["pooled/auc"] = auc
    for metric in ("accuracy", "auc", "top5"):
        vals = [float(m[metric]) for m in evals.values() if metric in m and not np.isnan(m[metric])]
        if vals:
            out[f"site-mean/{metric}"] = float(np.mean(vals))
    return out


def _check_card(card: Mapping[str, Any], exp: Any) -> str | None:
    """Why the model card a site sent cannot be used, or ``None``. Its architecture class is imported when
    the model is rebuilt (here and by ``secure-fl predict``): only secure-fl's own models or the class
    the experiment itself names are accepted."""
    from ...tasks.export import FORMAT

    if card.get("format") != FORMAT:
        return f"format {card.get('format')!r}, expected {FORMAT!r}"
    arch = card.get("architecture")
    if not isinstance(arch, dict) or not isinstance(arch.get("kwargs"), dict):
        return "no architecture that can be rebuilt"
    cls = str(arch.get("class", ""))
    named = str(getattr(exp, "task_params", {}).get("model", ""))
    if not (cls.startswith("secure_fl.") or cls == named):
        return f"architecture {cls!r} is neither a secure-fl model nor the experiment's [task] model"
    return None


def write_run_folder(run: DeployedRun, out: Path, variant: str, status: str = "finished") -> dict[str, Any]:
    """Finish the run folder in the local engine's format (``run/federation.py``): ``model.pt`` (a state_dict)
    and ``model.json`` (:mod:`secure_fl.tasks.export`), ``summary.json`` (a ``RunSummary`` plus the Flower
    engine's trips and sites), ``resolved.json``; ``rounds.jsonl`` and ``views.jsonl`` are appended as rounds
    finish (by :class:`DeployedRun` with ``out``) or written here for a run without a folder."""
    import os
    import socket

    import torch

    from ...run.federation import RunSummary
    from ...run.records import RunFolder, site_stats, utc_now
    from ...tasks.plugins import load_callable
    from ...training.flat import load_flat

    folder = RunFolder(out)
    if run.out is None or Path(run.out) != Path(out):
        folder.rewrite_jsonl("rounds.jsonl", run.records)
        folder.rewrite_jsonl("views.jsonl", [v.to_json() for v in run.all_views])
    (out / "checkpoint.pt").unlink(missing_ok=True)  # the run is over: nothing to resume
    card = run.model_card
    why = _check_card(card, run.exp) if card is not None else "the designated site sent no model card"
    if run.weights is not None and why is None:
        assert card is not None
        arch = card["architecture"]
        model = load_callable(arch["class"], "model.json architecture")(**arch["kwargs"])
        load_flat(model, np.asarray(run.weights, dtype=np.float32))
        torch.save(model.state_dict(), out / "model.pt")
        card = {**card, "sites": [run.data_names.get(s, s) for s in run.sites], "engine": "flower"}
        (out / "model.json").write_text(json.dumps(card, indent=2) + "\n")
    elif run.weights is not None:
        run.log(f"warning: model.json not written ({why}); model.pt holds the flat weights only")
        torch.save({"weights": torch.from_numpy(np.asarray(run.weights, dtype=np.float32))}, out / "model.pt")
    recs = run.records
    stages = {k for r in recs for k in r["stage_seconds"]}
    summary = RunSummary(
        variant, run.seed, status, len(recs), metrics=recs[-1]["metrics"] if recs else {},
        bytes_up_per_site_round=float(np.mean([r["bytes_up_per_site"] for r in recs])) if recs else 0.0,
        bytes_down_per_site_round=float(np.mean([r["bytes_down_per_site"] for r in recs])) if recs else 0.0,
        seconds_per_round=float(np.mean([r["seconds"] for r in recs])) if recs else 0.0,
        stage_seconds={k: sum(r["stage_seconds"].get(k, 0.0) for r in recs) / len(recs) for k in stages},
        epsilon=recs[-1].get("privacy_spent", {}) if recs else {},
        aborted_rounds=sum(not r["applied"] for r in recs), path=str(out), rounds_planned=run.exp.rounds,
        sites=site_stats(recs, run.sites), pid=os.getpid(), host=socket.gethostname(),
        started_utc=run.started_utc, updated_utc=utc_now(), resumed=run.resumed,
    ).to_json()
    summary.update({
        "engine": "flower", "trips_per_round": [r["trips"] for r in recs], "trips_total": run.trips_total,
        "site_names": run.sites, "refused": run.refused, "final_model_sha256": run.final_digest,
        "data_names": run.data_names,
    })
    folder.write_json("summary.json", summary)
    sizes = ", ".join(f"{s}: {i['n_train']}/{i['n_test']}" for s, i in sorted(run.site_info.items()))
    folder.write_json("resolved.json", {
        "experiment": run.exp.raw, "variant": variant, "protocol": run.spec.raw, "spec_hash": run.spec.spec_hash,
        "overrides": {}, "seed": run.seed, "engine": "flower", "federation": run.kit.federation,
        "task": f"{run.exp.task_name} (deployed; train/test per site: {sizes})",
    })
    return summary
