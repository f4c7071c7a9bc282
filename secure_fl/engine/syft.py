"""PySyft datasites: a site's data steward approves the secure-fl site step as a syft code request.

PySyft's model is "the data never leaves; code comes to the data and is approved first". This
carrier meets a hospital's steward there, and changes nothing else: the aggregator side is the
deployed run of the Flower engine (:class:`~secure_fl.engine.flower.server.DeployedRun`, the same
secure-sum state machines as the local engine), over a :class:`SyftTransport` instead of Flower;
the site side is the deployed site runtime (:class:`~secure_fl.engine.flower.site.SiteRuntime`:
the site's provisioning kit, its approvals, keys, ledger and per-run state), run inside a syft job
at the datasite, with the site's data taken from the syft asset.

The flow (``scripts/syft_demo.py`` runs it with three in-memory datasites):

1. **Steward** (:class:`Steward`): uploads the site's data as a syft dataset with one asset,
   private data plus a mock of the same shapes (:func:`site_asset`), and tells this datasite's
   process which provisioning kit is the site's (:func:`register_kit`).
2. **Researcher** (the aggregator, :func:`submit_site_step`): submits the secure-fl site step as a
   syft code request. Its source is fixed by secure-fl (:func:`site_step_source`): it is pinned to
   one protocol spec hash and to the installed secure-fl version, and calls
   :func:`run_site_job` with the asset and one string argument, the *request*: the engine's wire
   format (:mod:`secure_fl.engine.flower.codec`: JSON and raw byte blobs, no pickle, no code).
   The input policy binds ``data`` to the steward's asset; the output policy caps the executions.
3. **Steward** (:meth:`Steward.approve`): checks that the request's code is exactly the pinned
   source for that spec hash and version, records the approval of the spec in the kit (the same
   record as ``secure-fl site approve KIT SPEC`` in a Flower deployment: one notion of what a site
   approves), and only then approves the syft request.
4. **Rounds**: every server round trip of the deployed run is one syft job per site; the job
   returns the site runtime's reply with only the keys the run needs (:data:`REPLY_KEYS`): the
   protocol messages (ciphertext, masked or noised, as the spec says), and public facts (model
   size, the public initial model, training-set sizes, ε spent, metrics of the *global* model on
   the site's test set, the released global model at the end). Never the data, never the site's
   update in the clear.

Guarantee, and what it rests on (the ethics committee's reading):

* **Approval is a review step, not isolation.** syft 0.9 runs approved code in the datasite's own
  Python process, with that process's rights, not in a sandbox; PYSEC-2026-546 reports code
  execution after approval. So the steward must approve only code that takes no code from the
  requester: here the approved function is secure-fl's own fixed source, pinned by spec hash and
  package version, whose only requester input is a data string parsed by a codec that builds
  dicts, lists, strings, numbers and byte strings (no pickle, no import by name); the installed
  secure-fl at the datasite is what runs, and :func:`run_site_job` refuses a request for another
  spec or another version. Trust in the outcome is trust in the installed secure-fl and syft.
* **Two gates.** A syft request that the steward has not approved runs nothing (syft refuses the
  call before any code runs). A syft request approved without :meth:`Steward.approve` still runs
  nothing of a round unless the site's kit approves the spec hash (the site runtime refuses it).
* **What the aggregator sees** is what the protocol spec's ``aggregator_sees`` says, exactly as in
  the local and Flower engines: the same state machines produce the same payloads.
"""

from __future__ import annotations

import base64
import re
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import SecureFLError
from ..protocol.spec import ProtocolSpec
from .flower.codec import decode, encode
from .flower.server import TripReply
from .flower.site import SiteRuntime

__all__ = [
    "SYFT_VERSION",
    "REPLY_KEYS",
    "SyftApprovalError",
    "site_step_name",
    "site_step_source",
    "site_asset",
    "register_kit",
    "run_site_job",
    "submit_site_step",
    "max_executions",
    "Steward",
    "SyftTransport",
    "launch_datasite",
]

