"""The report's attack section: what an attacker got, read from ``audit.json`` (``secure-fl audit``).

- Gradient inversion: the attacked site's photographs, then per protocol what the attacker
  reconstructed from the site's payload and from the released aggregate (plain FedAvg first),
  each image with its PSNR / SSIM against the original. Images come from ``inversion.npz`` beside
  ``audit.json`` as inline PNG (``data:`` URIs, allowed by the page's CSP); without it, the
  audit's ``inversion.png``.
- Membership inference: TPR at 0.1 % and 1 % FPR, AUC, and the ROC (log-log, inline SVG).
- One-run ε audit: the empirical lower bound beside the accountant's ε; a bound above it is marked
  as a bug of the DP layer or its accounting.

Every number is the audit's own; nothing is recomputed here. A missing or torn file reads as no audit.
"""

from __future__ import annotations

import base64
import html
import io
import math
from pathlib import Path
from typing import Any

import numpy as np

from .runs import read_json

__all__ = ["find_audits", "attacks_section", "has_audit"]

e = html.escape
AUDIT_FILE = "audit.json"

_T: dict[str, tuple[str, str]] = {
    "intro": ("Attacks run by secure-fl audit on what the threat model gives an attacker (the payloads the aggregator "
              "carried and the released models), never on a site's internals.",
              "secure-fl audit が脅威モデルで攻撃者に与えられるもの "
              "(集約者が運んだペイロードと公開モデル) に対して実行した攻撃。施設の内部には触れない。"),
    "inversion": ("Gradient inversion of one site's update", "1 施設の更新からの勾配逆算"),
    "membership": ("Membership inference on the released model", "公開モデルへのメンバーシップ推論"),
    "epsilon": ("Empirical ε lower bound (one training run) beside the accountant's ε",
                "経験的 ε 下限 (1 回の学習) と会計上の ε"),
    "originals": ("originals (attacked site)", "元画像 (攻撃対象の施設)"),
    "bug": ("BUG: the lower bound exceeds the accountant's ε", "不具合: 下限が会計上の ε を超えている"),
    "ok": ("below the accountant's ε", "会計上の ε 以下"),
    "no_images": ("the reconstructions were not stored with this audit", "この監査には復元画像が保存されていない"),
}


def _t(key: str, lang: str) -> str:
    en, ja = _T[key]
    return ja if lang == "ja" else en


def find_audits(folders: list[Path]) -> list[tuple[Path, dict[str, Any]]]:
    """(folder, audit.json contents) for each of ``folders`` that holds a readable audit (first time only)."""
    seen, out = set(), []
    for folder in folders:
        key = Path(folder).resolve()
        if key in seen:
            continue
        seen.add(key)
        data = read_json(Path(folder) / AUDIT_FILE)
        if any(isinstance(data.get(a), dict) for a in ("inversion", "membership", "epsilon")):
            out.append((Path(folder), data))
    return out


def has_audit(folders: list[Path]) -> bool:
    return bool(find_audits(folders))


