"""Sentence templates of a guarantee statement, one entry per fact, in English and Japanese.

A statement is a list of facts derived from a spec and the accountants
(:mod:`secure_fl.report.guarantee`); each fact names a template here and the values that fill
it. No template names a protocol: the same sentence serves every protocol whose code gives the
same fact, so a statement cannot drift from the spec it is derived from.
"""

from __future__ import annotations

import math
from typing import Any

from .glossary import check_lang

__all__ = ["PHRASES", "HEADINGS", "render", "heading", "fmt_probability"]

# key -> (English, Japanese). Placeholders are filled by str.format with the fact's params.
PHRASES: dict[str, tuple[str, str]] = {
    # -- the aggregator
    "agg_plain": ("sees every site's update in the clear{counts}.", "各施設の更新を平文のまま見る{counts}。"),
    "agg_noised": (
        "sees every site's update with DP noise the site added itself{counts}: the noise bounds what it "
        "can infer about any one {unit} (ε below), it does not hide the update.",
        "各施設が自ら DP ノイズを加えた更新を見る{counts}。ノイズは個々の{unit}について推測できることを"
        "(下記の ε で) 抑えるが、更新そのものを隠すわけではない。",
    ),
    "agg_ciphertext": (
        "sees only CKKS ciphertexts of each site's update and example count; it holds no secret key "
        "and cannot decrypt them.",
        "各施設の更新と症例数の CKKS 暗号文だけを見る。秘密鍵を持たないため復号できない。",
    ),
    "agg_ckks_release": (
        "receives the decrypted sum of at least {k} sites, flooded with noise for {bits}-bit statistical security.",
        "少なくとも {k} 施設の総和の復号結果を受け取る (統計的安全性 {bits} ビットのノイズフラッディング付き)。",
    ),
    "agg_masked": (
        "sees only masked vectors (uniformly random to it) and learns the sum of the surviving sites' "
        "updates and their total example count, over at least {k} sites.",
        "マスクされたベクトル (集約者には一様乱数に見える) だけを見て、生き残った施設の更新の総和と症例数の"
        "合計を知る。総和は少なくとも {k} 施設にわたる。",
    ),
    "agg_noise_adder": (
        "adds the DP noise itself, so it sees the sum before noise{each}.",
        "DP ノイズを自ら加えるため、ノイズを加える前の総和を見る{each}。",
    ),
    "counts_visible": (", with each site's example count", "(各施設の症例数も見える)"),
    "each_clipped": (" (and every site's clipped update)", " (各施設のクリップ済み更新も見る)"),
    # -- each site
    "site_model": (
        "receives the new global model after each round; it sees no other site's update.",
        "各ラウンドの後に新しい全体モデルを受け取る。他施設の更新は見ない。",
    ),
    "site_ckks_sum": (
        "decrypts the weighted sum of at least {k} sites' updates and the total example count, and "
        "derives the new model from it; it sees no single other site's update.",
        "少なくとも {k} 施設の更新の重み付き総和と症例数の合計を復号し、そこから新しいモデルを作る。"
        "他の 1 施設だけの更新は見ない。",
    ),
    "site_histogram": (
        "also learns the histogram of the contributing sites' magnitude exponents (bounds = 'histogram').",
        "さらに参加施設の値の大きさ (指数) のヒストグラムを知る (bounds = 'histogram')。",
    ),
    # -- coalitions
    "coal_plain": (
        "nothing to collude for: the aggregator alone already sees every update.",
        "共謀の必要はない。集約者だけで全施設の更新が見える。",
    ),
    "coal_ckks": (
        "one site colluding with the aggregator can decrypt every other site's update and example count "
        "(collusion bound: none; all sites share the secret key).",
        "1 施設が集約者と共謀すれば、他のすべての施設の更新と症例数を復号できる (共謀の上限: なし。全施設が"
        "同じ秘密鍵を共有する)。",
    ),
    "coal_masked": (
        "the aggregator with up to {c} colluding sites learns only sums over at least {h} honest "
        "sites, never a single site's update.",
        "集約者と最大 {c} 施設が共謀しても、少なくとも {h} の正直な施設にわたる総和しか知り得ず、1 施設の"
        "更新は分からない。",
    ),
    "coal_masked_one": (
        "the aggregator with {c} colluding sites learns a single honest site's update when only {k} "
        "sites survive a round (the fewest survivors the code accepts leave {h} honest site).",
        "集約者と {c} 施設が共謀すると、ラウンドの生存施設が {k} しかない場合に正直な 1 施設の更新を知り"
        "得る (コードが受け入れる最少の生存施設数では正直な施設は {h} つ)。",
    ),
    "coal_masked_plus": (
        "the aggregator with up to {c} colluding sites learns only sums over at least {h} honest "
        "sites, except with probability {p} per round (Bell et al. 2020).",
        "集約者と最大 {c} 施設が共謀しても、少なくとも {h} の正直な施設にわたる総和しか知り得ない。"
        "ただし 1 ラウンドあたり確率 {p} で失敗する (Bell ら 2020)。",
    ),
    "coal_masked_plus_local": (
        "the aggregator with fewer than t = {t} colluding members in every neighbourhood "
        "learns only the sum (the failure probability is not computed by this version).",
        "どの近傍でも共謀する施設が t = {t} 未満なら、集約者は総和しか知り得ない (失敗確率は"
        "このバージョンでは計算されない)。",
    ),
    "coal_masked_beyond": (
        "{t} or more colluding sites together with the aggregator can unmask a single site.",
        "{t} 施設以上が集約者と共謀すると、1 施設のマスクを外せる。",
    ),
    "coal_masked_beyond_plus": (
        "{t} or more colluding members of one site's neighbourhood (its {holders} share "
        "holders) together with the aggregator can unmask that site.",
        "ある施設の近傍 ({holders} 個の分散片保有者) のうち {t} 施設以上が集約者と共謀すると、"
        "その施設のマスクを外せる。",
    ),
    "coal_dp_local": (
        "any coalition, all other sites and the aggregator included, still faces each {unit}'s "
        "(ε, δ) bound: the noise is added where the data is.",
        "他のすべての施設と集約者を含むどんな共謀に対しても、各{unit}の (ε, δ) 上限は成り立つ。"
        "ノイズはデータのある場所で加えられる。",
    ),
    "coal_dp_shares": (
        "a site colluding with the aggregator can decrypt other sites' noise shares, which carry only "
        "part of the noise: the (ε, δ) bound then does not hold for those sites' patients.",
        "集約者と共謀した施設は他施設のノイズ分担分を復号できる。それぞれはノイズの一部しか含まないため、"
        "その施設の患者について (ε, δ) 上限は成り立たない。",
    ),
    # -- anyone who sees the released models
    "pub_dp": (
        "every released model is (ε = {eps}, δ = {delta})-DP for {relation}.",
        "公開されるすべてのモデルは {relation} について (ε = {eps}, δ = {delta})-DP である。",
    ),
    "pub_no_dp": (
        "the models carry no formal privacy guarantee: membership inference against them is possible.",
        "モデルには形式的なプライバシー保証がない。モデルに対するメンバーシップ推論が可能である。",
    ),
    # -- adversary model
    "adv_trusted": (
        "The aggregator is trusted with what it sees; the guarantee is against everyone else.",
        "集約者は見るものについて信頼されている。保証はそれ以外のすべての者に対するものである。",
    ),
    "adv_none": (
        "No adversary is guarded against: this is the unprotected reference point.",
        "どの攻撃者にも対策していない。保護のない基準点である。",
    ),
    "adv_any": (
        "The guarantee needs no trusted party: it holds against an aggregator that deviates from the "
        "protocol, other sites and eavesdroppers.",
        "保証に信頼できる当事者は不要である。プロトコルから逸脱する集約者、他施設、盗聴者に対しても成り立つ。",
    ),
    "adv_semi_honest": (
        "The aggregator is honest-but-curious: it follows the protocol and reads everything it carries.",
        "集約者は「正直だが好奇心がある」(semi-honest) と仮定する。プロトコルに従い、運ぶものはすべて読む。",
    ),
    "adv_active": (
        "An active (lying) aggregator is covered with up to {c} colluding sites (signed keys and the "
        "consistency check).",
        "能動的に嘘をつく集約者にも、共謀施設が最大 {c} までなら対応する (署名付き鍵と整合性検査)。",
    ),
    "adv_active_not": (
        "An active aggregator that deviates from the protocol is not covered.",
        "プロトコルから逸脱する能動的な集約者には対応しない。",
    ),
    "adv_collusion": (
        "Collusion bound: {c} site(s) together with the aggregator.",
        "共謀の上限: 集約者と合わせて {c} 施設。",
    ),
    "adv_collusion_local": (
        "Collusion bound: fewer than t = {t} sites in any neighbourhood, together with the aggregator.",
        "共謀の上限: どの近傍でも t = {t} 施設未満 (集約者と合わせて)。",
    ),
    "adv_min": (
        "No sum over fewer than {k} sites is released: {who} withholds or refuses it before it happens.",
        "{k} 施設未満の総和は公開されない。{who}が事前に保留または拒否する。",
    ),
    "who_ckks": ("the aggregator (and every key-holding site)", "集約者 (と鍵を持つ各施設)"),
    "who_masked": ("the aggregator (it needs enough shares to unmask)", "集約者 (マスク解除に十分な分散片が必要)"),
    "who_plain": ("the run (federation.min_sites)", "実行設定 (federation.min_sites)"),
    "adv_dropout": (
        "Up to {d} of the {n} sites may drop out of a round; with fewer survivors the round releases nothing.",
        "{n} 施設のうち最大 {d} 施設がラウンドから脱落しても構わない。生存施設がそれより少なければ、その"
        "ラウンドは何も公開しない。",
    ),
    "adv_failure": (
        "Probability that the guarantee fails in a round: {p}; that the round aborts: {a}.",
        "1 ラウンドで保証が破れる確率: {p}。ラウンドが中止される確率: {a}。",
    ),
    # -- differential privacy
    "dp_eps": (
        "Every site: ε = {eps} at δ = {delta} over {rounds} rounds ({accountant} accountant; RDP gives "
        "ε = {eps_rdp}), noise multiplier σ = {sigma}.",
        "全施設: {rounds} ラウンド全体で δ = {delta} のとき ε = {eps} ({accountant} 会計; RDP では "
        "ε = {eps_rdp})、ノイズ乗数 σ = {sigma}。",
    ),
    "dp_eps_one": (
        "Every site: ε = {eps} at δ = {delta} over {rounds} rounds ({accountant} accountant), noise "
        "multiplier σ = {sigma}.",
        "全施設: {rounds} ラウンド全体で δ = {delta} のとき ε = {eps} ({accountant} 会計)、ノイズ乗数 σ = {sigma}。",
    ),
    "dp_eps_range": (
        "Sites: ε from {lo} to {hi} at δ = {delta} over {rounds} rounds ({accountant} accountant); per site below.",
        "各施設: {rounds} ラウンド全体で δ = {delta} のとき ε は {lo} から {hi} ({accountant} 会計)。"
        "施設ごとの値は下記。",
    ),
    "dp_target": (
        "Calibrated to the target ε ≤ {target} over all planned rounds.",
        "計画された全ラウンドで目標 ε ≤ {target} となるよう較正した。",
    ),
    "rel_add_remove_patient": ("one patient's records added or removed", "1 人の患者の記録の追加または削除"),
    "rel_zero_out_patient": ("one patient's records replaced by zeros", "1 人の患者の記録のゼロ置換"),
    "rel_replace_patient": ("one patient's records replaced by any others", "1 人の患者の記録の任意の置換"),
    "rel_add_remove_site": ("one site's whole contribution added or removed", "1 施設の寄与全体の追加または削除"),
    "rel_zero_out_site": ("one site's whole contribution replaced by zeros", "1 施設の寄与全体のゼロ置換"),
    "rel_replace_site": ("one site's whole data replaced by any other", "1 施設のデータ全体の任意の置換"),
    "dp_relation": ("Neighbouring relation: {relation}.", "隣接関係: {relation}。"),
    "dp_covers_local": (
        "It covers everything that leaves each site, every round, against anyone.",
        "各施設から出るすべてのもの (全ラウンド) を、誰に対しても保護する。",
    ),
    "dp_covers_central": (
        "It covers the released models, against everyone but the party that adds the noise ({adder}).",
        "公開されるモデルを、ノイズを加える当事者 ({adder}) 以外のすべての者に対して保護する。",
    ),
    "dp_covers_distributed": (
        "It covers the released aggregates, against everyone including the aggregator, "
        "provided at least {m} sites add their noise share honestly.",
        "少なくとも {m} 施設が正直にノイズの分担分を加える限り、公開される集約結果を集約者を含む"
        "すべての者に対して保護する。",
    ),
    "unit_patient": ("patient", "患者"),
    "unit_site": ("site", "施設"),
    # -- what is public
    "public_sizes": (
        "each site's number of training examples (dataset sizes)",
        "各施設の学習症例数 (データセットの大きさ)",
    ),
    "public_participation": (
        "which sites take part in each round, and who dropped out",
        "各ラウンドにどの施設が参加し、どの施設が脱落したか",
    ),
    "public_hyper": (
        "the noise multiplier σ, the clip norm C = {clip}, the sampling and the number of rounds",
        "ノイズ乗数 σ、クリップ上限 C = {clip}、サンプリング、ラウンド数",
    ),
    "public_meta": ("message sizes and timing", "メッセージの大きさと時刻"),
    # -- cryptography
    "he_params": (
        "CKKS preset '{preset}': N = {N}, coefficient moduli {moduli} bits (log2 Q = {Q}), scale 2^{scale}, "
        "{encryption} encryption: {sec}-bit classical security (HomomorphicEncryption.org standard, "
        "log2 Q ≤ {bound} at N = {N}).",
        "CKKS プリセット '{preset}': N = {N}、係数法 {moduli} ビット (log2 Q = {Q})、スケール 2^{scale}、"
        "{encryption}: 古典計算機に対して {sec} ビット安全 (HomomorphicEncryption.org 標準、N = {N} で "
        "log2 Q ≤ {bound})。",
    ),
    "enc_symmetric": ("symmetric (secret-key)", "共通鍵 (秘密鍵) 暗号化"),
    "enc_public-key": ("public-key", "公開鍵暗号化"),
    "mask_params": (
        "Pairwise masking: any {t} of {holders} share holders reconstruct a site's secrets; updates "
        "quantised to {bits} bits over [-{clip}, {clip}]; {graph}.",
        "ペアワイズ・マスキング: {holders} 個の分散片保有者のうち任意の {t} 個で施設の秘密を復元できる。"
        "更新は [-{clip}, {clip}] を {bits} ビットに量子化する。{graph}。",
    ),
    "graph_complete": ("every site masks with every other site", "全施設が互いにマスクを共有する"),
    "graph_sparse": ("each site masks with {k} random neighbours", "各施設は無作為な {k} 施設とだけマスクを共有する"),
    # -- not protected (derived)
    "np_no_dp": (
        "The released model carries no differential privacy: membership inference against the final model is possible.",
        "公開モデルに差分プライバシーはない。最終モデルに対するメンバーシップ推論が可能である。",
    ),
    "np_sum": (
        "The exact sum of the sites' updates is released to the {to}.",
        "各施設の更新の正確な総和が{to}に公開される。",
    ),
    "to_aggregator": ("aggregator", "集約者"),
    "to_sites": ("sites", "施設"),
    "np_poisoning": (
        "A malicious site can poison the model: nothing checks that an input is honest.",
        "悪意のある施設はモデルを汚染できる。入力が正直かどうかは検査されない。",
    ),
    "np_active": (
        "An aggregator that deviates from the protocol (active attacker) is outside the guarantee.",
        "プロトコルから逸脱する集約者 (能動的攻撃者) は保証の対象外である。",
    ),
    "np_metadata": (
        "Which sites take part, message sizes and timing are visible.",
        "どの施設が参加したか、メッセージの大きさと時刻は見える。",
    ),
    "np_trusted_adder": (
        "The party that adds the noise ({adder}) sees the sum before noise: against it the guarantee is not DP.",
        "ノイズを加える当事者 ({adder}) はノイズ前の総和を見る。その当事者に対しては DP による保証はない。",
    ),
    "np_plain": (
        "Every site's update is visible to the aggregator: gradient inversion can rebuild training records.",
        "各施設の更新が集約者に見える。勾配逆算で学習データを復元され得る。",
    ),
}

