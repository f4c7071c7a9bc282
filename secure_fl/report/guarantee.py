"""What a protocol guarantees at a configuration, derived from its spec, its code and the accountants.

Anchor: TF-Privacy's ``compute_dp_sgd_privacy_statement`` (a plain-language DP statement with
its assumptions). This goes further: a protocol here has parties, cryptography, dropouts and a
DP layer, so the statement says, per party (the aggregator, each site, a coalition, anyone who
sees the released models), what it learns; the adversary model (semi-honest or active, the
collusion bound, the minimum number of contributors, the dropout tolerance and, where the
secure sum computes one, its failure probability); (ε, δ) per site from the accountant over
the planned rounds, calibrated exactly as the DP layer calibrates them
(:func:`secure_fl.protocol.dp.build_privacy_layer`), with the neighbouring relation in words
and what is public; the CKKS parameters and their security level
(:mod:`secure_fl.crypto.ckks_params`); and what is not protected.

Every value is read from the objects the run itself builds (the secure sum after ``setup``,
the privacy layer), through tolerant accessors (``getattr`` with a default), so the statement
follows the code: a spec value that changes a guarantee changes the sentence that states it.
Free text of the spec's ``[threat_model]`` is quoted as such, never paraphrased.
"""

from __future__ import annotations

import copy
import dataclasses
import tempfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ProtocolError, SecureFLError, SpecError
from ..protocol.spec import ProtocolSpec, load_protocol, parse_protocol
from .phrases import fmt_probability

__all__ = ["Plan", "Fact", "Guarantee", "derive", "guarantee_for", "apply_overrides"]


@dataclass(frozen=True)
class Plan:
    """The configuration a guarantee is stated for (what the DP layer calibrates over)."""

    sites: int = 4
    rounds: int = 20
    examples_per_site: int = 200
    site_sizes: Mapping[str, int] | None = None  # overrides sites/examples_per_site (e.g. from a run)
    batch_size: int = 16
    local_epochs: int = 1
    local_steps: int | None = None
    fraction: float = 1.0
    min_sites: int = 1  # the run's [federation].min_sites
    #: σ a finished run recorded (every site the same): the statement uses it instead of calibrating again
    noise_multiplier: float | None = None

    def sizes(self) -> dict[str, int]:
        if self.site_sizes:
            return {str(k): int(v) for k, v in self.site_sizes.items()}
        if self.sites < 1:
            raise SpecError(f"--sites: expected an integer >= 1, found {self.sites}")
        if self.examples_per_site < 1:
            raise SpecError(f"--examples: expected an integer >= 1, found {self.examples_per_site}")
        return {f"site{i + 1}": self.examples_per_site for i in range(self.sites)}

    @property
    def n_sites(self) -> int:
        return len(self.sizes())