def _num(x: Any, fmt: str = "{:.3f}") -> str:
    if isinstance(x, str):
        return x
    return fmt.format(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else "–"


def _png(img: np.ndarray, lo: float, hi: float, scale: int = 3) -> str:
    """A grey image as a ``data:`` PNG, in the original's range ``[lo, hi]``, enlarged ``scale`` times."""
    from PIL import Image

    g = np.clip((np.asarray(img, np.float64) - lo) / max(hi - lo, 1e-12), 0.0, 1.0)
    pil = Image.fromarray((g * 255).round().astype(np.uint8), mode="L")
    pil = pil.resize((pil.width * scale, pil.height * scale), Image.Resampling.NEAREST)
    buf = io.BytesIO()
    pil.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _img(src: str, alt: str) -> str:
    return f"<img class='recon' src='{src}' alt='{e(alt)}'>"


def _plain_first(results: list[dict[str, Any]]) -> list[tuple[int, dict[str, Any]]]:
    indexed = list(enumerate(results))
    return sorted(indexed, key=lambda ir: (not str(ir[1].get("protocol", "")).startswith("plain"), ir[0]))


def _inversion(folder: Path, rec: dict[str, Any], lang: str) -> str:
    results = [r for r in rec.get("results", []) if isinstance(r, dict)]
    arrays = None
    name = rec.get("images")
    if isinstance(name, str) and (folder / Path(name).name).is_file():
        try:
            with np.load(folder / Path(name).name) as z:
                arrays = {k: z[k] for k in z.files}
        except (OSError, ValueError):
            arrays = None
    parts = [f"<p class='quoted'>{e(str(rec.get('setting', '')))}</p>"]
    head = "<tr><th>protocol</th><th>attacker's input</th><th>images</th><th>PSNR dB</th><th>SSIM</th>" \
           "<th>baseline PSNR dB</th></tr>"
    rows = []
    ranges: list[tuple[float, float]] | None = None
    if arrays is not None and "originals" in arrays:
        orig = arrays["originals"]
        ranges = [(float(o.min()), float(o.max())) for o in orig]
        cells = "".join(_img(_png(o, lo, hi), f"original {b + 1}") for b, (o, (lo, hi)) in enumerate(zip(orig, ranges)))
        rows.append(f"<tr><td colspan='2'>{e(_t('originals', lang))}</td><td class='imgs'>{cells}</td>"
                    f"<td></td><td></td><td></td></tr>")
    for i, r in _plain_first(results):
        imgs = arrays.get(f"recon_{i}") if arrays is not None else None
        if imgs is not None and ranges is not None:
            cells = "".join(
                _img(_png(im, lo, hi), f"{r.get('protocol')} {r.get('target')} reconstruction {b + 1}, "
                     f"PSNR {_num((r.get('psnr') or [None] * (b + 1))[b], '{:.1f}')} dB")
                for b, (im, (lo, hi)) in enumerate(zip(imgs, ranges)))
        else:
            cells = f"<span class='note'>{e(_t('no_images', lang))}</span>"
        per = " · ".join(f"{_num(p, '{:.1f}')}" for p in (r.get("psnr") or []))
        rows.append(
            f"<tr><td>{e(str(r.get('protocol')))}</td><td>{e(str(r.get('target')))}<br>"
            f"<span class='quoted'>{e(str(r.get('attacker_input', '')))}</span></td><td class='imgs'>{cells}</td>"
            f"<td class='num'>{_num(r.get('psnr_mean'), '{:.1f}')}<br><span class='quoted'>{e(per)}</span></td>"
            f"<td class='num'>{_num(r.get('ssim_mean'), '{:.2f}')}</td>"
            f"<td class='num'>{_num(r.get('baseline_psnr_mean'), '{:.1f}')}</td></tr>")
    parts.append(f"<table class='inversion'><thead>{head}</thead><tbody>{''.join(rows)}</tbody></table>")
    parts.append("<p class='note'>baseline = the best constant image after the same fit: a reconstruction near it "
                 "shows nothing of the photograph.</p>")
    return "".join(parts)


def _roc_svg(results: list[dict[str, Any]]) -> str | None:
    from .figures import _COLOURS, _plt, _svg

    curves = [(str(r.get("protocol")), r["roc"]) for r in results if isinstance(r.get("roc"), dict)]
    if not curves:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.2, 4.2))
    for j, (label, roc) in enumerate(curves):
        fpr, tpr = np.asarray(roc.get("fpr", []), float), np.asarray(roc.get("tpr", []), float)
        keep = fpr > 0
        ax.plot(fpr[keep], np.maximum(tpr[keep], 1e-4), label=label, color=_COLOURS[j % len(_COLOURS)], lw=1.3)
    ax.plot([1e-4, 1], [1e-4, 1], ls=":", color="#777", lw=1, label="random guessing")
    ax.set_xscale("log"), ax.set_yscale("log")
    ax.set_xlim(1e-4, 1), ax.set_ylim(1e-4, 1.05)
    ax.set_xlabel("false positive rate"), ax.set_ylabel("true positive rate")
    ax.legend(fontsize=7, loc="lower right")
    return _svg(fig)