#: the PySyft release this carrier is written and tested against (in-memory datasites, no network)
SYFT_VERSION = "0.9.5"

#: per op of the site runtime's reply, the keys that may leave the datasite; anything else is dropped
REPLY_KEYS: dict[str, frozenset[str]] = {
    "hello": frozenset({"op", "site", "federation_id", "kit_fingerprint", "dim", "initial_weights", "data",
                        "n_train", "n_test", "spec_hash"}),
    "begin": frozenset({"op", "round", "eval", "refused", "train", "spent"}),
    "step": frozenset({"op", "round", "stage", "out", "released"}),
    "evaluate": frozenset({"op", "eval"}),
    "final": frozenset({"op", "eval", "model_sha256", "weights", "card"}),
}

_HASH = re.compile(r"^[0-9a-f]{16}$")
_VERSION = re.compile(r"^[0-9A-Za-z.+_-]{1,64}$")
#: the kit of each site whose datasite lives in this process (set by the steward, read by the syft job)
_KITS: dict[str, Path] = {}


class SyftApprovalError(SecureFLError):
    """A syft code request is not the pinned secure-fl site step the steward can approve (or not approved)."""


# --- the pinned function ----------------------------------------------------------------------------------


def site_step_name(spec_hash: str) -> str:
    """The syft function name of the site step for one spec hash (one code request per spec)."""
    return f"secure_fl_site_step_{spec_hash}"


def site_step_source(spec_hash: str, version: str) -> str:
    """The exact source of the site step the steward approves: fixed by secure-fl, pinned to ``spec_hash`` and
    ``version``. Its only requester input is ``request``, a data string (see the module docstring)."""
    if not _HASH.match(spec_hash):
        raise SyftApprovalError(f"spec hash must be 16 lowercase hex digits, found {spec_hash!r}")
    if not _VERSION.match(version):
        raise SyftApprovalError(f"package version must be a plain version string, found {version!r}")
    return (
        f"def {site_step_name(spec_hash)}(data, request):\n"
        f"    from secure_fl.engine.syft import run_site_job\n"
        f"\n"
        f"    return run_site_job(data, request, spec_hash={spec_hash!r}, version={version!r})\n"
    )


def _installed_version() -> str:
    from .. import __version__

    return __version__


def max_executions(spec: ProtocolSpec, rounds: int) -> int:
    """Server round trips a run of ``rounds`` rounds needs at most: hello, one per site stage and round
    (fused trips need fewer), the final evaluation. The request's output policy allows no more."""
    site_stages = sum(1 for s in spec.build_secure_sum().stages if s.actor == "sites")
    return 2 + rounds * site_stages


# --- the site's data as a syft asset ----------------------------------------------------------------------


def _array(x: Any, what: str) -> np.ndarray:
    if hasattr(x, "detach"):
        return np.asarray(x.detach().cpu().numpy())
    if isinstance(x, np.ndarray):
        return x
    raise SecureFLError(f"{what}: a syft asset holds arrays; found {type(x).__name__} "
                        "(images kept on disk cannot be uploaded as one asset)")


def site_asset(site: Any, kit_name: str, mock_seed: int = 0) -> tuple[dict[str, Any], dict[str, Any]]:
    """(private, mock) contents of the site's syft asset: its training and test arrays and the kit's name.

    The mock has the same keys, shapes and dtypes; features are standard normal draws and labels are
    drawn from the labels' range (a generator seeded by ``mock_seed``): nothing of the private data.
    """
    private: dict[str, Any] = {"site": kit_name, "name": str(site.name), "mock": False}
    for key in ("x_train", "y_train", "x_test", "y_test"):
        private[key] = _array(getattr(site, key), f"site {site.name!r} {key}")
    if getattr(site, "persons", None) is not None:
        private["persons"] = _array(site.persons, f"site {site.name!r} persons")
    rng = np.random.default_rng(mock_seed)
    mock: dict[str, Any] = {"site": kit_name, "name": f"{site.name} (mock)", "mock": True}
    for key, value in private.items():
        if not isinstance(value, np.ndarray):
            continue
        if np.issubdtype(value.dtype, np.integer):
            hi = int(value.max()) + 1 if value.size else 1
            mock[key] = rng.integers(0, max(hi, 1), size=value.shape).astype(value.dtype)
        else:
            mock[key] = np.asarray(rng.standard_normal(value.shape), dtype=value.dtype)
    return private, mock


