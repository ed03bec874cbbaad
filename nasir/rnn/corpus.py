"""Language-model data: `ptb:PATH` and the embedded corpus, batchified for truncated BPTT (docs/recurrent.md).

`ptb:PATH` reads PATH/ptb.train.txt, ptb.valid.txt, ptb.test.txt: words split on whitespace, `<eos>`
appended to every line, the vocabulary in order of first appearance over train, valid, test (the
authors' data.Corpus). `embedded` (the default) is generated here, needing no download: sentences drawn
from a small fixed probabilistic grammar with a fixed seed, so a language model can learn it (agreement
between subject and verb, determiners before nouns, optional adjectives and prepositional phrases).
"""

from __future__ import annotations

import random
from pathlib import Path

import attrs
import torch

EOS = "<eos>"


@attrs.frozen
class Corpus:
    words: tuple[str, ...]  # the vocabulary, id -> word
    train: torch.Tensor  # 1-D long tensors of word ids
    valid: torch.Tensor
    test: torch.Tensor
    name: str = "embedded"

    @property
    def tokens(self) -> int:
        return len(self.words)


class CorpusError(ValueError):
    pass


def _read_ptb(root: Path) -> Corpus:
    files = [root / f"ptb.{part}.txt" for part in ("train", "valid", "test")]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise CorpusError(f"ptb data: missing {', '.join(missing)} (expected ptb.train.txt, ptb.valid.txt, ptb.test.txt)")
    vocab: dict[str, int] = {}
    parts = []
    for f in files:
        ids = []
        for line in f.read_text(encoding="utf-8").splitlines():
            for w in line.split() + [EOS]:
                ids.append(vocab.setdefault(w, len(vocab)))
        parts.append(torch.tensor(ids, dtype=torch.long))
    if any(p.numel() < 2 for p in parts):
        raise CorpusError(f"ptb data in {root}: every split needs at least two words")
    return Corpus(tuple(vocab), parts[0], parts[1], parts[2], name=f"ptb:{root}")


# ---- the embedded corpus: a fixed probabilistic grammar --------------------------------------------------------
_NOUNS_SG = ("cat", "dog", "bird", "child", "farmer", "teacher", "river", "city", "house", "tree", "market", "ship")
_NOUNS_PL = ("cats", "dogs", "birds", "children", "farmers", "teachers", "rivers", "cities", "houses", "trees", "markets", "ships")
_VERBS_SG = ("sees", "likes", "follows", "finds", "watches", "builds", "carries", "paints")
_VERBS_PL = ("see", "like", "follow", "find", "watch", "build", "carry", "paint")
_INTRANS_SG = ("sleeps", "runs", "sings", "waits", "grows")
_INTRANS_PL = ("sleep", "run", "sing", "wait", "grow")
_ADJ = ("old", "small", "green", "quiet", "bright", "heavy", "happy", "cold")
_PREP = ("near", "behind", "under", "beside", "over")
_DET_SG = ("the", "a", "this", "every")
_DET_PL = ("the", "some", "these", "many")
_ADV = ("today", "again", "slowly", "often")


def _np(rng: random.Random, plural: bool, depth: int) -> list[str]:
    det = rng.choice(_DET_PL if plural else _DET_SG)
    out = [det]
    if rng.random() < 0.35:
        out.append(rng.choice(_ADJ))
    out.append(rng.choice(_NOUNS_PL if plural else _NOUNS_SG))
    if depth < 2 and rng.random() < 0.2:
        out += [rng.choice(_PREP)] + _np(rng, rng.random() < 0.4, depth + 1)
    return out


def _sentence(rng: random.Random) -> list[str]:
    plural = rng.random() < 0.4
    words = _np(rng, plural, 0)
    if rng.random() < 0.3:
        words.append(rng.choice(_INTRANS_PL if plural else _INTRANS_SG))
    else:
        words.append(rng.choice(_VERBS_PL if plural else _VERBS_SG))
        words += _np(rng, rng.random() < 0.4, 0)
    if rng.random() < 0.25:
        words.append(rng.choice(_ADV))
    if rng.random() < 0.15:
        words += ["and"] + _sentence(rng)
    return words


EMBEDDED_SEED = 13
EMBEDDED_SENTENCES = (3000, 300, 300)  # train, valid, test: about 25k / 2.5k / 2.5k words


def embedded_corpus() -> Corpus:
    """The embedded corpus: the same sentences on every machine (Python's Mersenne Twister, fixed seed)."""
    rng = random.Random(EMBEDDED_SEED)
    vocab: dict[str, int] = {}
    for w in (EOS, "and", *_DET_SG, *_DET_PL, *_ADJ, *_NOUNS_SG, *_NOUNS_PL, *_VERBS_SG, *_VERBS_PL, *_INTRANS_SG, *_INTRANS_PL, *_PREP, *_ADV):
        vocab.setdefault(w, len(vocab))
    parts = []
    for n in EMBEDDED_SENTENCES:
        ids = []
        for _ in range(n):
            ids += [vocab[w] for w in _sentence(rng)] + [vocab[EOS]]
        parts.append(torch.tensor(ids, dtype=torch.long))
    return Corpus(tuple(vocab), parts[0], parts[1], parts[2], name="embedded")


def load(data: str) -> Corpus:
    """`embedded` or `ptb:PATH`; CorpusError (a message for the user) otherwise."""
    if data in ("embedded", "default", ""):
        return embedded_corpus()
    if data.startswith("ptb:"):
        return _read_ptb(Path(data[4:]).expanduser())
    raise CorpusError(f"unknown language-model data '{data}': use 'embedded' or 'ptb:PATH'")


def batchify(ids: torch.Tensor, batch: int) -> torch.Tensor:
    """[N] -> [N // batch, batch]: `batch` contiguous streams side by side, the remainder dropped (the authors')."""
    n = ids.numel() // batch
    if n < 2:
        raise CorpusError(f"{ids.numel()} words cannot fill batch size {batch} with at least two steps")
    return ids[: n * batch].view(batch, n).t().contiguous()


def get_batch(source: torch.Tensor, i: int, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Input rows i .. i+L-1 and the next-word targets (flattened), L = min(seq_len, rows - 1 - i)."""
    L = min(seq_len, source.size(0) - 1 - i)
    return source[i : i + L], source[i + 1 : i + 1 + L].reshape(-1)