@dataclass(frozen=True)
class Fact:
    """One sentence of a statement: a phrase key (:mod:`.phrases`) and the values that fill it."""

    key: str
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class Guarantee:
    protocol: str
    summary: str
    source: str
    spec_hash: str
    plan: dict[str, Any]
    secure_sum: dict[str, Any]
    adversary: dict[str, Any]
    parties: dict[str, list[Fact]]
    adversary_facts: list[Fact]
    dp: dict[str, Any] | None
    dp_facts: list[Fact]
    public: list[Fact]
    crypto: dict[str, Any] | None
    crypto_facts: list[Fact]
    not_protected: list[Fact]
    spec_text: dict[str, Any]
    terms: list[str]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def apply_overrides(raw: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of a spec's raw table with dotted keys set (``privacy.target_epsilon = 2``)."""
    out = copy.deepcopy(dict(raw))
    for dotted, value in overrides.items():
        node = out
        parts = dotted.split(".")
        for p in parts[:-1]:
            child = node.setdefault(p, {})
            if not isinstance(child, dict):
                raise SpecError(f"--set {dotted}: {p!r} is not a table of the spec")
            node = child
        if value is None:
            node.pop(parts[-1], None)
        else:
            node[parts[-1]] = value
    return out


def guarantee_for(protocol: str | Path, plan: Plan | None = None, *, epsilon: float | None = None,
                  delta: float | None = None, overrides: Mapping[str, Any] | None = None) -> Guarantee:
    """Load a catalogue protocol (or a TOML path), apply ``--epsilon``/``--delta``/``--set``, derive."""
    spec = load_protocol(protocol)
    extra = dict(overrides or {})
    if spec.privacy_table is not None:
        if epsilon is not None:
            extra["privacy.target_epsilon"] = epsilon
        if delta is not None:
            extra["privacy.delta"] = delta
    elif epsilon is not None or delta is not None:
        raise SpecError(f"--epsilon/--delta: protocol {spec.name!r} has no [privacy] layer")
    if extra:
        raw = apply_overrides(spec.raw, extra)
        privacy = raw.get("privacy")
        if isinstance(privacy, dict):  # the spec gives exactly one of the two: the one set here wins
            for given, other in (("target_epsilon", "noise_multiplier"), ("noise_multiplier", "target_epsilon")):
                if extra.get(f"privacy.{given}") is not None:
                    privacy.pop(other, None)
        spec = parse_protocol(raw, f"{spec.source} with " + ", ".join(f"{k} = {v!r}" for k, v in extra.items()))
    return derive(spec, plan or Plan())


# -- the secure sum ----------------------------------------------------------------------------


def _secure_sum(spec: ProtocolSpec, plan: Plan) -> tuple[Any, dict[str, Any]]:
    ss = spec.build_secure_sum()
    privacy = spec.privacy
    if privacy is not None and hasattr(privacy, "constrain"):
        privacy.constrain(ss)  # the DP layer's minimum, as a run applies it
    kind = spec.secure_sum_kind
    n = plan.n_sites
    info: dict[str, Any] = {
        "kind": kind, "aggregator_sees": spec.threat_model.aggregator_sees,
        "releases_to": "aggregator" if ss.releases_to_aggregator else "sites",
        "min_contributors": int(ss.min_contributors),
    }
    if kind in ("secagg", "secagg-plus"):
        from ..protocol.secagg import SecAggSum

        if not isinstance(ss, SecAggSum):
            raise SpecError(f"{spec.name}: secure sum of kind {kind!r} is a {type(ss).__name__}, not a SecAggSum")
        try:
            ss.setup(list(plan.sizes()), 1)
        except (ProtocolError, ValueError) as exc:
            raise SpecError(f"{spec.name} cannot run with {n} sites: {exc}") from exc
        t = int(ss.threshold_value)
        info.update({
            "threshold": t,
            "holders": int(getattr(ss, "holders_per_site", n)),
            "degree": int(getattr(ss, "effective_degree", getattr(ss, "max_neighbours", n - 1))),
            "colluders": int(getattr(ss, "colluders", t - 1)),
            "min_survivors": int(getattr(ss, "min_survivors", max(info["min_contributors"], t))),
            "active_colluders": getattr(ss, "active_colluders", None),
            "failure_probability": getattr(ss, "failure_probability", None),
            "abort_probability": getattr(ss, "abort_probability", None),
            "bits": getattr(ss, "bits", None), "clip_range": getattr(ss, "clip_range", None),
        })
    elif kind == "ckks":
        from ..protocol.ckks import CkksSum

        if not isinstance(ss, CkksSum):
            raise SpecError(f"{spec.name}: secure sum of kind {kind!r} is a {type(ss).__name__}, not a CkksSum")
        preset = ss.parameters
        info.update({
            "preset": preset.describe(), "total_bits": preset.total_bits,
            "release": getattr(ss, "release", "sites"),
            # distributed DP runs the CKKS sum with public bounds (the privacy layer hands them over in a run)
            "bounds": "public" if getattr(privacy, "mechanism", None) == "distributed-dp-sgd"
            else getattr(ss, "bounds", None),
            "statistical_security": getattr(ss, "statistical_security", None),
        })
    return ss, info


# -- the DP layer ------------------------------------------------------------------------------


def _relation_key(cfg: Any) -> str:
    """The phrase key of the neighbouring relation the ε is for.

    Read from the config where the DP layer states it (``PrivacyConfig.adjacency``, e.g.
    "add/remove one patient"); otherwise from the mechanism: local dp-fedavg noise is
    calibrated for sensitivity 2C (replace one site), central for C (add/remove one site),
    DP-SGD for add/remove one patient (Abadi et al. 2016).
    """
    unit = getattr(cfg, "unit", "patient")
    text = getattr(cfg, "adjacency", None)
    if not isinstance(text, str):
        if cfg.mechanism == "dp-fedavg" and cfg.noise == "local":
            text = "replace one"
        else:
            text = "add/remove one"
    text = text.lower()
    if "replace" in text:
        rel = "replace"
    elif "zero" in text:
        rel = "zero_out"
    else:
        rel = "add_remove"
    unit = "site" if "site" in text else ("patient" if "patient" in text else unit)
    return f"rel_{rel}_{unit}"


def _dp(spec: ProtocolSpec, plan: Plan) -> dict[str, Any] | None:
    cfg = spec.privacy
    if cfg is None:
        return None
    import numpy as np
    from dp_accounting import dp_event

    from ..privacy.accounting import epsilon as eps_of
    from ..protocol.dp import build_privacy_layer
    from ..training.config import RunPlan, TrainingConfig

    training = TrainingConfig(local_epochs=plan.local_epochs, local_steps=plan.local_steps,
                              batch_size=plan.batch_size)
    sizes = plan.sizes()
    layer_cfg = cfg
    if plan.noise_multiplier is not None and cfg.noise_multiplier is None:
        layer_cfg = dataclasses.replace(cfg, noise_multiplier=float(plan.noise_multiplier), target_epsilon=None)
    with tempfile.TemporaryDirectory(prefix="secure-fl-guarantee-") as tmp:
        layer = build_privacy_layer(
            layer_cfg, weighting=spec.aggregation.weighting, plan=RunPlan(plan.rounds, plan.fraction, training),
            site_sizes=sizes, run_dir=Path(tmp), noise_rng=np.random.default_rng(0),
            protocol_name=spec.name, spec_hash=spec.spec_hash,
        )
        accountant = getattr(cfg, "accountant", "pld")
        per_site: dict[str, dict[str, Any]] = {}
        cache: dict[Any, dict[str, Any]] = {}
        for site in sorted(sizes):
            sigma = float(layer.noise_multiplier_for(site))
            event = dp_event.SelfComposedDpEvent(layer.round_event(site, sigma), plan.rounds)
            if event not in cache:
                cache[event] = {
                    "epsilon": eps_of(event, cfg.delta, accountant),
                    "epsilon_rdp": eps_of(event, cfg.delta, "rdp"),
                    "noise_multiplier": sigma,
                }
            per_site[site] = dict(cache[event])
    eps = [v["epsilon"] for v in per_site.values()]
    return {
        "mechanism": cfg.mechanism, "noise": cfg.noise, "unit": getattr(cfg, "unit", "patient"),
        "relation": _relation_key(cfg), "adjacency": getattr(cfg, "adjacency", None),
        "delta": cfg.delta, "accountant": accountant, "target_epsilon": cfg.target_epsilon,
        "rounds": plan.rounds, "clip": cfg.max_grad_norm, "per_site": per_site,
        "epsilon_max": max(eps), "epsilon_min": min(eps),
        "noise_adder": getattr(cfg, "noise_adder", None), "min_sites": getattr(cfg, "min_sites", None),
        "epsilon_budget": getattr(cfg, "epsilon_budget", None),
    }


# -- the statement -----------------------------------------------------------------------------


def _f3(x: float) -> str:
    return f"{x:.3f}"


def derive(spec: ProtocolSpec, plan: Plan) -> Guarantee:
    """The guarantee of ``spec`` at ``plan`` (see the module docstring)."""
    _, ss = _secure_sum(spec, plan)
    dp = _dp(spec, plan)
    n = plan.n_sites
    kind, view = ss["kind"], ss["aggregator_sees"]
    weighted = spec.aggregation.weighting == "examples"
    terms: list[str] = []
    unit = f"@unit_{dp['unit']}" if dp else "@unit_patient"
    agg: list[Fact] = []
    site: list[Fact] = []
    coal: list[Fact] = []
    pub: list[Fact] = []
    adv: list[Fact] = []
    adversary: dict[str, Any] = {"model": "", "collusion_bound": None, "active_collusion_bound": None,
                                 "min_contributors": ss["min_contributors"], "dropout_tolerance": None,
                                 "failure_probability": None, "abort_probability": None}
    counts = "@counts_visible" if weighted else ""
    central = dp is not None and dp["noise"] == "central"
    local_dp = dp is not None and dp["noise"] == "local"
    # the aggregator, each site, a coalition
    if kind == "plain":
        agg.append(Fact("agg_noised" if view == "noised" else "agg_plain", {"counts": counts, "unit": unit}))
        site.append(Fact("site_model"))
        coal.append(Fact("coal_dp_local", {"unit": unit}) if local_dp else Fact("coal_plain"))
        minimum = max(1, plan.min_sites)
        adversary.update(min_contributors=minimum, dropout_tolerance=n - minimum)
        if local_dp:
            adversary["model"] = "no trust needed"
            adv.append(Fact("adv_any"))
        elif dp is not None:
            adversary["model"] = "trusted aggregator"
            adv.append(Fact("adv_trusted"))
        else:
            adversary["model"] = "unprotected"
            adv.append(Fact("adv_none"))
    elif kind == "ckks":
        terms += ["ckks", "semi_honest", "collusion"]
        k = ss["min_contributors"]
        agg.append(Fact("agg_ciphertext"))
        if ss["releases_to"] == "aggregator":
            agg.append(Fact("agg_ckks_release", {"k": k, "bits": ss.get("statistical_security")}))
            terms.append("flooding")
            site.append(Fact("site_model"))
        else:
            site.append(Fact("site_ckks_sum", {"k": k}))
            if ss.get("bounds") == "histogram":
                site.append(Fact("site_histogram"))
        coal.append(Fact("coal_ckks"))
        if dp is not None and dp["noise"] == "distributed":
            coal.append(Fact("coal_dp_shares"))
        adversary.update(model="semi-honest", collusion_bound=0, min_contributors=k, dropout_tolerance=n - k)
        adv += [Fact("adv_semi_honest"), Fact("adv_active_not"), Fact("adv_collusion", {"c": 0}),
                Fact("adv_min", {"k": k, "who": "@who_ckks"})]
    else:  # pairwise masking
        terms += ["secagg", "semi_honest", "collusion"]
        t, c, k = ss["threshold"], ss["colluders"], ss["min_survivors"]
        agg.append(Fact("agg_masked", {"k": k}))
        site.append(Fact("site_model"))
        p = ss.get("failure_probability")
        honest = k - c  # honest sites in the smallest sum the code releases, with c colluders among them
        local_bound = kind == "secagg-plus" and ss["degree"] < n - 1 and p is None
        if local_bound:
            coal.append(Fact("coal_masked_plus_local", {"t": t}))
        elif honest < 2:
            coal.append(Fact("coal_masked_one", {"c": c, "k": k, "h": honest}))
        elif kind == "secagg-plus" and p:
            coal.append(Fact("coal_masked_plus", {"c": c, "h": honest, "p": fmt_probability(p)}))
        else:
            coal.append(Fact("coal_masked", {"c": c, "h": honest}))
        if ss["degree"] < n - 1:
            coal.append(Fact("coal_masked_beyond_plus", {"t": t, "holders": ss["holders"]}))
        else:
            coal.append(Fact("coal_masked_beyond", {"t": t}))
        active = ss.get("active_colluders")
        adversary.update(model="semi-honest", collusion_bound=c, min_contributors=k, dropout_tolerance=n - k,
                         failure_probability=p, abort_probability=ss.get("abort_probability"))
        adv.append(Fact("adv_semi_honest"))
        if isinstance(active, int) and active >= 0:
            adversary["active_collusion_bound"] = active
            adversary["model"] = "active"
            adv.append(Fact("adv_active", {"c": active}))
        else:
            adv.append(Fact("adv_active_not"))
        adv += [Fact("adv_collusion_local", {"t": t}) if local_bound else Fact("adv_collusion", {"c": c}),
                Fact("adv_min", {"k": k, "who": "@who_masked"})]
        if p is not None:
            abort = fmt_probability(ss.get("abort_probability"))
            adv.append(Fact("adv_failure", {"p": fmt_probability(p), "a": abort}))
    if central and dp is not None:
        adder = dp.get("noise_adder") or "aggregator"
        if adder == "aggregator":
            agg.append(Fact("agg_noise_adder", {"each": "@each_clipped" if kind == "plain" else ""}))
    adv.append(Fact("adv_dropout", {"d": adversary["dropout_tolerance"], "n": n}))
    # differential privacy
    dp_facts: list[Fact] = []
    public: list[Fact] = []
    if dp is not None:
        terms += ["epsilon", "delta", "neighbouring", dp["accountant"], "rdp"]
        eps = dp["epsilon_max"]
        first = next(iter(dp["per_site"].values()))
        common = {"unit": unit, "delta": f"{dp['delta']:g}", "rounds": dp["rounds"],
                  "accountant": dp["accountant"].upper()}
        if dp["epsilon_max"] - dp["epsilon_min"] < 5e-4:
            sigma = f"{first['noise_multiplier']:.4g}"
            if dp["accountant"] == "rdp":  # the RDP figure would repeat the same number
                dp_facts.append(Fact("dp_eps_one", {**common, "eps": _f3(eps), "sigma": sigma}))
            else:
                dp_facts.append(Fact("dp_eps", {**common, "eps": _f3(eps), "eps_rdp": _f3(first["epsilon_rdp"]),
                                                "sigma": sigma}))
        else:
            dp_facts.append(Fact("dp_eps_range", {**common, "lo": _f3(dp["epsilon_min"]), "hi": _f3(eps)}))
        if dp.get("target_epsilon"):
            dp_facts.append(Fact("dp_target", {"target": f"{dp['target_epsilon']:g}"}))
        dp_facts.append(Fact("dp_relation", {"relation": "@" + dp["relation"]}))
        if dp["noise"] == "central":
            dp_facts.append(Fact("dp_covers_central", {"adder": dp.get("noise_adder") or "aggregator"}))
        elif dp["noise"] == "distributed":
            dp_facts.append(Fact("dp_covers_distributed", {"m": dp.get("min_sites") or 1}))
        else:
            dp_facts.append(Fact("dp_covers_local"))
        pub.append(Fact("pub_dp", {"eps": _f3(eps), "delta": f"{dp['delta']:g}", "relation": "@" + dp["relation"]}))
        public = [Fact("public_sizes"), Fact("public_participation"),
                  Fact("public_hyper", {"clip": f"{dp['clip']:g}"}), Fact("public_meta")]
    else:
        pub.append(Fact("pub_no_dp"))
    # cryptography
    crypto: dict[str, Any] | None = None
    crypto_facts: list[Fact] = []
    if kind == "ckks":
        from ..crypto.ckks_params import HE_STANDARD_MAX_LOG_Q

        d = ss["preset"]
        crypto = {"scheme": "ckks", **d, "total_bits": ss["total_bits"],
                  "bound": HE_STANDARD_MAX_LOG_Q[d["security_bits"]][d["poly_degree"]]}
        crypto_facts.append(Fact("he_params", {
            "preset": d["preset"], "N": d["poly_degree"], "moduli": d["coeff_mod_bit_sizes"], "Q": ss["total_bits"],
            "scale": d["scale_bits"], "encryption": f"@enc_{d['encryption']}", "sec": d["security_bits"],
            "bound": crypto["bound"]}))
        terms.append("symmetric")
    elif kind in ("secagg", "secagg-plus"):
        crypto = {"scheme": kind, **{k: ss[k] for k in ("threshold", "holders", "degree", "bits", "clip_range")}}
        graph = "@graph_complete" if ss["degree"] >= n - 1 else "@graph_sparse"
        crypto_facts.append(Fact("mask_params", {"t": ss["threshold"], "holders": ss["holders"], "bits": ss["bits"],
                                                 "clip": f"{ss['clip_range']:g}", "graph": graph, "k": ss["degree"]}))
    # not protected (derived; the spec's own list is quoted beside it)
    np_: list[Fact] = []
    if kind == "plain" and view == "plain":
        np_.append(Fact("np_plain"))
    if dp is None:
        np_.append(Fact("np_no_dp"))
        if kind != "plain":
            np_.append(Fact("np_sum", {"to": f"@to_{ss['releases_to']}"}))
    if central and dp is not None:
        np_.append(Fact("np_trusted_adder", {"adder": dp.get("noise_adder") or "aggregator"}))
    if adversary["model"] == "semi-honest":
        np_.append(Fact("np_active"))
    np_ += [Fact("np_poisoning"), Fact("np_metadata")]
    tm = spec.threat_model
    return Guarantee(
        protocol=spec.name, summary=spec.summary, source=spec.source, spec_hash=spec.spec_hash,
        plan={"sites": n, "rounds": plan.rounds, "site_sizes": plan.sizes(), "batch_size": plan.batch_size,
              "local_epochs": plan.local_epochs, "local_steps": plan.local_steps, "fraction": plan.fraction},
        secure_sum=ss, adversary=adversary,
        parties={"aggregator": agg, "site": site, "coalition": coal, "public": pub},
        adversary_facts=adv, dp=dp, dp_facts=dp_facts, public=public, crypto=crypto, crypto_facts=crypto_facts,
        not_protected=np_,
        spec_text={"adversary": tm.adversary, "assumptions": list(tm.assumptions),
                   "guarantees": list(tm.guarantees), "not_protected": list(tm.not_protected)},
        terms=list(dict.fromkeys(terms)),
    )


def safe_guarantee(protocol: str | Path | Mapping[str, Any], plan: Plan) -> Guarantee | str:
    """The guarantee, or the reason it cannot be stated (for reports: never raises on a bad spec)."""
    try:
        if isinstance(protocol, Mapping):
            return derive(parse_protocol(protocol, str(protocol.get("name", "<run>"))), plan)
        return guarantee_for(protocol, plan)
    except (SecureFLError, ValueError, KeyError) as exc:
        return f"{type(exc).__name__}: {exc}"