def _membership(rec: dict[str, Any], lang: str) -> str:
    results = [r for r in rec.get("results", []) if isinstance(r, dict)]
    rows = []
    for r in results:
        rows.append(
            f"<tr><td>{e(str(r.get('protocol')))}</td><td>{e(str(r.get('attack', '')))}</td>"
            f"<td class='num'>{_num(r.get('tpr_at_0.1%fpr'))}</td><td class='num'>{_num(r.get('tpr_at_1%fpr'))}</td>"
            f"<td class='num'>{_num(r.get('auc'))}</td><td class='num'>{_num(r.get('min_nonzero_fpr'), '{:.2g}')}</td>"
            f"<td class='num'>{_num((r.get('loss_threshold') or {}).get('tpr_at_1%fpr'))}</td></tr>")
    table = ("<table><thead><tr><th>protocol</th><th>attack</th><th>TPR at 0.1 % FPR</th><th>TPR at 1 % FPR</th>"
             "<th>AUC</th><th>smallest FPR measured</th><th>loss-threshold TPR at 1 % FPR</th></tr></thead><tbody>"
             + "".join(rows) + "</tbody></table>")
    svg = _roc_svg(results)
    fig = "" if svg is None else (f"<figure data-figure='roc'>{svg}<figcaption>ROC of the membership attack, "
                                  f"log-log (random guessing: the diagonal)</figcaption></figure>")
    note = next((str(r.get("evaluation")) for r in results if r.get("evaluation")), "")
    return table + (f"<p class='quoted'>{e(note)}</p>" if note else "") + fig


def _epsilon(rec: dict[str, Any], lang: str) -> str:
    rows = []
    for r in rec.get("results", []):
        if not isinstance(r, dict):
            continue
        lb, acc = r.get("epsilon_lower_bound"), r.get("epsilon_accountant")
        acc_f = math.inf if acc in ("inf", None) else acc
        bug = isinstance(lb, (int, float)) and isinstance(acc_f, (int, float)) and lb > acc_f
        if bug:
            verdict = f"<td class='bad'>{e(_t('bug', lang))}</td>"
        elif isinstance(acc_f, (int, float)) and math.isfinite(acc_f):
            verdict = f"<td class='ok'>{e(_t('ok', lang))}</td>"
        else:
            verdict = "<td>no DP: no ε to check</td>"
        rows.append(
            f"<tr><td>{e(str(r.get('protocol')))}</td><td class='num'>{_num(lb, '{:.2f}')}</td>"
            f"<td class='num'>{_num(acc_f, '{:.2f}')}</td><td class='num'>{r.get('correct')}/{r.get('guesses')}</td>"
            f"<td class='num'>{_num(r.get('confidence'), '{:g}')}</td>{verdict}</tr>")
    setting = next((str(r.get("setting")) for r in rec.get("results", []) if isinstance(r, dict)), "")
    return ("<table><thead><tr><th>protocol</th><th>ε lower bound</th><th>accountant ε</th>"
            "<th>correct guesses</th><th>confidence</th><th></th></tr></thead><tbody>" + "".join(rows)
            + f"</tbody></table><p class='quoted'>{e(setting)}</p>")


#: marks the page once the reconstructions are decoded (the browser test reads the attribute)
_SCRIPT = ("<script>window.addEventListener('load',function(){var i=document.querySelectorAll('img.recon'),ok=0;"
           "i.forEach(function(x){if(x.complete&&x.naturalWidth>0)ok++;});"
           "document.body.setAttribute('data-audit-images',ok+'/'+i.length);});</script>")
_STYLE = ("<style>td.imgs img{margin:0 3px;image-rendering:pixelated;border:1px solid var(--line)}"
          "table.inversion td{vertical-align:middle}</style>")


def attacks_section(folders: list[Path], lang: str) -> str:
    """The body of the attack section for the audits found in ``folders`` ("" when there is none)."""
    audits = find_audits(folders)
    if not audits:
        return ""
    parts = [_STYLE, f"<p>{e(_t('intro', lang))}</p>"]
    for folder, data in audits:
        if len(audits) > 1:
            parts.append(f"<h3>{e(str(folder))}</h3>")
        for attack, draw in (("inversion", lambda r, folder=folder: _inversion(folder, r, lang)),
                             ("membership", lambda r: _membership(r, lang)), ("epsilon", lambda r: _epsilon(r, lang))):
            rec = data.get(attack)
            if isinstance(rec, dict):
                where = f"task {rec.get('task', '?')}, seed {rec.get('seed', '?')}"
                parts.append(f"<h3>{e(_t(attack, lang))} <span class='meta'>({e(where)})</span></h3>{draw(rec)}")
    parts.append(_SCRIPT)
    return "".join(parts)
