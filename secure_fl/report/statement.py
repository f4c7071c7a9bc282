"""A :class:`~secure_fl.report.guarantee.Guarantee` as sections of sentences, plain text or HTML.

English and Japanese come from the same facts (:mod:`.phrases`) and the same glossary
(:mod:`.glossary`); only the spec's own free text (quoted from its TOML) stays in English.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from typing import Any

from .glossary import check_lang, term
from .guarantee import Fact, Guarantee
from .phrases import heading, render

__all__ = ["Section", "sections", "party_table", "to_text", "to_html", "to_json"]

PARTIES = ("aggregator", "site", "coalition", "public")


@dataclass(frozen=True)
class Section:
    key: str
    title: str
    lines: list[str]
    quoted: bool = False  # spec text, kept in its original language


def _say(facts: list[Fact], lang: str) -> list[str]:
    return [render(f.key, f.params, lang) for f in facts]


def party_table(g: Guarantee, lang: str = "en") -> list[tuple[str, list[str]]]:
    """(party, sentences) for the aggregator, each site, a coalition, anyone who sees the models."""
    return [(heading(p, lang), _say(g.parties[p], lang)) for p in PARTIES]


def sections(g: Guarantee, lang: str = "en") -> list[Section]:
    check_lang(lang)
    out = [Section("adversary", heading("adversary", lang), _say(g.adversary_facts, lang))]
    if g.dp is not None:
        lines = _say(g.dp_facts, lang)
        if g.dp["epsilon_max"] - g.dp["epsilon_min"] >= 5e-4:
            lines += [f"{s}: ε = {v['epsilon']:.3f} (σ = {v['noise_multiplier']:.4g})"
                      for s, v in g.dp["per_site"].items()]
        out.append(Section("dp", heading("dp", lang), lines))
        out.append(Section("public_info", heading("public_info", lang), _say(g.public, lang)))
    if g.crypto_facts:
        out.append(Section("crypto", heading("crypto", lang), _say(g.crypto_facts, lang)))
    out.append(Section("not_protected", heading("not_protected", lang), _say(g.not_protected, lang)))
    spec = g.spec_text
    quoted = [f"adversary: {spec['adversary']}"] + [f"assumes: {a}" for a in spec["assumptions"]]
    quoted += [f"not protected: {a}" for a in spec["not_protected"]]
    out.append(Section("spec_says", heading("spec_says", lang, source=g.source), quoted, quoted=True))
    if g.terms:
        out.append(Section("glossary", heading("glossary", lang), [": ".join(term(k, lang)) for k in g.terms]))
    return out


def _title(g: Guarantee, lang: str) -> str:
    return heading("title", lang, protocol=g.protocol)


def _config(g: Guarantee, lang: str) -> str:
    return heading("config", lang, n=g.plan["sites"], rounds=g.plan["rounds"])


def to_text(g: Guarantee, lang: str = "en", width: int = 110) -> str:
    import textwrap

    def wrap(s: str, indent: str) -> str:
        if lang == "ja":
            return indent + s
        return textwrap.fill(s, width, initial_indent=indent, subsequent_indent=" " * len(indent))

    lines = [f"{_title(g, lang)} — {_config(g, lang)}", g.summary, ""]
    for party, said in party_table(g, lang):
        lines.append(f"{party}:")
        lines += [wrap(s, "  - ") for s in said]
    for sec in sections(g, lang):
        lines += ["", f"{sec.title}:"]
        lines += [wrap(s, "  - ") for s in sec.lines]
    return "\n".join(lines)


def to_html(g: Guarantee, lang: str = "en", level: int = 2) -> str:
    """An HTML fragment (no page around it): title, the party table, the sections."""
    e = html.escape
    h, h2 = f"h{level}", f"h{level + 1}"
    rows = "".join(
        f"<tr><th scope='row'>{e(p)}</th><td><ul>{''.join(f'<li>{e(s)}</li>' for s in said)}</ul></td></tr>"
        for p, said in party_table(g, lang)
    )
    parts = [
        f"<section class='guarantee' lang='{lang}'><{h}>{e(_title(g, lang))}</{h}>",
        f"<p class='config'>{e(_config(g, lang))}. {e(g.summary)}</p>",
        f"<table class='parties'><thead><tr><th>{e(heading('party', lang))}</th><th>{e(heading('learns', lang))}"
        f"</th></tr></thead><tbody>{rows}</tbody></table>",
    ]
    for sec in sections(g, lang):
        cls = " class='quoted' lang='en'" if sec.quoted else ""
        items = "".join(f"<li>{e(s)}</li>" for s in sec.lines)
        if sec.key == "glossary":
            items = "".join(f"<li><b>{e(t)}</b>: {e(d)}</li>" for t, d in (term(k, lang) for k in g.terms))
        parts.append(f"<div class='sec sec-{sec.key}'{cls}><{h2}>{e(sec.title)}</{h2}><ul>{items}</ul></div>")
    parts.append("</section>")
    return "".join(parts)


def to_json(g: Guarantee, lang: str = "en") -> dict[str, Any]:
    """The structured fields plus the rendered sentences (what ``--json`` prints)."""
    out = g.to_json()
    out["lang"] = lang
    out["statement"] = {
        "parties": {p: s for p, s in zip(PARTIES, (said for _, said in party_table(g, lang)))},
        "sections": {s.key: s.lines for s in sections(g, lang)},
    }
    return out
