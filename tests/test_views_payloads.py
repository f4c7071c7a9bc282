"""Issue 8 item 7: the views invariant looks at the payload bytes the aggregator carries, not at labels.

For every protocol of the catalogue (DP protocols included) a federation on a tiny synthetic task
runs real rounds through the engine's ``tap``; :func:`payload_audit.audit` checks every message
against what each site actually handed to the secure sum. A negative control (a site that sends
its quantised, unmasked vector labelled MASKED) passes the old label-based check and fails this one.
"""

from __future__ import annotations

import copy
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from payload_audit import Promise, SiteInput, audit, label_check, quantizer_of

from secure_fl.crypto.quantize import to_wire
from secure_fl.engine.local import drive_round
from secure_fl.privacy.noise import NoiseSource
from secure_fl.protocol.base import Message, SecureSum, SiteParty, ViewKind
from secure_fl.protocol.spec import list_protocols, load_protocol
from secure_fl.run import federation
from secure_fl.run.experiment import parse_experiment
from secure_fl.tasks.registry import build_task
from secure_fl.training.dp_sgd import DpSgdHook

# 13 features x 128 hidden: 2,050 coordinates, enough for the correlation check (null std 0.022);
# three sites: the fewest that dp-distributed-ckks (min_sites = 3) releases
TASK = {"n_sites": 3, "n_per_site": 48, "model": "mlp", "hidden": 128}


class _ZeroNoise(NoiseSource):
    """Draws exactly what the seeded source draws (so Poisson batches match) and adds none of it."""

    def normal(self, std: float, shape: int | tuple[int, ...]) -> np.ndarray:
        return np.zeros_like(super().normal(std, shape))


def _experiment(name: str, rounds: int) -> Any:
    data: dict[str, Any] = {
        "name": "views", "protocols": [name], "rounds": rounds, "seeds": [0],
        "task": {"name": "synthetic-tabular", **TASK},
        "training": {"local_epochs": 1, "batch_size": 16, "lr": 0.1},
    }
    if load_protocol(name).privacy is not None:
        # seeded DP noise, so that the same round can be replayed without it (the clean input)
        data["sweep"] = {"privacy.secure_noise": [False]}
    return parse_experiment(data, "views.toml")


def _run_and_tap(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rounds: int = 2):
    """Run ``rounds`` rounds of protocol ``name``; return per round (messages, inputs), and the federation."""
    exp = _experiment(name, rounds)
    task = build_task(exp.task_name, exp.task_params)
    site_of = {id(s.y_train): s.name for s in task.sites}
    taps: list[tuple[list[Message], dict[str, tuple[np.ndarray, float]]]] = []
    clean: dict[str, tuple[np.ndarray, float]] = {}  # site -> (clean delta, noise std of the delta)
    real_drive, real_train = federation.drive_round, federation.train_local

    def drive(protocol, r, inputs, dim, drop_before=None, tap=None):
        messages: list[Message] = []
        taps.append((messages, {s: (np.array(v, dtype=np.float64), float(w)) for s, (v, w) in inputs.items()}))
        return real_drive(protocol, r, inputs, dim, drop_before, tap=messages.append)

    def train(model, x, y, cfg, loss_fn, seed, hook=None):
        if isinstance(hook, DpSgdHook):  # replay the same Poisson batches without noise: the clean update
            twin = DpSgdHook(noise_multiplier=hook.noise_multiplier, max_grad_norm=hook.max_grad_norm,
                             sample_rate=hook.sample_rate, source=_ZeroNoise(copy.deepcopy(hook.source.rng)))
            quiet = real_train(copy.deepcopy(model), x, y, cfg, loss_fn, seed, twin)
            res = real_train(model, x, y, cfg, loss_fn, seed, hook)
            batch = max(1, round(hook.sample_rate * len(y)))
            # Opacus adds N(0, (σC)²) to the summed clipped gradients and divides by the expected batch:
            # plain SGD moves the weights by lr σ C / B of noise per step, independently over the steps
            std = cfg.lr * hook.noise_multiplier * hook.max_grad_norm * math.sqrt(hook.round_steps) / batch
            assert cfg.momentum == 0 and cfg.optimizer == "sgd"
            clean[site_of[id(y)]] = (quiet.delta.astype(np.float64), std)
            return res
        return real_train(model, x, y, cfg, loss_fn, seed, hook)

    monkeypatch.setattr(federation, "drive_round", drive)
    monkeypatch.setattr(federation, "train_local", train)
    fed = federation.Federation(exp, task, exp.variants[0], 0, tmp_path)
    rounds_out = []
    for r in range(rounds):
        clean.clear()
        record = fed.round(r)
        messages, inputs = taps[-1]
        site_inputs = {}
        for s, (values, weight) in inputs.items():
            if s in clean:
                delta, std = clean[s]
                site_inputs[s] = SiteInput(values, weight, clean=delta * weight, noise_std=std * weight)
            else:
                site_inputs[s] = SiteInput(values, weight)
        rounds_out.append((messages, site_inputs, record))
    return fed, rounds_out