def _site_data(asset: Mapping[str, Any]) -> Any:
    import torch

    from ..tasks.base import SiteData

    def tensor(key: str) -> Any:
        return torch.from_numpy(np.array(asset[key]))

    persons = tensor("persons") if asset.get("persons") is not None else None
    return SiteData(str(asset["name"]), tensor("x_train"), tensor("y_train"), tensor("x_test"), tensor("y_test"),
                    persons)


def register_kit(kit_path: str | Path) -> str:
    """Tell this process (the datasite's) where the site's provisioning kit is; returns the site's name.

    The syft job finds the kit by the site name in the private asset, which the requester cannot choose
    (the input policy binds ``data`` to the steward's asset).
    """
    from ..deploy.kit import load_kit

    kit = load_kit(kit_path, role="site")
    _KITS[kit.name] = kit.path
    return kit.name


# --- the site side: what the approved function runs at the datasite ----------------------------------------


class _DatasiteRuntime(SiteRuntime):
    """The deployed site runtime, with the site's data from the syft asset and the spec pinned by the request."""

    def __init__(self, kit_path: Path, data: Any, spec_hash: str) -> None:
        super().__init__(kit_path)
        self._asset_data = data
        self._pinned = spec_hash

    def _prepare(self, cfg: dict[str, Any]) -> None:
        from ..protocol.spec import parse_protocol

        spec = parse_protocol(cfg["protocol"], cfg.get("protocol_source", "<aggregator>"))
        if spec.spec_hash != self._pinned:
            raise SyftApprovalError(
                f"the approved syft request runs protocol spec hash {self._pinned}; this request asks for "
                f"{spec.name!r} (spec hash {spec.spec_hash}): submit a code request for that spec")
        super()._prepare(cfg)

    @property
    def _task(self) -> Any:
        task = SiteRuntime._task.fget(self)  # type: ignore[attr-defined]
        own = task.sites[self._index]
        if own is not self._asset_data:
            data = self._asset_data
            if data.name != own.name:
                raise SecureFLError(f"site {self.kit.name!r}: its syft asset holds data {data.name!r}, "
                                    f"its kit names data {own.name!r}")
            task.sites[self._index] = data
        return task


def _filter_reply(reply: dict[str, Any]) -> dict[str, Any]:
    if "refused" in reply:
        return {"refused": str(reply["refused"]), "error": str(reply.get("error", ""))}
    results = []
    for res in reply.get("results", []):
        keys = REPLY_KEYS.get(str(res.get("op")), frozenset())
        results.append({k: v for k, v in res.items() if k in keys})
    return {"site": reply["site"], "results": results, "seconds": float(reply.get("seconds", 0.0))}


