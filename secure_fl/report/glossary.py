"""The terms a reader of a guarantee or a report meets, in English and Japanese.

Both languages of a statement link to the same entry (by key), so the English and the Japanese
versions explain a term the same way. The README's glossary is :func:`markdown` of this table.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Term", "TERMS", "LANGS", "term", "markdown", "check_lang"]

LANGS = ("en", "ja")


@dataclass(frozen=True)
class Term:
    key: str
    en: tuple[str, str]  # (term, definition)
    ja: tuple[str, str]

    def text(self, lang: str) -> tuple[str, str]:
        return self.ja if check_lang(lang) == "ja" else self.en


def check_lang(lang: str) -> str:
    if lang not in LANGS:
        raise ValueError(f"--lang: expected one of {list(LANGS)}, found {lang!r}")
    return lang


TERMS: dict[str, Term] = {
    t.key: t
    for t in (
        Term(
            "epsilon",
            (
                "ε (epsilon)",
                "The privacy loss bound of differential privacy: whatever an observer concludes about one "
                "person (or site) from the output changes by at most a factor e^ε whether or not that "
                "person's data was used. Smaller is more private; ε ≤ 1 is strong, ε around 8 is weak.",
            ),
            (
                "ε (イプシロン)",
                "差分プライバシーのプライバシー損失の上限。ある個人 (または施設) のデータを使っても使わなくても、"
                "出力から観察者が導く結論は高々 e^ε 倍しか変わらない。小さいほど強い保護であり、ε ≤ 1 は強く、"
                "ε が 8 程度なら弱い。",
            ),
        ),
        Term(
            "delta",
            (
                "δ (delta)",
                "The probability with which the ε bound may fail. It must be far smaller than one over the "
                "number of people protected (here 1e-5 or less).",
            ),
            (
                "δ (デルタ)",
                "ε の上限が成り立たなくてもよい確率。保護対象の人数の逆数よりはるかに小さくなければならない "
                "(ここでは 1e-5 以下)。",
            ),
        ),
        Term(
            "rdp",
            (
                "RDP (Rényi DP)",
                "An accountant that composes many noisy steps through Rényi divergences and converts the "
                "total to (ε, δ) (Mironov 2017). Safe, slightly loose.",
            ),
            (
                "RDP (レニー差分プライバシー)",
                "多数のノイズ付きステップをレニー・ダイバージェンスで合成し、合計を (ε, δ) に"
                "変換する会計手法 (Mironov 2017)。安全側だがやや緩い。",
            ),
        ),
        Term(
            "pld",
            (
                "PLD (privacy loss distribution)",
                "An accountant that composes the exact distribution of the privacy "
                "loss numerically (Koskela et al. 2020, Google dp_accounting); usually "
                "the tightest valid ε, still an upper bound.",
            ),
            (
                "PLD (プライバシー損失分布)",
                "プライバシー損失の分布そのものを数値的に合成する会計手法 (Koskela ら 2020、"
                "Google dp_accounting)。通常もっとも厳密で、なお上限値である。",
            ),
        ),
        Term(
            "prv",
            (
                "PRV (privacy random variable)",
                "Opacus's accountant on the same idea as PLD (Gopi, Lee, Wutschitz "
                "2021); used here to cross-check the ledger's ε.",
            ),
            (
                "PRV (プライバシー確率変数)",
                "PLD と同じ考え方による Opacus の会計手法 (Gopi, Lee, Wutschitz 2021)。"
                "ここでは台帳の ε の照合に用いる。",
            ),
        ),
        Term(
            "neighbouring",
            (
                "neighbouring relation",
                "Which two datasets ε compares: e.g. with or without one patient's records "
                "(patient-level) or with or without one hospital's whole contribution "
                "(site-level). An ε is only comparable with another under the same relation.",
            ),
            (
                "隣接関係",
                "ε が比較する 2 つのデータセットの関係。例えば 1 人の患者の記録がある場合とない場合 (患者単位)、"
                "または 1 施設の寄与全体がある場合とない場合 (施設単位)。同じ隣接関係の ε 同士でなければ比較できない。",
            ),
        ),
        Term(
            "secagg",
            (
                "SecAgg / SecAgg+",
                "Secure aggregation by pairwise masking (Bonawitz et al. 2017): each site adds random "
                "masks that cancel in the sum, so the aggregator learns only the sum, and dropped "
                "sites are recovered from secret shares. SecAgg+ (Bell et al. 2020) masks only with a "
                "few random neighbours, at a small stated failure probability.",
            ),
            (
                "SecAgg / SecAgg+",
                "ペアワイズ・マスキングによる安全な集約 (Bonawitz ら 2017)。各施設は総和で打ち消し合う"
                "乱数マスクを加えるため、集約者は総和しか知り得ない。脱落した施設は秘密分散から復元する。"
                "SecAgg+ (Bell ら 2020) は少数の無作為な隣接施設とだけマスクを共有し、明示された小さな"
                "失敗確率を伴う。",
            ),
        ),
        Term(
            "ckks",
            (
                "CKKS",
                "A homomorphic encryption scheme for approximate real numbers (Cheon, Kim, Kim, Song 2017): the "
                "aggregator adds ciphertexts without being able to decrypt them. Its security rests on the RLWE "
                "problem; the parameters are checked against the HomomorphicEncryption.org standard.",
            ),
            (
                "CKKS",
                "近似実数のための準同型暗号方式 (Cheon, Kim, Kim, Song 2017)。集約者は暗号文を復号できないまま"
                "足し合わせる。安全性は RLWE 問題に基づき、パラメータは HomomorphicEncryption.org 標準で確認する。",
            ),
        ),
        Term(
            "symmetric",
            (
                "symmetric vs public-key encryption",
                "Symmetric: the sites that hold the secret key encrypt with it "
                "(faster, less noise). Public-key: anyone with the public key can "
                "encrypt, including an aggregator that could then forge a "
                "contribution.",
            ),
            (
                "共通鍵暗号と公開鍵暗号",
                "共通鍵 (対称) 方式では秘密鍵を持つ施設がその鍵で暗号化する (高速で雑音が少ない)。"
                "公開鍵方式では公開鍵を持つ誰もが暗号化でき、集約者も偽の寄与を作れてしまう。",
            ),
        ),
        Term(
            "flooding",
            (
                "noise flooding",
                "Extra Gaussian noise added to a CKKS decryption before it leaves the key holders, so "
                "that the released value does not reveal the secret key (Li-Micciancio attack; "
                "Li, Micciancio, Schultz, Sorrell 2022).",
            ),
            (
                "ノイズフラッディング",
                "CKKS の復号結果を鍵保有者の外へ出す前に加える追加のガウス雑音。公開された値から秘密鍵が"
                "推定されるのを防ぐ (Li-Micciancio 攻撃; Li, Micciancio, Schultz, Sorrell 2022)。",
            ),
        ),
        Term(
            "semi_honest",
            (
                "honest-but-curious (semi-honest)",
                "A party that follows the protocol but reads and keeps everything it "
                "sees. An active (malicious) party may also lie and send forged "
                "messages.",
            ),
            (
                "正直だが好奇心のある (semi-honest)",
                "プロトコルには従うが、見たものはすべて読み、保存する当事者。"
                "能動的 (悪意のある) 当事者は、さらに嘘をつき偽のメッセージを送り得る。",
            ),
        ),
        Term(
            "collusion",
            (
                "collusion bound",
                "The largest group of sites that may pool what they saw with the aggregator while the "
                "guarantee still holds.",
            ),
            ("共謀の上限", "見たものを集約者と共有しても保証が成り立つ、施設の集まりの最大の大きさ。"),
        ),
    )
}


def term(key: str, lang: str) -> tuple[str, str]:
    """(term, definition) of ``key`` in ``lang``; unknown keys fail with the known ones."""
    try:
        return TERMS[key].text(lang)
    except KeyError:
        raise KeyError(f"unknown glossary term {key!r}; known terms are {sorted(TERMS)}") from None


def markdown(lang: str = "en") -> str:
    """The glossary as a Markdown list (for the README)."""
    return "\n".join(f"- **{t}**: {d}" for t, d in (term(k, lang) for k in TERMS))
