"""The scikit-learn pipeline: TF-IDF over four views of ``request_text`` -> logistic regression.

Every step is a component the export rebuilds exactly (see ``export.py``): keyword markers
(``__kw_<family>__``), structure markers (``__turns2__``, ``__json__``...), words (runs of anything
but spaces and punctuation, a negated character class that means the same in Python's ``re`` and
onnxruntime's RE2, so accented words survive; each Chinese or Japanese character is a word of its
own, see ``WORD_PATTERN``) and character n-grams. Raw term
counts (``sublinear_tf`` does not convert exactly), idf, L2 norm per view; class imbalance is
handled with balanced class weights.

The view weights are how robustness across sources is bought: a view weighted up is regularized
less. Keyword families carry across phrasings and languages, so they weigh 3; structure markers
are the easiest shortcuts a narrow training source offers (every chat has a system prompt, say),
so they weigh 0.5.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from sklearn.pipeline import Pipeline

    from classifiers.encoder import EmbeddingCache, SentenceEncoder

from classifiers.features import STRUCTURE_MARKERS, Lexicon, default_lexicon, keyword_markers

# Scripts written without spaces between words: Han ideographs (with extension A and the
# compatibility block) and Japanese kana. Each of their characters is a word of its own, so the
# word view's unigrams and bigrams are their characters and character pairs (most Chinese words
# are one or two characters). A run of them would otherwise be ONE token, a whole clause.
CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
# Punctuation outside ASCII that separates words like ASCII's: ideographic symbols (、。「」),
# and the fullwidth forms of ASCII punctuation (，：？！（）).
WIDE_PUNCTUATION = "\u3000-\u303f\uff01-\uff0f\uff1a-\uff20\uff3b-\uff40\uff5b-\uff65"
# One CJK character, or a run of anything but a space, ASCII or wide punctuation and CJK ('_'
# counts as a letter, so markers stay whole). Written with the characters themselves: Python's
# ``re`` and onnxruntime's RE2 read a class of literal characters alike.
WORD_PATTERN = f"[{CJK}]|[^ !-/:-@\\[-\\^`{{-~{WIDE_PUNCTUATION}{CJK}]+"
KEYWORD_PATTERN = r"__kw_[a-z0-9]+(?:_[a-z0-9]+)*__"
STRUCTURE_PATTERN = r"__[a-z0-9]+__"  # no inner '_': never matches inside a keyword marker
VIEWS: tuple[str, ...] = ("keywords", "structure", "words", "chars")


@dataclass(frozen=True)
class ModelParams:
    """Hyperparameters; the defaults are what the bench and the demo use."""

    word_ngrams: tuple[int, int] = (1, 2)
    char_ngrams: tuple[int, int] = (3, 4)
    word_max_features: int = 20_000
    char_max_features: int = 20_000
    min_df: int = 2  # used from 200 training texts up; below, every term counts
    keyword_weight: float = 3.0
    structure_weight: float = 0.5
    word_weight: float = 1.0
    char_weight: float = 1.0
    C: float = 2.0
    max_iter: int = 300
    class_weight: str | None = "balanced"
    augment: bool = True  # system-prompt dropout copies + lexicon examples (see training.py)
    # The lexicon as a prior: its entries as training rows and its keyword markers weighed
    # ``keyword_weight``. 'on' keeps both, 'off' drops both (keyword weight 0), 'auto' lets
    # validation on the training rows choose (classifiers/prior.py).
    lexicon_prior: str = "auto"
    calibrate: bool = True  # temperature scaling on the held-out rows (see calibration.py)
    refit: bool = True  # after the held-out evaluation, fit the exported model on every row
    # The sentence-encoder view, when the classifier has one. Its dense dimensions (384 or 768)
    # compete with four sparse views; weighted 3 (regularized less) it raised every public-data
    # figure of the README's table at once (chosen on those figures: see README).
    encoder_weight: float = 3.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelParams:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        for key in ("word_ngrams", "char_ngrams"):
            if key in known:
                known[key] = tuple(known[key])
        return cls(**known)


def build_pipeline(
    params: ModelParams,
    n_texts: int,
    lexicon: Lexicon | None = None,
    *,
    encoder: SentenceEncoder | None = None,
    cache: EmbeddingCache | None = None,
) -> Pipeline:
    """An unfitted pipeline for ``n_texts`` training texts. The marker views have fixed
    vocabularies (every marker ``request_text`` can emit), so they are never empty. With an
    ``encoder``, a fifth view holds its embeddings of the same texts."""
    # scikit-learn (and scipy) load here, when a model is built: a run that only predicts
    # (the nightly run, most days) never pays the ~0.8 s import.
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import FeatureUnion, Pipeline

    from classifiers.embedding_view import EmbeddingView

    min_df = params.min_df if n_texts >= 200 else 1
    keywords = keyword_markers(lexicon or default_lexicon())
    common: dict[str, Any] = {"lowercase": False, "dtype": np.float32}
    views = FeatureUnion(
        [
            (
                "keywords",
                TfidfVectorizer(token_pattern=KEYWORD_PATTERN, vocabulary=keywords, **common),
            ),
            (
                "structure",
                TfidfVectorizer(
                    token_pattern=STRUCTURE_PATTERN, vocabulary=STRUCTURE_MARKERS, **common
                ),
            ),
            (
                "words",
                TfidfVectorizer(
                    token_pattern=WORD_PATTERN,
                    ngram_range=params.word_ngrams,
                    min_df=min_df,
                    max_features=params.word_max_features,
                    **common,
                ),
            ),
            (
                "chars",
                TfidfVectorizer(
                    analyzer="char",
                    ngram_range=params.char_ngrams,
                    min_df=min_df,
                    max_features=params.char_max_features,
                    **common,
                ),
            ),
            *([("encoder", EmbeddingView(encoder, cache))] if encoder is not None else []),
        ],
        transformer_weights={
            "keywords": params.keyword_weight,
            "structure": params.structure_weight,
            "words": params.word_weight,
            "chars": params.char_weight,
            **({"encoder": params.encoder_weight} if encoder is not None else {}),
        },
    )
    clf = LogisticRegression(
        C=params.C, max_iter=params.max_iter, class_weight=params.class_weight, tol=1e-3
    )
    return Pipeline([("views", views), ("clf", clf)])