def run_site_job(data: Mapping[str, Any], request: str, *, spec_hash: str, version: str) -> bytes:
    """The body of the approved syft function, at the datasite: one server round trip of the deployed run.

    ``data`` is the private asset (syft passes it only to approved code); ``request`` the base64 of one
    engine request. Returns the encoded reply holding only :data:`REPLY_KEYS`, or a refusal naming why.
    """
    t0 = time.perf_counter()
    try:
        installed = _installed_version()
        if installed != version:
            raise SyftApprovalError(f"the approved request pins secure-fl {version}; this datasite runs {installed}")
        if not isinstance(data, Mapping) or "site" not in data or data.get("mock") is not False:
            # syft runs approved code on the mock too (for the mock half of its result): that run, and any
            # run on data other than the site's private asset, touches neither the kit nor the site's state
            return encode({"refused": "the secure-fl site step runs only on the site's private asset",
                           "error": "MockData"})
        site = str(data["site"])
        kit_path = _KITS.get(site)
        if kit_path is None:
            raise SyftApprovalError(f"no kit registered for site {site!r} in this datasite's process "
                                    "(the steward calls secure_fl.engine.syft.register_kit)")
        if not isinstance(request, str):
            raise SyftApprovalError(f"the request argument must be a base64 string, found {type(request).__name__}")
        try:
            raw = base64.b64decode(request.encode("ascii"), validate=True)
        except (ValueError, UnicodeEncodeError) as exc:
            raise SyftApprovalError(f"the request argument is not base64 ({exc})") from exc
        runtime = _DatasiteRuntime(kit_path, _site_data(data), spec_hash)
        reply = runtime.handle(decode(raw))
        reply["seconds"] = time.perf_counter() - t0
    except SecureFLError as exc:
        print(f"secure-fl syft site: refused: {exc}", file=sys.stderr, flush=True)
        reply = {"refused": str(exc), "error": type(exc).__name__}
    return encode(_filter_reply(reply))


def launch_datasite(name: str) -> tuple[Any, Any]:
    """An in-memory syft datasite in this process (its store starts empty) and its admin (steward) client."""
    import syft as sy

    handle = sy.orchestra.launch(name=name, reset=True)
    return handle, handle.login(email="info@openmined.org", password="changethis")  # syft's first-start admin


# --- the researcher (aggregator) side ---------------------------------------------------------------------


def submit_site_step(client: Any, asset: Any, spec: ProtocolSpec, rounds: int) -> Any:
    """Submit the pinned site step for ``spec`` to one datasite as a syft code request; returns the request.

    ``client``: the researcher's syft client of the datasite; ``asset``: the steward's secure-fl asset there.
    """
    import syft as sy
    from syft.service.code.user_code import syft_function
    from syft.service.policy.policy import OutputPolicyExecuteCount

    source = site_step_source(spec.spec_hash, _installed_version())
    name = site_step_name(spec.spec_hash)
    namespace: dict[str, Any] = {}
    filename = f"<secure-fl site step {spec.spec_hash}>"
    exec(compile(source, filename, "exec"), namespace)  # our own fixed source (above); syft reads it back
    import linecache

    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)  # syft reads the source
    decorate = syft_function(
        input_policy=sy.MixedInputPolicy(data=asset, request=str, client=client),
        output_policy=OutputPolicyExecuteCount(limit=max_executions(spec, rounds)),
    )
    code = decorate(namespace[name])
    return client.code.request_code_execution(code)


class SyftTransport:
    """A :class:`~secure_fl.engine.flower.server.Transport` whose every site request is one syft job.

    ``clients``: per site name, the researcher's syft client of its datasite; ``assets``: per site, the
    steward's secure-fl asset there; ``spec_hash``: the spec whose approved site step runs. Sites are asked
    one after the other (in-memory datasites share this process); a job that syft refuses (e.g. a request
    not approved) comes back as that site's error and the run drops the site.
    """

    def __init__(self, clients: Mapping[str, Any], assets: Mapping[str, Any], spec_hash: str) -> None:
        missing = sorted(set(clients) ^ set(assets))
        if missing:
            raise SecureFLError(f"SyftTransport: sites {missing} have a client or an asset but not both")
        self.clients, self.assets = dict(clients), dict(assets)
        self.name = site_step_name(spec_hash)
        #: every reply's bytes as they came back from the datasite, per trip: {site: bytes}
        self.replies: list[dict[str, bytes]] = []

    def sites(self) -> list[str]:
        return sorted(self.clients)

    def exchange(self, requests: Mapping[str, bytes], timeout: float) -> dict[str, TripReply | bytes]:
        out: dict[str, TripReply | bytes] = {}
        raw: dict[str, bytes] = {}
        for s, req in requests.items():
            client = self.clients.get(s)
            if client is None:
                continue
            try:
                job = getattr(client.code, self.name)
                got = job(data=self.assets[s], request=base64.b64encode(req).decode("ascii"))
                value = got.get() if hasattr(got, "get") else got
            except Exception as exc:  # syft's refusals (not approved, policy exhausted) drop this site only
                out[s] = TripReply(None, f"syft refused the job at site {s!r}: {type(exc).__name__}: {exc}")
                continue
            if not isinstance(value, (bytes, bytearray)):
                out[s] = TripReply(None, f"site {s!r}: the syft job returned {type(value).__name__}, not bytes")
                continue
            raw[s] = out[s] = bytes(value)
        self.replies.append(raw)
        return out