def _promise(fed: Any, spec: Any) -> Promise:
    proto: SecureSum = fed.protocol
    ids = [s.name for s in fed.task.sites]
    context = getattr(proto.aggregator(0, ids, fed.dim), "context", None)
    return Promise(spec.threat_model.aggregator_sees, proto.min_contributors, quantizer_of(proto, len(ids)), context)


@pytest.mark.parametrize("name", list_protocols())
def test_what_the_aggregator_carries_keeps_the_spec_promise(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """docs/architecture.md, "Rules" (views are explicit), checked on the bytes for every protocol in protocols/."""
    spec = load_protocol(name)
    # two rounds (a second round reuses keys and state), one where a DP ledger makes each round cost ~1 s of accounting
    fed, rounds = _run_and_tap(name, tmp_path, monkeypatch, rounds=1 if spec.privacy is not None else 2)
    promise = _promise(fed, spec)
    for messages, inputs, record in rounds:
        assert record["applied"], f"{name}: round {record['round']} was not applied: {record['aborted']}"
        assert len(inputs) == len(fed.task.sites) and fed.dim > 2000
        assert any(m.receiver == "aggregator" for m in messages), "the tap saw no site message"
        if spec.threat_model.aggregator_sees == "noised":
            assert all(s.clean is not None and s.noise_std > 0 for s in inputs.values())
        assert audit(messages, inputs, promise) == []


def _leaky(secure_sum: SecureSum) -> SecureSum:
    """A broken copy of a masking protocol: each site's MASKED message carries its quantised, unmasked vector."""
    cls = type(secure_sum)

    class LeakySite(SiteParty):
        def __init__(self, inner: SiteParty, values: np.ndarray, weight: float, proto: SecureSum) -> None:
            self.inner, self.site_id, self.proto = inner, inner.site_id, proto
            self.values, self.weight = values, weight

        def step(self, stage: str, inbox: Any) -> list[Message]:
            out = self.inner.step(stage, inbox)
            q = self.proto.quantizer  # type: ignore[attr-defined]
            plain = to_wire(q.encode(self.values, self.weight, np.random.default_rng(1)), q.modulus_bits)
            return [Message(m.round, m.stage, m.sender, m.receiver, plain, m.kind) if m.kind is ViewKind.MASKED else m
                    for m in out]

    class Leaky(cls):  # type: ignore[misc, valid-type]
        def site(self, site_id: str, round: int, values: np.ndarray, weight: float) -> SiteParty:
            return LeakySite(super().site(site_id, round, values, weight), values, weight, self)

    leaky = copy.copy(secure_sum)
    leaky.__class__ = Leaky
    return leaky


@pytest.mark.parametrize("name", ["secagg-fedavg", "secagg-plus-fedavg"])
def test_negative_control_a_site_labelling_its_quantised_vector_masked_is_caught(name: str) -> None:
    spec = load_protocol(name)
    rng = np.random.default_rng(7)
    ids, dim = [f"s{i}" for i in range(4)], 2000
    inputs = {}
    for s in ids:
        w = float(rng.integers(1, 50))
        inputs[s] = (rng.uniform(-0.9, 0.9, dim) * w, w)
    verdicts = {}
    for label, proto in (("honest", spec.build_secure_sum()), ("leaky", None)):
        if proto is None:
            proto = _leaky(spec.build_secure_sum())
        proto.setup(ids, dim)
        messages: list[Message] = []
        drive_round(proto, 0, inputs, dim, tap=messages.append)
        site_inputs = {s: SiteInput(v, w) for s, (v, w) in inputs.items()}
        promise = Promise(spec.threat_model.aggregator_sees, proto.min_contributors, quantizer_of(proto, len(ids)))
        verdicts[label] = (label_check(messages, promise.aggregator_sees), audit(messages, site_inputs, promise))
    assert verdicts["honest"] == ([], [])
    labels, payloads = verdicts["leaky"]
    assert labels == [], "the old label check should be fooled: every label is still MASKED"
    assert any("quantised encoding" in p for p in payloads), payloads
    assert any("correlated with" in p for p in payloads), payloads
    caught = {m.group(1) for p in payloads if (m := re.search(r"quantised encoding .* of (\w+)'s input", p))}
    assert caught == set(ids), payloads


# --- the auditor itself fails where it must ------------------------------------------------------


def _site_inputs(n: int = 3, dim: int = 2000, seed: int = 0) -> dict[str, SiteInput]:
    rng = np.random.default_rng(seed)
    return {f"s{i}": SiteInput(rng.normal(size=dim) * (i + 2), float(i + 2)) for i in range(n)}


def _msg(payload: bytes, kind: ViewKind, sender: str = "s0", receiver: str = "aggregator") -> Message:
    return Message(0, "submit", sender, receiver, payload, kind)


def test_audit_finds_float_encodings_anywhere_in_a_payload() -> None:
    inputs = _site_inputs()
    x = inputs["s1"].values
    hidden = b"\x00" * 37 + (x / inputs["s1"].weight).astype("<f4").tobytes() + b"tail"
    problems = audit([_msg(hidden, ViewKind.MASKED)], inputs, Promise("masked"))
    assert any("float32 encoding" in p and "s1's input" in p for p in problems), problems
    shuffled = np.random.default_rng(1).permutation(x).astype("<f8").tobytes()
    assert audit([_msg(shuffled, ViewKind.MASKED)], inputs, Promise("masked")) == []


def test_audit_finds_a_correlated_vector_without_any_exact_encoding() -> None:
    inputs = _site_inputs()
    rng = np.random.default_rng(2)
    leaky = (inputs["s2"].values + rng.normal(size=2000) * 20).astype("<f4").tobytes()  # r ~ 0.2
    problems = audit([_msg(b"hdr" + leaky, ViewKind.MASKED)], inputs, Promise("masked"))
    assert problems and all("correlated with s2's input" in p for p in problems), problems


def test_audit_counts_the_contributors_of_an_aggregate_from_its_payload() -> None:
    inputs = _site_inputs()
    one = np.float64(2.0).astype("<f8").tobytes() + inputs["s0"].values.astype("<f8").tobytes()
    all3 = np.float64(9.0).astype("<f8").tobytes() + sum(s.values for s in inputs.values()).astype("<f8").tobytes()
    assert any("sums 1 site input(s), fewer than min_contributors = 2" in p
               for p in audit([_msg(one, ViewKind.AGGREGATE)], inputs, Promise("ciphertext", min_contributors=2)))
    assert audit([_msg(all3, ViewKind.AGGREGATE)], inputs, Promise("ciphertext", min_contributors=3)) == []


def test_audit_checks_the_noise_of_a_noised_view_against_the_clean_input() -> None:
    rng = np.random.default_rng(3)
    clean = rng.normal(size=2000)
    for std, caught in ((0.5, False), (0.01, True)):
        sent = clean + rng.normal(size=2000) * std
        payload = np.float64(1).astype("<f8").tobytes() + sent.astype("<f4").tobytes()
        problems = audit([_msg(payload, ViewKind.NOISED)], {"s0": SiteInput(sent, 1.0, clean, 0.5)}, Promise("noised"))
        assert bool(problems) is caught, (std, problems)


def test_audit_loads_every_ckks_frame_under_the_aggregators_public_context() -> None:
    from secure_fl.crypto.ckks import encrypt_chunks, generate_keys
    from secure_fl.crypto.ckks_frame import FrameKind, pack_frame

    ours, theirs = generate_keys("small"), generate_keys("small")
    x = np.random.default_rng(4).normal(size=100) * 0.1

    def frame(keys: Any) -> bytes:
        return pack_frame(FrameKind.UPDATE, keys.fingerprint, 0, encrypt_chunks(keys.secret(), x))

    promise = Promise("ciphertext", public_context=ours.public())
    assert audit([_msg(frame(ours), ViewKind.CIPHERTEXT)], {}, promise) == []
    foreign = audit([_msg(frame(theirs), ViewKind.CIPHERTEXT)], {}, promise)
    assert any("does not load under the aggregator's public context" in p for p in foreign), foreign
    opaque = audit([_msg(b"\x01" * 64, ViewKind.CIPHERTEXT)], {}, promise)
    assert any("not a CKKS frame" in p for p in opaque), opaque
    with pytest.raises(AssertionError):  # a secret context is no aggregator's context
        secret = Promise("ciphertext", public_context=ours.secret())
        assert audit([_msg(frame(ours), ViewKind.CIPHERTEXT)], {}, secret) == []