HEADINGS: dict[str, tuple[str, str]] = {
    "title": ("What {protocol} guarantees", "{protocol} が保証すること"),
    "config": ("At {n} sites, {rounds} rounds", "{n} 施設、{rounds} ラウンドの場合"),
    "aggregator": ("The aggregator", "集約者"),
    "site": ("Each site", "各施設"),
    "coalition": ("A coalition", "共謀"),
    "public": ("Anyone who sees the released models", "公開モデルを見る者"),
    "adversary": ("Adversary model", "攻撃者モデル"),
    "dp": ("Differential privacy", "差分プライバシー"),
    "public_info": ("Public (not protected by ε)", "公開情報 (ε で保護されない)"),
    "crypto": ("Cryptography", "暗号"),
    "not_protected": ("Not protected", "保護されないもの"),
    "spec_says": ("The spec also states (quoted from {source})", "仕様書の記載 (英語原文、{source} より)"),
    "assumptions": ("Assumptions", "前提"),
    "glossary": ("Terms", "用語"),
    "party": ("party", "当事者"),
    "learns": ("what it learns", "知り得ること"),
    "per_site": ("ε per site", "施設ごとの ε"),
    "none": ("none", "なし"),
    "not_recorded": ("not recorded", "記録なし"),
}


def _pick(entry: tuple[str, str], lang: str) -> str:
    return entry[1] if check_lang(lang) == "ja" else entry[0]


def render(key: str, params: dict[str, Any], lang: str) -> str:
    """The sentence of fact ``key`` in ``lang``. Params that name another phrase (``"@key"``) are rendered first."""
    try:
        template = PHRASES[key]
    except KeyError:
        raise KeyError(f"no phrase {key!r}; known phrases are {sorted(PHRASES)}") from None
    plain = {k: v for k, v in params.items() if not (isinstance(v, str) and v.startswith("@"))}
    values = {k: (_pick(PHRASES[v[1:]], lang).format(**plain) if k not in plain else v) for k, v in params.items()}
    return _pick(template, lang).format(**values)


def heading(key: str, lang: str, **params: Any) -> str:
    return _pick(HEADINGS[key], lang).format(**params)


def fmt_probability(p: float | None) -> str:
    """0, a plain number, or 2^x for tiny probabilities."""
    if p is None:
        return "–"
    if p <= 0:
        return "0"
    if p >= 1e-3:
        return f"{p:.3g}"
    return f"2^{math.log2(p):.1f}"