# --- the steward's side ----------------------------------------------------------------------------------


class Steward:
    """A datasite's data steward: uploads the site's data, reviews and approves the secure-fl site step.

    ``client``: the steward's (admin) syft client of the datasite; ``kit``: the site's provisioning kit.
    """

    def __init__(self, client: Any, kit: str | Path) -> None:
        from ..deploy.kit import load_kit

        self.client = client
        self.kit = load_kit(kit, role="site")
        register_kit(self.kit.path)

    def upload(self, site: Any, mock_seed: int = 0, description: str = "") -> Any:
        """Upload the site's data as a syft dataset with one asset (private + mock); returns the asset."""
        import syft as sy

        private, mock = site_asset(site, self.kit.name, mock_seed)
        name = f"secure-fl {self.kit.name}"
        dataset = sy.Dataset(name=name, description=description or f"secure-fl site data of {self.kit.name!r}",
                             asset_list=[sy.Asset(name="site-data", data=private, mock=mock)])
        self.client.upload_dataset(dataset)
        return self.client.datasets[name].assets["site-data"]

    def review(self, request: Any, spec: ProtocolSpec) -> str:
        """What the steward approves, in words; raises :class:`SyftApprovalError` if the code is not pinned."""
        self._check(self.own(request), spec)
        tm = spec.threat_model
        return (f"secure-fl site step for protocol spec {spec.name!r} (spec hash {spec.spec_hash}), "
                f"secure-fl {_installed_version()}, at site {self.kit.name!r}\n"
                f"  aggregator sees: {tm.aggregator_sees}; adversary: {tm.adversary}\n"
                "  syft runs approved code in this datasite's process (no sandbox): approve only this exact, "
                "pinned source, which takes no code from the requester")

    def own(self, request: Any) -> Any:
        """The steward's own handle on a code request (by its id): approving acts with the steward's rights."""
        for mine in self.client.requests:
            if mine.id == request.id:
                return mine
        raise SyftApprovalError(f"site {self.kit.name!r}: no code request {request.id} at this datasite")

    def _check(self, request: Any, spec: ProtocolSpec) -> None:
        code = request.code
        expected = site_step_source(spec.spec_hash, _installed_version())
        found = str(getattr(code, "raw_code", None) or code.code)
        if found.strip() != expected.strip():
            raise SyftApprovalError(
                f"site {self.kit.name!r}: the request's code is not the pinned secure-fl site step for spec "
                f"{spec.name!r} (hash {spec.spec_hash}) and secure-fl {_installed_version()}; refusing it.\n"
                f"expected:\n{expected}\nfound:\n{found}")
        if code.service_func_name != site_step_name(spec.spec_hash):
            raise SyftApprovalError(f"site {self.kit.name!r}: the request names function "
                                    f"{code.service_func_name!r}, expected {site_step_name(spec.spec_hash)!r}")

    def approve(self, request: Any, spec: ProtocolSpec, source: str = "syft code request") -> str:
        """Check the pinned code, record the spec's approval in the kit, then approve the syft request."""
        mine = self.own(request)
        text = self.review(mine, spec)
        self.kit.approve(spec.spec_hash, spec.name, source)
        mine.approve()
        return text
