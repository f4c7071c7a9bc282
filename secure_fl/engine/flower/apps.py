"""The Flower App: a ServerApp that drives :class:`~.server.DeployedRun` and a ClientApp that
answers with :func:`~.site.handle_request`. Shipped in the package; the FAB built by
``secure-fl deploy run`` only names these two objects and carries the run's configuration.

Wire: one ``query.secure_fl`` message per site per trip, its ``RecordDict`` holding
``ConfigRecord({"data": bytes})`` in the :mod:`.codec` format. Replies are matched to sites by
``reply_to_message_id`` (a Flower error reply comes from the SuperLink, not from the dead
node). The ServerApp pushes and pulls itself, polling every ``poll`` seconds (default 0.2),
instead of ``grid.send_and_receive``'s fixed 3 s.

Node identity: with SuperNode authentication on, ``NodeInfo.name`` is the name the aggregator
registered the site's provisioned public key under (``secure-fl aggregator start`` does it), so
a node is mapped to a site before anything is sent to it, and a node whose name is not a
provisioned site is refused. With ``--insecure`` (loopback only) names are empty: the
ServerApp asks every node for its site name first and still refuses names outside the roster.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from .codec import decode, encode
from .server import TripReply

__all__ = ["server_app", "client_app", "FlowerTransport"]

MESSAGE_TYPE = "query.secure_fl"


class FlowerTransport:
    """Carries trips over a Flower :class:`Grid` (push, then pull every ``poll`` seconds)."""

    def __init__(self, grid: Grid, roster: Mapping[str, Any], poll: float = 0.2, log: Any = print) -> None:
        self.grid, self.roster, self.poll, self.log = grid, roster, poll, log
        self.node_of: dict[str, int] = {}
        self.refused_nodes: dict[int, str] = {}

    def _push_pull(self, msgs: dict[int, bytes], timeout: float) -> dict[int, TripReply | bytes]:
        out_msgs = [Message(RecordDict({"req": ConfigRecord({"data": b})}), dst_node_id=nid, message_type=MESSAGE_TYPE,
                            ttl=max(timeout, 60.0)) for nid, b in msgs.items()]
        dst = {}
        ids = set()
        for mid, m in zip(self.grid.push_messages(out_msgs), out_msgs):
            if mid:
                ids.add(mid)
                dst[mid] = m.metadata.dst_node_id
        got: dict[int, TripReply | bytes] = {}
        end = time.monotonic() + timeout
        while ids and time.monotonic() < end:
            for r in self.grid.pull_messages(list(ids)):
                mid = r.metadata.reply_to_message_id
                ids.discard(mid)
                nid = dst.get(mid)
                if nid is None:
                    continue
                if r.has_error():
                    got[nid] = TripReply(None, f"Flower error {r.error.code}: {r.error.reason}")
                    continue
                try:
                    got[nid] = bytes(r.content["res"]["data"])  # type: ignore[index]
                except (KeyError, TypeError) as exc:
                    got[nid] = TripReply(None, f"reply without data ({exc})")
            if ids:
                time.sleep(self.poll)
        return got

    def sites(self) -> list[str]:
        nodes = list(self.grid.get_nodes())
        self.node_of = {}
        unnamed = []
        for n in nodes:
            if n.name:
                if n.name in self.roster:
                    self.node_of[n.name] = n.node_id
                else:
                    why = f"node {n.node_id} is registered as {n.name!r}, not a provisioned site"
                    self.refused_nodes[n.node_id] = why
            else:
                unnamed.append(n.node_id)
        if unnamed:  # --insecure: no registered names; ask the nodes (still checked against the roster)
            replies = self._push_pull({nid: encode({"who": True}) for nid in unnamed}, 60.0)
            for nid, rep in replies.items():
                name = decode(rep).get("site") if isinstance(rep, bytes) else None
                if isinstance(name, str) and name in self.roster and name not in self.node_of:
                    self.node_of[name] = nid
                else:
                    self.refused_nodes[nid] = f"node {nid} says it is {name!r}, not a provisioned site (or a duplicate)"
        for _nid, why in self.refused_nodes.items():
            self.log(f"refusing node: {why}")
        return sorted(self.node_of)

    def exchange(self, requests: Mapping[str, bytes], timeout: float) -> dict[str, TripReply | bytes]:
        by_node = {self.node_of[s]: b for s, b in requests.items() if s in self.node_of}
        site_of = {v: k for k, v in self.node_of.items()}
        return {site_of[nid]: rep for nid, rep in self._push_pull(by_node, timeout).items()}


server_app = ServerApp()


@server_app.main()
def _server_main(grid: Grid, context: Context) -> None:
    from ...deploy.kit import load_kit
    from ...protocol.spec import parse_protocol
    from ...run.experiment import parse_experiment
    from .launch import read_app_config
    from .server import DeployedRun, write_run_folder

    cfg = read_app_config(context.run_config)
    kit = load_kit(cfg["kit"], role="aggregator")
    exp = parse_experiment(cfg["experiment"], cfg["experiment_source"])
    spec = parse_protocol(cfg["protocol"], cfg["protocol_source"])
    out = Path(cfg["out"])
    out.mkdir(parents=True, exist_ok=True)
    transport = FlowerTransport(grid, kit.sites, poll=float(cfg.get("poll", 0.2)),
                                log=lambda line: print(line, flush=True))
    opts: dict[str, Any] = {"stage_timeout": float(cfg["stage_timeout"]), "log": lambda line: print(line, flush=True)}
    if cfg.get("resume"):  # a restarted aggregator: the same run (token), from its last finished round
        run = DeployedRun.resume(kit, exp, spec, int(cfg["seed"]), transport, out, **opts)
    else:
        run = DeployedRun(kit, exp, spec, int(cfg["seed"]), transport, out=out, **opts)

    def progress(rec: dict[str, Any]) -> None:
        print(f"round {rec['round']}: applied={rec['applied']} trips={rec['trips']} seconds={rec['seconds']:.1f} "
              f"participants={rec['participants']} dropped={rec['dropped']} aborted={rec['aborted']}", flush=True)

    try:
        if not run.sites:
            sites = run.discover()
            print(f"sites: {sites}; not taking part: {run.refused or 'none'}", flush=True)
        run.run(progress)
        summary = write_run_folder(run, out, str(cfg.get("variant", spec.name)))
        print(f"run folder: {out} (final model sha256 {summary['final_model_sha256']})", flush=True)
    except Exception as exc:
        (out / "error.txt").write_text(f"{type(exc).__name__}: {exc}\n")
        print(f"run failed: {type(exc).__name__}: {exc}", flush=True)
        raise


client_app = ClientApp()


@client_app.query("secure_fl")
def _client_query(msg: Message, context: Context) -> Message:
    from .site import handle_request

    kit = str(context.node_config.get("kit", ""))
    site = str(context.node_config.get("site", "")) or None
    req = decode(bytes(msg.content["req"]["data"]))  # type: ignore[index]
    if req.get("who"):
        reply: dict[str, Any] = {"site": site}
    else:
        reply = handle_request(kit, req, node_site=site)
    return Message(RecordDict({"res": ConfigRecord({"data": encode(reply)})}), reply_to=msg)
