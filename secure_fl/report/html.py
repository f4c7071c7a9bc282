"""``report.html``: what an ethics committee reads about a finished run (or a comparison of runs).

One self-contained page: figures are inline SVG, styles and the one small script are inline, and a
Content-Security-Policy forbids every network load, so the page opens the same offline, in an
archive, or printed (``--pdf`` prints it with headless Chromium, :mod:`.browser`). Content: the
guarantee statement of each protocol (:mod:`.guarantee`, at the run's configuration), accuracy /
AUC over rounds, ε spent per site against its budget with refusals marked, seconds and bytes per
stage, what the aggregator carried (messages per kind from ``views.jsonl``), dropped or refused
sites and why, the attacks when the folder holds an ``audit.json`` (:mod:`.attacks`: reconstructions,
membership ROC, ε lower bound), and the reproducibility block (``resolved.json``). Anything a run did not record
reads "not recorded"; a section that cannot be drawn says why instead of failing the page.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import html
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import SecureFLError
from .attacks import attacks_section, has_audit
from .figures import cost_figure, epsilon_figure, epsilon_series, metric_key, metrics_figure, views_figure
from .glossary import check_lang
from .guarantee import Guarantee, Plan, safe_guarantee
from .phrases import heading
from .runs import RunData, find_runs, load_run, resolve_folder
from .statement import to_html

__all__ = ["build_html", "write_report", "REPORT_NAME"]

REPORT_NAME = "report.html"
e = html.escape

_H: dict[str, tuple[str, str]] = {
    "report": ("Report", "報告書"),
    "overview": ("Overview", "概要"),
    "glance": ("Guarantees at a glance (full statements below)", "保証の一覧 (詳細は下記)"),
    "guarantees": ("What each protocol guarantees", "各プロトコルが保証すること"),
    "accuracy": ("Accuracy over rounds", "ラウンドごとの精度"),
    "privacy": ("Privacy spent per site", "施設ごとのプライバシー消費"),
    "cost": ("Cost: seconds and bytes per stage", "コスト: 段階ごとの時間と通信量"),
    "views": ("What the aggregator carried", "集約者が運んだもの"),
    "refusals": ("Dropped or refused sites, aborted rounds", "脱落・拒否した施設、中止したラウンド"),
    "repro": ("Reproducibility", "再現性"),
    "attacks": (
        "What an attacker gets: inversion, membership, ε audit",
        "攻撃者が得るもの: 逆算・メンバーシップ・ε 監査",
    ),
    "round_note": (
        "Rounds are numbered from 1 in this report; a reason quoted from the run counts from 0.",
        "この報告書ではラウンドを 1 から数える。実行記録から引用した理由では 0 から数える。",
    ),
    "no_dp": (
        "No run of this report has a DP layer: no ε is spent (see the statements above for what that means).",
        "この報告書の実行には DP 層がないため、ε は消費されない (その意味は上の保証を参照)。",
    ),
    "none_dropped": (
        "No site dropped out or was refused, and every round released its result.",
        "脱落・拒否した施設はなく、すべてのラウンドが結果を公開した。",
    ),
    "reference": ("reference point, not a protocol: no guarantee to state", "プロトコルではなく基準点: 保証はない"),
}

#: table headers and captions in Japanese (the figures' own labels stay in English)
_JA: dict[str, str] = {
    "run": "実行",
    "status": "状態",
    "rounds": "ラウンド数",
    "auc": "AUC",
    "accuracy": "正解率",
    "ε max (site)": "ε 最大 (施設)",
    "aborted": "中止",
    "KB up": "送信 KB",
    "KB down": "受信 KB",
    "s/round": "秒/ラウンド",
    "protocol": "プロトコル",
    "aggregator sees": "集約者が見るもの",
    "adversary": "攻撃者",
    "colluding sites tolerated": "許容される共謀施設数",
    "min. contributors": "最少参加施設数",
    "dropouts tolerated": "許容される脱落数",
    "ε per site (planned)": "施設ごとの ε (計画)",
    "P(failure)/round": "失敗確率/ラウンド",
    "site": "施設",
    "ε spent": "消費した ε",
    "ε (RDP)": "ε (RDP)",
    "ε for": "ε の単位",
    "budget": "予算",
    "ledger charges": "台帳の記録数",
    "rounds refused (budget)": "拒否したラウンド (予算)",
    "messages (bytes)": "メッセージ数 (バイト)",
    "round": "ラウンド",
    "what": "内容",
    "reason as recorded": "記録された理由",
    "run folder": "実行フォルダ",
    "variant": "バリアント",
    "seed": "シード",
    "protocol spec hash": "仕様書ハッシュ",
    "overrides": "上書き設定",
    "run id": "実行 ID",
    "code commit": "コードのコミット",
    "versions": "バージョン",
    "data digest per site": "施設ごとのデータ要約 (sha256)",
    "pooled test metrics after each round; a circled point is a round that released nothing": "各ラウンド後の全施設テストデータでの指標。丸で囲んだ点は何も公開しなかったラウンド",  # noqa: E501 (a table row or a translated phrase reads best whole)
    "cumulative ε per site as charged to its ledger before each update left; ✕ = a round the site refused because "
    "it would exceed its budget": "各更新が施設を出る前に台帳へ記録された施設ごとの累積 ε。✕ は予算を超えるため施設が拒否したラウンド",  # noqa: E501 (a table row or a translated phrase reads best whole)
    "mean per round over the run (simulated in one process)": "実行全体のラウンドあたり平均 (1 プロセスでの模擬)",
    "every message the aggregator received or relayed, by what it reveals (views.jsonl)": "集約者が受け取った、または中継したすべてのメッセージ (明かす内容別、views.jsonl)",  # noqa: E501 (a table row or a translated phrase reads best whole)
}

_CSS = """
:root{--ink:#1a1a1a;--muted:#555;--line:#d0d0d0;--bad:#b00020;--ok:#1b5e20}
body{font-family:"Noto Sans","Noto Sans CJK JP","DejaVu Sans",Arial,sans-serif;color:var(--ink);margin:0 auto;
max-width:1100px;padding:16px 24px;line-height:1.45;font-size:14px}
h1{font-size:22px;margin:0 0 4px}
h2{font-size:18px;border-bottom:2px solid var(--ink);padding-bottom:2px;margin-top:28px}
h3{font-size:15px;margin:16px 0 4px}h4{font-size:13px;margin:10px 0 2px}
.meta{color:var(--muted);font-size:12px}
table{border-collapse:collapse;margin:6px 0;font-size:12.5px}th,td{border:1px solid var(--line);padding:3px 7px;
text-align:left;vertical-align:top}thead th{background:#f2f2f2}
td.num{text-align:right;font-variant-numeric:tabular-nums}
table.parties{width:100%}table.parties th[scope=row]{width:18%;background:#fafafa}
table.parties ul{margin:0;padding-left:18px}
.guarantee{border:1px solid var(--line);border-radius:6px;padding:4px 14px 10px;margin:12px 0;background:#fcfcfc}
.sec ul{margin:2px 0;padding-left:20px}.quoted{color:var(--muted);font-size:12px}
figure{margin:8px 0;break-inside:avoid}figure svg{max-width:100%;height:auto}
figcaption{font-size:12px;color:var(--muted)}
.bad{color:var(--bad)}.ok{color:var(--ok)}.note{color:var(--muted);font-style:italic}
pre{background:#f6f6f6;border:1px solid var(--line);padding:6px;font-size:11px;white-space:pre-wrap;
max-height:320px;overflow:auto}
@media print{body{max-width:none;font-size:11px;padding:0}h2{break-after:avoid}pre{max-height:none}
.guarantee,figure,table{break-inside:avoid}@page{size:A4;margin:14mm}}
"""

# marks the page once its figures are checked (the browser test reads the attribute from the DOM)
_SCRIPT = """
document.addEventListener('DOMContentLoaded',function(){var f=document.querySelectorAll('figure[data-figure]');
var ok=0;f.forEach(function(x){var s=x.querySelector('svg');if(!s)return;var r=s.getBoundingClientRect();
if(r.width>20&&r.height>20&&s.querySelectorAll('path,use').length>3){ok++;x.setAttribute('data-ok','1');}});
document.body.setAttribute('data-figures',ok+'/'+f.length);});
"""


def _h(key: str, lang: str) -> str:
    en, ja = _H[key]
    return ja if lang == "ja" else en


def _num(x: Any, fmt: str = "{:.3f}") -> str:
    return fmt.format(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else "–"


def _plan(run: RunData) -> Plan:
    training = run.exp_value(None, "training", {}) or {}
    fed = run.exp_value(None, "federation", {}) or {}
    planned = run.summary.get("rounds_planned")
    if not isinstance(planned, int):
        finished = str(run.summary.get("status", "")) == "finished"
        planned = run.summary.get("rounds_done") if finished else run.exp_value(None, "rounds", len(run.rounds))
    sizes = run_sizes(run)
    sigmas = {
        round(float(v["noise_multiplier"]), 12)
        for rec in run.rounds[-1:]
        for v in (rec.get("privacy_spent") or {}).values()
        if isinstance(v, dict) and isinstance(v.get("noise_multiplier"), (int, float))
    }
    return Plan(
        noise_multiplier=sigmas.pop() if len(sigmas) == 1 else None,
        sites=len(sizes) or 1,
        rounds=int(planned or 1),
        site_sizes=sizes or None,
        batch_size=int(training.get("batch_size", 32)),
        local_epochs=int(training.get("local_epochs", 1)),
        local_steps=training.get("local_steps"),
        fraction=float(fed.get("fraction", 1.0)),
        min_sites=int(fed.get("min_sites", 1)),
    )


def run_sizes(run: RunData) -> dict[str, int]:
    from .runs import site_sizes

    return site_sizes(run.resolved, run.run_level)


def _spec_hash(run: RunData) -> str:
    h = run.resolved.get("spec_hash")
    if isinstance(h, str):
        return h
    if run.protocol is None:
        return "–"
    return hashlib.sha256(json.dumps(run.protocol, sort_keys=True, default=str).encode()).hexdigest()[:16]


#: guarantees already derived in this process (a compare page and its run pages share them)
_CACHE: dict[str, Guarantee | str] = {}


def _guarantees(runs: list[RunData], lang: str) -> str:
    out: list[str] = []
    seen: dict[str, Guarantee | str] = {}
    for r in runs:
        if r.protocol is None:
            if r.variant not in seen:
                seen[r.variant] = "reference"
                out.append(f"<h3>{e(r.variant)}</h3><p class='note'>{e(_h('reference', lang))}</p>")
            continue
        key = _spec_hash(r) + json.dumps(_plan(r).__dict__, sort_keys=True, default=str)
        if key in seen:
            continue
        if key not in _CACHE:
            _CACHE[key] = safe_guarantee(r.protocol, _plan(r))
        g = seen[key] = _CACHE[key]
        if isinstance(g, str):
            out.append(f"<h3>{e(r.variant)}</h3><p class='bad'>guarantee not stated: {e(g)}</p>")
        else:
            out.append(to_html(g, lang, level=3))
    return "".join(out)


def _glance(runs: list[RunData], lang: str) -> str:
    """One row per protocol: what the full statements below say, in numbers."""
    from .phrases import fmt_probability, render

    rows, done = [], set()
    for r in runs:
        if r.protocol is None or r.variant in done:
            continue
        done.add(r.variant)
        key = _spec_hash(r) + json.dumps(_plan(r).__dict__, sort_keys=True, default=str)
        g = _CACHE.get(key)
        if g is None:
            g = _CACHE[key] = safe_guarantee(r.protocol, _plan(r))
        if isinstance(g, str):
            rows.append(f"<tr><td>{e(r.variant)}</td><td colspan='7' class='bad'>{e(g)}</td></tr>")
            continue
        a = g.adversary
        eps = "–"
        if g.dp is not None:
            rel = render(g.dp["relation"], {}, lang)
            eps = f"{g.dp['epsilon_max']:.3f} (δ = {g.dp['delta']:g}; {rel})"
        coll = a.get("collusion_bound")
        rows.append(
            f"<tr><td>{e(r.variant)}</td><td>{e(g.secure_sum['aggregator_sees'])}</td><td>{e(a.get('model') or '–')}"
            f"</td><td class='num'>{'–' if coll is None else coll}</td><td class='num'>{a.get('min_contributors')}</td>"
            f"<td class='num'>{a.get('dropout_tolerance')}</td><td>{e(eps)}</td>"
            f"<td class='num'>{e(fmt_probability(a.get('failure_probability')))}</td></tr>"
        )
    if not rows:
        return ""
    head = [
        "protocol",
        "aggregator sees",
        "adversary",
        "colluding sites tolerated",
        "min. contributors",
        "dropouts tolerated",
        "ε per site (planned)",
        "P(failure)/round",
    ]
    return f"<h3>{e(_h('glance', lang))}</h3>" + _table(head, rows, lang)


def _figure(name: str, svg: str | None, caption: str, lang: str) -> str:
    if svg is None:
        return f"<p class='note'>{e(heading('not_recorded', lang))}: {e(_tr(caption, lang))}</p>"
    return f"<figure data-figure='{name}'>{svg}<figcaption>{e(_tr(caption, lang))}</figcaption></figure>"


def _overview(runs: list[RunData], lang: str) -> str:
    keys = metric_key(runs)
    head = [
        "run",
        "status",
        "rounds",
        *[k.replace("pooled/", "") for k in keys],
        "ε max (site)",
        "aborted",
        "KB up",
        "KB down",
        "s/round",
    ]
    rows = []
    for r in runs:
        last = (r.rounds[-1].get("metrics") or {}) if r.rounds else {}
        eps = [s[-1][1] for s in epsilon_series(r).values() if s]
        aborted = sum(1 for rec in r.rounds if not rec.get("applied", True))
        status = str(r.summary.get("status", "not recorded"))
        cls = "ok" if status == "finished" else "bad"
        rows.append(
            f"<tr><td>{e(r.label)}</td><td class='{cls}'>{e(status)}</td><td class='num'>{len(r.rounds)}</td>"
            + "".join(f"<td class='num'>{_num(last.get(k))}</td>" for k in keys)
            + f"<td class='num'>{_num(max(eps)) if eps else '–'}</td><td class='num'>{aborted}</td>"
            + f"<td class='num'>{_num((r.summary.get('bytes_up_per_site_round') or 0) / 1024, '{:.1f}')}</td>"
            + f"<td class='num'>{_num((r.summary.get('bytes_down_per_site_round') or 0) / 1024, '{:.1f}')}</td>"
            + f"<td class='num'>{_num(r.summary.get('seconds_per_round'))}</td></tr>"
        )
    return _table(head, rows, lang)


def _tr(text: str, lang: str) -> str:
    """A table header or caption in ``lang`` (numbers and identifiers stay as they are)."""
    return _JA.get(text, text) if lang == "ja" else text


def _table(head: list[str], rows: list[str], lang: str = "en") -> str:
    return (
        "<table><thead><tr>"
        + "".join(f"<th>{e(_tr(h, lang))}</th>" for h in head)
        + "</tr></thead><tbody>"
        + "".join(rows)
        + "</tbody></table>"
    )


def _privacy_table(runs: list[RunData], lang: str) -> str:
    rows = []
    for r in runs:
        series = epsilon_series(r)
        for site, pts in sorted(series.items()):
            led = r.ledgers.get(site, {})
            budget = (led.get("budget") or {}).get("epsilon_max")
            charges = len(led.get("charges", [])) if led else None
            refused = sum(1 for rec in r.rounds if "budget" in str((rec.get("dropped") or {}).get(site, "")))
            last = (r.rounds[-1].get("privacy_spent") or {}).get(site, {}) if r.rounds else {}
            rows.append(
                f"<tr><td>{e(r.label)}</td><td>{e(site)}</td><td class='num'>{_num(pts[-1][1])}</td>"
                f"<td class='num'>{_num(last.get('epsilon_rdp'))}</td>"
                f"<td class='num'>{_num(last.get('delta'), '{:g}')}</td>"
                f"<td>{e(str(last.get('adjacency') or last.get('unit') or '–'))}</td>"
                f"<td class='num'>{_num(budget, '{:g}')}</td>"
                f"<td class='num'>{charges if charges is not None else '–'}</td>"
                f"<td class='num'>{refused}</td></tr>"
            )
    if not rows:
        return f"<p class='note'>{e(_h('no_dp', lang))}</p>"
    return _table(
        ["run", "site", "ε spent", "ε (RDP)", "δ", "ε for", "budget", "ledger charges", "rounds refused (budget)"],
        rows,
        lang,
    )


def _views_table(runs: list[RunData], lang: str) -> str:
    kinds = sorted({k for r in runs for k in r.view_counts})
    if not kinds:
        return ""
    rows = []
    for r in runs:
        cells = "".join(
            f"<td class='num'>{sum(r.view_counts.get(k, {}).values())} ({r.view_bytes.get(k, 0) / 1024:.1f} KB)</td>"
            for k in kinds
        )
        rows.append(f"<tr><td>{e(r.label)}</td>{cells}</tr>")
    return _table(["run", *[f"{k}: {_tr('messages (bytes)', lang)}" for k in kinds]], rows, lang)


def _kind(reason: str) -> str:
    if "privacy budget exhausted" in reason or "budget" in reason:
        return "refused: budget exhausted"
    if reason.startswith("dropped out"):
        return "dropped out"
    return "rejected"


def _refusals(runs: list[RunData], lang: str) -> str:
    rows = []
    for r in runs:
        for j, rec in enumerate(r.rounds):
            rnd = int(rec.get("round", j)) + 1
            for site, why in sorted((rec.get("dropped") or {}).items()):
                rows.append(
                    f"<tr><td>{e(r.label)}</td><td class='num'>{rnd}</td><td>{e(site)}</td>"
                    f"<td>{e(_kind(str(why)))}</td><td>{e(str(why))}</td></tr>"
                )
            if rec.get("aborted"):
                rows.append(
                    f"<tr><td>{e(r.label)}</td><td class='num'>{rnd}</td><td>–</td>"
                    f"<td class='bad'>round released nothing</td><td>{e(str(rec['aborted']))}</td></tr>"
                )
    if not rows:
        return f"<p class='note'>{e(_h('none_dropped', lang))}</p>"
    note = _h("round_note", lang)
    return _table(["run", "round", "site", "what", "reason as recorded"], rows, lang) + f"<p class='note'>{e(note)}</p>"


def _repro(runs: list[RunData], lang: str) -> str:
    nr = heading("not_recorded", lang)
    out = []
    for r in runs:
        env = r.run_level.get("environment") or r.resolved.get("environment") or {}
        versions = env.get("versions") if isinstance(env, dict) else None
        git = env.get("git") if isinstance(env, dict) else None
        data = r.run_level.get("data")
        items = [
            ("run folder", str(r.path)),
            ("variant", r.variant),
            ("seed", str(r.seed)),
            ("protocol spec hash", _spec_hash(r)),
            ("overrides", json.dumps(r.resolved.get("overrides") or {})),
            ("run id", str(r.run_level.get("run_id") or nr)),
            (
                "code commit",
                (f"{git.get('commit')}" + (" (uncommitted changes)" if git.get("dirty") else ""))
                if isinstance(git, dict) and git.get("commit")
                else nr,
            ),
            ("versions", ", ".join(f"{k} {v}" for k, v in versions.items()) if isinstance(versions, dict) else nr),
            (
                "data digest per site",
                "; ".join(
                    f"{s}: sha256 {v.get('sha256', '?')[:16]}… (n={v.get('n_train')})"
                    for s, v in data.items()
                    if isinstance(v, dict)
                )
                if isinstance(data, dict) and data
                else nr,
            ),
        ]
        rows = "".join(f"<tr><th scope='row'>{e(_tr(k, lang))}</th><td>{e(v)}</td></tr>" for k, v in items)
        resolved = {k: v for k, v in r.resolved.items() if k != "protocol"} or nr
        out.append(
            f"<h3>{e(r.label)}</h3><table>{rows}</table><h4>resolved.json (effective configuration)</h4>"
            f"<pre>{e(json.dumps(resolved, indent=1, sort_keys=True, default=str))}</pre>"
        )
    return "".join(out)


def _section(key: str, lang: str, body: Callable[[], str]) -> str:
    try:
        inner = body()
    except (SecureFLError, ValueError, KeyError, TypeError, OSError, ArithmeticError) as exc:
        inner = f"<p class='bad'>this section could not be drawn: {e(type(exc).__name__)}: {e(str(exc))}</p>"
    return f"<section id='{key}'><h2>{e(_h(key, lang))}</h2>{inner}</section>"


def build_html(runs: list[RunData], title: str, lang: str = "en", audit_folders: list[Path] | None = None) -> str:
    """The report page for ``runs`` (one run, or several side by side); an attack section when one of
    ``audit_folders`` (default: the runs' folders) holds an ``audit.json`` (:mod:`.attacks`)."""
    check_lang(lang)
    now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    guarantees = _section("guarantees", lang, lambda: _guarantees(runs, lang))
    parts = [
        _section("overview", lang, lambda: _overview(runs, lang) + _glance(runs, lang)),
        _section(
            "accuracy",
            lang,
            lambda: _figure(
                "accuracy",
                metrics_figure(runs),
                "pooled test metrics after each round; a circled point is a round that released nothing",
                lang,
            ),
        ),
        _section(
            "privacy",
            lang,
            lambda: (
                _figure(
                    "epsilon",
                    epsilon_figure(runs),
                    "cumulative ε per site as charged to its ledger before each update left; ✕ = a round the site "
                    "refused because it would exceed its budget",
                    lang,
                )
                + _privacy_table(runs, lang)
            ),
        ),
        _section(
            "cost",
            lang,
            lambda: _figure("cost", cost_figure(runs), "mean per round over the run (simulated in one process)", lang),
        ),
        _section(
            "views",
            lang,
            lambda: (
                _figure(
                    "views",
                    views_figure(runs),
                    "every message the aggregator received or relayed, by what it reveals (views.jsonl)",
                    lang,
                )
                + _views_table(runs, lang)
            ),
        ),
        _section("refusals", lang, lambda: _refusals(runs, lang)),
        _section("repro", lang, lambda: _repro(runs, lang)),
    ]
    parts.insert(1 if len(runs) == 1 else len(parts) - 1, guarantees)  # one run: its statement first
    folders = audit_folders if audit_folders is not None else [r.path for r in runs]
    if has_audit(folders):
        parts.insert(len(parts) - 1, _section("attacks", lang, lambda: attacks_section(folders, lang)))
    csp = "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:"
    return (
        f"<!DOCTYPE html><html lang='{lang}'><head><meta charset='utf-8'>"
        f"<meta http-equiv='Content-Security-Policy' content=\"{csp}\">"
        f"<meta name='viewport' content='width=device-width, initial-scale=1'><title>{e(title)}</title>"
        f"<style>{_CSS}</style><script>{_SCRIPT}</script></head><body>"
        f"<h1>{e(_h('report', lang))}: {e(title)}</h1><p class='meta'>generated {e(now)} by secure-fl report · "
        f"{len(runs)} run(s)</p>" + "".join(parts) + "</body></html>"
    )


def _title(path: Path, runs: list[RunData]) -> str:
    exp = runs[0].exp_value(None, "name", None) if runs else None
    if len(runs) == 1:
        return f"{exp + ' · ' if exp else ''}{runs[0].label}"
    return f"{exp or path.name}: {len(runs)} runs side by side"


def write_report(path: Path, lang: str = "en", pdf: bool = False, per_run: bool = True) -> Path:
    """Write ``report.html`` into ``path`` (a run folder or a compare folder; the latter also gets one page
    per run folder below it when ``per_run``). Returns the page written into ``path``."""
    path = Path(path)
    folders = find_runs(path)
    if not folders:
        raise SecureFLError(f"{path}: no run folder (with rounds.jsonl) here or below; give a run or compare folder")
    runs = [load_run(p) for p in folders]
    target = resolve_folder(path)  # a run folder, or the compare folder (through its `latest` pointer)
    out = target / REPORT_NAME
    out.write_text(build_html(runs, _title(target, runs), lang, [target, *(r.path for r in runs)]), encoding="utf-8")
    if per_run:
        for r in runs:
            if r.path.resolve() == target.resolve() or r.protocol is None:
                continue  # a reference point (pooled, local-only) has no protocol to report on
            (r.path / REPORT_NAME).write_text(build_html([r], _title(r.path, [r]), lang), encoding="utf-8")
    if pdf:
        from .browser import print_pdf

        print_pdf(out, out.with_suffix(".pdf"))
    return out


def compare_folder_report(out_dir: Path) -> Path | None:
    """The hook ``secure-fl compare`` calls when its runs are done: report.html in the compare folder and in
    each run folder. A report that cannot be written is reported on stderr; the runs' results stay."""
    import sys

    try:
        return write_report(Path(out_dir))
    except (SecureFLError, OSError, ValueError) as exc:
        print(f"report: not written: {exc}", file=sys.stderr)
        return None
