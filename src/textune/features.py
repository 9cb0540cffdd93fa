"""Tabular features for the fusion head: numeric and categorical columns plus built-in text featurizers.

Every statistic (means, standard deviations, category vocabularies) is fitted on train only and saved with the run
as JSON, so prediction reproduces the same features exactly.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import numpy as np
import pandas as pd

from textune import _atomic
from textune.data.io import require_columns
from textune.errors import TextuneError
from textune.recipe import FeaturesConfig

# Units normalised to a base unit per kind: grams, millilitres, centimetres, items.
UNITS: dict[str, tuple[str, float]] = {
    "g": ("weight", 1.0),
    "gram": ("weight", 1.0),
    "grams": ("weight", 1.0),
    "gr": ("weight", 1.0),
    "kg": ("weight", 1000.0),
    "kilogram": ("weight", 1000.0),
    "kilograms": ("weight", 1000.0),
    "mg": ("weight", 0.001),
    "oz": ("weight", 28.3495),
    "ounce": ("weight", 28.3495),
    "ounces": ("weight", 28.3495),
    "lb": ("weight", 453.592),
    "lbs": ("weight", 453.592),
    "pound": ("weight", 453.592),
    "pounds": ("weight", 453.592),
    "fl oz": ("volume", 29.5735),
    "fl. oz": ("volume", 29.5735),
    "fluid ounce": ("volume", 29.5735),
    "fluid ounces": ("volume", 29.5735),
    "ml": ("volume", 1.0),
    "millilitre": ("volume", 1.0),
    "milliliter": ("volume", 1.0),
    "l": ("volume", 1000.0),
    "liter": ("volume", 1000.0),
    "litre": ("volume", 1000.0),
    "liters": ("volume", 1000.0),
    "litres": ("volume", 1000.0),
    "gallon": ("volume", 3785.41),
    "gallons": ("volume", 3785.41),
    "quart": ("volume", 946.353),
    "pint": ("volume", 473.176),
    "cm": ("length", 1.0),
    "mm": ("length", 0.1),
    "m": ("length", 100.0),
    "inch": ("length", 2.54),
    "inches": ("length", 2.54),
    "in": ("length", 2.54),
    "ft": ("length", 30.48),
    "feet": ("length", 30.48),
    "count": ("count", 1.0),
    "ct": ("count", 1.0),
    "pieces": ("count", 1.0),
    "piece": ("count", 1.0),
    "pcs": ("count", 1.0),
    "pc": ("count", 1.0),
    "each": ("count", 1.0),
    "pack": ("count", 1.0),
}
KINDS = ("weight", "volume", "length", "count")
_UNIT_RE = "|".join(sorted((re.escape(u) for u in UNITS), key=len, reverse=True))
_VALUE = re.compile(r"^\s*Value:\s*([0-9]*\.?[0-9]+)", re.I | re.M)
_UNIT = re.compile(r"^\s*Unit:\s*(.+?)\s*$", re.I | re.M)
_INLINE = re.compile(rf"([0-9]*\.?[0-9]+)\s*-?\s*({_UNIT_RE})\b", re.I)
_PACK = re.compile(r"(?:pack|set|box|case|bundle)\s+of\s+([0-9]+)|([0-9]+)\s*[- ]?(?:pack|pk|count|ct)\b", re.I)
TEXT_STATS = ("chars", "words", "digits", "capitals_ratio", "mean_word_length", "type_token_ratio", "sentences")
QUANTITY_FEATURES = ("quantity_base", "pack_count", "total_quantity", "has_quantity") + tuple(
    f"unit_{k}" for k in KINDS
)


def text_stats(text: str) -> list[float]:
    words = text.split()
    letters = [c for c in text if c.isalpha()]
    return [
        math.log1p(len(text)),
        math.log1p(len(words)),
        math.log1p(sum(c.isdigit() for c in text)),
        sum(c.isupper() for c in letters) / len(letters) if letters else 0.0,
        float(np.mean([len(w) for w in words])) if words else 0.0,
        len({w.lower() for w in words}) / len(words) if words else 0.0,
        math.log1p(len(re.findall(r"[.!?]+(?:\s|$)", text)) or (1 if text.strip() else 0)),
    ]


def _unit(name: str) -> tuple[str, float] | None:
    return UNITS.get(re.sub(r"\s+", " ", name.strip().lower().rstrip(".")))


def quantities(text: str) -> list[float]:
    """Parses "Value: 72.0 / Unit: Fl Oz" lines, else the first "12 Ounce" in the text, and "(Pack of 6)"."""
    value, kind_scale = None, None
    v, u = _VALUE.search(text), _UNIT.search(text)
    if v:
        value = float(v.group(1))
        kind_scale = _unit(u.group(1)) if u else None
    if kind_scale is None:
        m = _INLINE.search(text)
        if m:
            value, kind_scale = float(m.group(1)), _unit(m.group(2))
    pack = 1.0
    p = _PACK.search(text)
    if p:
        pack = float(p.group(1) or p.group(2))
    kind, scale = kind_scale if kind_scale else ("other", 1.0)
    base = (value or 0.0) * scale
    # A "Value:" line already holds the total (12 Ounce x 6 = 72 Fl Oz); an inline quantity is per item.
    total = base if v else base * pack
    onehot = [1.0 if kind == k else 0.0 for k in KINDS]
    return [math.log1p(base), math.log1p(pack), math.log1p(total), 1.0 if value is not None else 0.0, *onehot]


def text_field(text: str, key: str) -> str | None:
    m = re.search(rf"^\s*{re.escape(key)}\s*:\s*(.+?)\s*$", text, re.I | re.M)
    return m.group(1) if m else None


_ENCODERS: dict[str, object] = {}  # loaded once per process: train, validation and test reuse them


def embedding_features(spec, df: pd.DataFrame, texts: list[str], path: str) -> np.ndarray:
    """Frozen sentence embeddings of one text field, cached on disk by texts + model + settings."""
    import hashlib

    from textune.data.io import render_texts
    from textune.data.tokenize import cache_dir
    from textune.encoder import embed_texts, load_encoder

    if spec.text is not None:
        texts = render_texts(df, spec.text, path, key="features.embeddings.text")
    if spec.model not in _ENCODERS:
        _ENCODERS[spec.model] = load_encoder(spec.model)
    encoder = _ENCODERS[spec.model]
    # keyed by the weights' fingerprint, not the model's name: a directory retrained in place gives new features
    h = hashlib.sha256(json.dumps(spec.model_dump(), sort_keys=True).encode() + encoder.fingerprint.encode())
    for t in texts:
        h.update(t.encode("utf-8", "surrogatepass") + b"\x00")
    cache = cache_dir() / "embeddings" / f"{h.hexdigest()[:32]}.npy"
    if cache.is_file():
        try:
            return np.load(cache, allow_pickle=False)
        except (OSError, ValueError):
            cache.unlink(missing_ok=True)
    emb = embed_texts(
        encoder,
        texts,
        pooling=spec.pooling,
        normalize=spec.normalize,
        prefix=spec.prefix,
        max_length=spec.max_length,
    )
    try:
        _atomic.write_with(cache, lambda p: np.save(open(p, "wb"), emb, allow_pickle=False))
    except OSError:
        pass  # an unwritable cache only costs time
    return emb


class Featurizer:
    """Fit on train, then turn any split into ``(numeric float32 [n, d], categorical int64 [n, c])``."""

    def __init__(self, cfg: FeaturesConfig):
        self.cfg = cfg
        self.state: dict[str, Any] = {}

    # -- raw features ----------------------------------------------------------------------------------------
    def _raw_numeric(self, df: pd.DataFrame, texts: list[str], path: str) -> tuple[np.ndarray, list[str]]:
        cols, names = [], []
        if self.cfg.numeric:
            require_columns(df, self.cfg.numeric, path, "features.numeric")
            for c in self.cfg.numeric:
                values = pd.to_numeric(df[c], errors="coerce").to_numpy(dtype=np.float64, copy=True)
                values[~np.isfinite(values)] = np.nan
                cols.append(values)
                names.append(c)
        if self.cfg.text_stats:
            cols.extend(np.asarray([text_stats(t) for t in texts], dtype=np.float64).T.reshape(len(TEXT_STATS), -1))
            names.extend(f"text_{n}" for n in TEXT_STATS)
        if self.cfg.quantities:
            q = np.asarray([quantities(t) for t in texts], dtype=np.float64).reshape(-1, len(QUANTITY_FEATURES))
            cols.extend(q.T)
            names.extend(QUANTITY_FEATURES)
        raw = np.stack(cols, axis=1) if cols else np.zeros((len(df), 0))
        return raw, names

    def _raw_categorical(self, df: pd.DataFrame, texts: list[str], path: str) -> tuple[list[list[str]], list[str]]:
        cols, names = [], []
        if self.cfg.categorical:
            require_columns(df, self.cfg.categorical, path, "features.categorical")
            for c in self.cfg.categorical:
                cols.append(["" if pd.isna(v) else str(v).strip() for v in df[c]])
                names.append(c)
        for key in self.cfg.text_fields:
            cols.append([text_field(t, key) or "" for t in texts])
            names.append(f"field:{key}")
        return cols, names

    # -- fit / transform -------------------------------------------------------------------------------------
    def fit(self, df: pd.DataFrame, texts: list[str], path: str) -> Featurizer:
        raw, names = self._raw_numeric(df, texts, path)
        mean = np.nanmean(raw, axis=0) if raw.size else np.zeros(0)
        mean = np.where(np.isfinite(mean), mean, 0.0)
        std = np.nanstd(raw, axis=0) if raw.size else np.zeros(0)
        std = np.where(np.isfinite(std) & (std > 1e-12), std, 1.0)
        cats, cat_names = self._raw_categorical(df, texts, path)
        vocabs = []
        for values in cats:
            # Categories seen once are folded into the unseen bucket: an embedding of one row learns nothing.
            counts = pd.Series(values).value_counts()
            vocabs.append(sorted(v for v, n in counts.items() if n >= 2 and v != ""))
        self.state = {
            "numeric_names": names,
            "mean": mean.tolist(),
            "std": std.tolist(),
            "categorical_names": cat_names,
            "vocabs": vocabs,
        }
        self.state["embedding_dims"] = [int(e.shape[1]) for e in self._embeddings(df, texts, path)]
        return self

    def transform(self, df: pd.DataFrame, texts: list[str], path: str) -> tuple[np.ndarray, np.ndarray]:
        raw, _ = self._raw_numeric(df, texts, path)
        mean, std = np.asarray(self.state["mean"]), np.asarray(self.state["std"])
        missing = np.isnan(raw)
        z = np.where(missing, 0.0, (raw - mean) / std) if raw.size else raw
        # one missing-indicator per numeric column: imputing the mean alone would hide that a value was absent
        numeric = np.concatenate([z, missing.astype(np.float64)], axis=1) if raw.size else np.zeros((len(df), 0))
        numeric = np.clip(numeric, -10, 10)
        embeddings = self._embeddings(df, texts, path)
        if embeddings:
            numeric = np.concatenate([numeric, *embeddings], axis=1)
        cats, _ = self._raw_categorical(df, texts, path)
        index = [{v: i + 1 for i, v in enumerate(vocab)} for vocab in self.state["vocabs"]]  # 0 = unseen/missing
        categorical = np.zeros((len(df), len(cats)), dtype=np.int64)
        for j, values in enumerate(cats):
            categorical[:, j] = [index[j].get(v, 0) for v in values]
        return numeric.astype(np.float32), categorical

    def _embeddings(self, df: pd.DataFrame, texts: list[str], path: str) -> list[np.ndarray]:
        return [embedding_features(spec, df, texts, path) for spec in self.cfg.embeddings]

    @property
    def numeric_dim(self) -> int:
        return 2 * len(self.state["numeric_names"]) + sum(self.state.get("embedding_dims", []))

    @property
    def cardinalities(self) -> list[int]:
        return [len(v) + 1 for v in self.state["vocabs"]]

    def to_dict(self) -> dict[str, Any]:
        return self.state

    @classmethod
    def from_dict(cls, cfg: FeaturesConfig, state: dict[str, Any]) -> Featurizer:
        if not isinstance(state, dict) or "mean" not in state:
            raise TextuneError("features.json: malformed feature statistics; the run directory is corrupted")
        f = cls(cfg)
        f.state = state
        return f


def attach_features(featurizer: Featurizer, splits: dict) -> None:
    """Fits on the train split only, then sets ``split.extras`` (numeric, categorical) on every split."""
    train = splits["train"]
    featurizer.fit(train.df, train.texts, train.path)
    for split in splits.values():
        numeric, categorical = featurizer.transform(split.df, split.texts, split.path)
        split.extras = {"numeric": numeric, "categorical": categorical}
