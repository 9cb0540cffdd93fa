"""ONNX export of a saved model directory, for CPU deployments under ONNX Runtime (``textune export --onnx``).

The graph takes the tokenizer's outputs (``input_ids``, ``attention_mask`` and, where the model reads them,
``token_type_ids``; int64, any batch size and sequence length) and returns ``logits``: the same numbers the PyTorch
model computes in fp32, before the task's post-processing (softmax, calibration, thresholds). ``--int8`` adds a
dynamically quantised copy (int8 weights, activations quantised on the fly), smaller and faster on CPUs.

Models with tabular features are not covered: their inputs are computed by textune's featurizer, not a tokenizer.
onnx, onnxscript (the torch.export-based exporter) and onnxruntime are optional: imported inside functions only.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from textune.errors import TextuneError

ONNX_FILE = "model.onnx"
INT8_FILE = "model.int8.onnx"
OUTPUT = "logits"
MISSING = "--onnx needs onnx, onnxscript and onnxruntime; pip install 'textune[onnx]'"
# protobuf cannot hold a model past 2 GiB: bigger weights go to a ``<file>.data`` file beside the graph
_EXTERNAL_BYTES = 1_800_000_000
# the exported graph must reproduce PyTorch's logits on the sample batch to this (relative to their scale)
_CHECK_TOLERANCE = 1e-3


def require_onnx() -> None:
    """Raises:
    TextuneError: the optional packages are missing (one line naming the extra)."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError:
        raise TextuneError(MISSING) from None


def check_exportable(model_dir: str | Path) -> None:
    """Refuses a model whose head reads tabular features: its inputs do not come from the tokenizer alone.

    Raises:
        TextuneError: naming the fix.
    """
    from textune.models.fusion import FUSION_JSON

    spec_path = Path(model_dir) / FUSION_JSON
    if not spec_path.is_file():
        return
    try:
        spec = json.loads(spec_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        raise TextuneError(f"{spec_path}: unreadable; the run directory is corrupted") from None
    if spec.get("numeric_dim", 0) or spec.get("cardinalities"):
        raise TextuneError(
            "--onnx: this run's model reads tabular features (the recipe's features: section), which the ONNX "
            "export does not cover; drop --onnx (textune predict and serve use them) or train without features"
        )


class _Logits(torch.nn.Module):
    """The model as a function of the tokenizer's tensors to its logits tensor (what the exporter traces)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            kwargs["token_type_ids"] = token_type_ids
        return self.model(**kwargs).logits


def input_names(model: torch.nn.Module, tokenizer) -> list[str]:
    """``input_ids`` and ``attention_mask``, plus ``token_type_ids`` where the model's forward takes them, its config
    has token types (``type_vocab_size`` > 0; DeBERTa-v3 has none) and its tokenizer emits them (as textune feeds
    them: RoBERTa's tokenizer does not, and the model then reads its zero default)."""
    names = ["input_ids", "attention_mask"]
    takes = "token_type_ids" in inspect.signature(model.forward).parameters
    types = getattr(getattr(model, "config", None), "type_vocab_size", 0) or 0
    if takes and types > 0 and "token_type_ids" in getattr(tokenizer, "model_input_names", []):
        names.append("token_type_ids")
    return names


@contextlib.contextmanager
def _quiet():
    """The exporter's notes (deprecations, torchvision missing, axis renames) are not the user's business."""
    # the root logger too: the quantiser's advice ("consider pre-processing") goes through logging.warning
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._export", "onnxscript")]
    loggers.append(logging.getLogger())
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def onnx_session(onnx_path: str | Path, threads: int | None = None):
    """An ONNX Runtime CPU session on ``onnx_path``; ``threads`` caps its intra-op threads (None: the runtime's
    default, one per core)."""
    require_onnx()
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])


def onnx_logits(onnx_path: Any, encoded_inputs: Mapping[str, Any], threads: int | None = None) -> np.ndarray:
    """Logits of an exported model for one padded batch.

    Args:
        onnx_path: ``model.onnx`` / ``model.int8.onnx``, or a session from :func:`onnx_session` (reused).
        encoded_inputs: the tokenizer's output for the batch (``padding=True``; numpy arrays, lists or CPU
            tensors). Inputs the graph does not take are ignored; ``token_type_ids`` default to zeros.
        threads: intra-op threads when a path is given.

    Returns:
        float32 array ``(rows, outputs)``.
    """
    session = onnx_path if hasattr(onnx_path, "get_inputs") else onnx_session(onnx_path, threads)
    feeds = {}
    for spec in session.get_inputs():
        if spec.name in encoded_inputs:
            value = encoded_inputs[spec.name]
            feeds[spec.name] = np.asarray(value.cpu() if hasattr(value, "cpu") else value, dtype=np.int64)
        elif spec.name == "token_type_ids" and "input_ids" in encoded_inputs:
            feeds[spec.name] = np.zeros(np.shape(encoded_inputs["input_ids"]), dtype=np.int64)
        else:
            raise TextuneError(f"the ONNX model needs input '{spec.name}', which the encoded batch lacks")
    return np.asarray(session.run([OUTPUT], feeds)[0], dtype=np.float32)


class OnnxRuntimeModel(torch.nn.Module):
    """An exported graph behind the PyTorch model's call (``model(input_ids=..., attention_mask=...).logits``), so
    that textune's inference path (templates, truncation, chunk pooling, preference orders, calibration) runs on ONNX
    Runtime unchanged: ``Predictor.load(export_dir, engine="onnx")``."""

    def __init__(self, path: str | Path, threads: int | None = None):
        super().__init__()
        self.path = Path(path)
        self.session = onnx_session(self.path, threads)

    def forward(self, input_ids, attention_mask, token_type_ids=None, **_):
        batch = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            batch["token_type_ids"] = token_type_ids
        return _Output(torch.from_numpy(onnx_logits(self.session, batch)))


class _Output:
    def __init__(self, logits: torch.Tensor):
        self.logits = logits


def _sample(tokenizer, names: list[str]) -> dict[str, torch.Tensor]:
    """A padded batch of 2 rows of different lengths (not 1, which the exporter would fix as a constant)."""
    texts = ["an example", "a second and noticeably longer example sentence to trace the model with"]
    enc = tokenizer(texts, padding=True, truncation=True, max_length=64, return_tensors="pt")
    batch = {n: enc[n].to(torch.int64) for n in names if n in enc}
    if "token_type_ids" in names and "token_type_ids" not in batch:
        batch["token_type_ids"] = torch.zeros_like(batch["input_ids"])
    return batch


def _quantize(fp32: Path, int8: Path, external: bool) -> None:
    """Dynamic int8 quantisation (int8 weights; activations quantised per batch at run time)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model = onnx.load(str(fp32))
    # The exporter records shapes for its weights too; the quantiser transposes some weights (Gemm's) and its
    # shape inference then fails on the stale record. The initializers carry their shapes themselves.
    weights = {t.name for t in model.graph.initializer}
    kept = [v for v in model.graph.value_info if v.name not in weights]
    del model.graph.value_info[:]
    model.graph.value_info.extend(kept)
    with _quiet():
        quantize_dynamic(model, int8, weight_type=QuantType.QInt8, use_external_data_format=external)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]


def export_onnx(model_dir: str | Path, out_dir: str | Path, int8: bool = False) -> dict[str, Any]:
    """Writes ``out_dir/model.onnx`` (fp32, from the model in ``model_dir`` as textune loads it) and with ``int8``
    ``out_dir/model.int8.onnx`` (dynamic quantisation, int8 weights), after checking that ONNX Runtime reproduces
    PyTorch's logits on a sample batch.

    Returns:
        What ``textune.json`` records under ``onnx``: file names, input names, output name.

    Raises:
        TextuneError: the packages are missing, the model reads tabular features, or the export is wrong.
    """
    require_onnx()
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    check_exportable(model_dir)
    from transformers import AutoTokenizer

    from textune.models.build import load_model_dir

    model = load_model_dir(model_dir).to("cpu").float().eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    names = input_names(model, tokenizer)
    sample = _sample(tokenizer, names)
    wrapper = _Logits(model).eval()
    external = sum(p.numel() * 4 for p in model.parameters()) > _EXTERNAL_BYTES
    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence")
    path = out_dir / ONNX_FILE
    try:
        with _quiet():
            torch.onnx.export(
                wrapper,
                tuple(sample[n] for n in names),
                str(path),
                input_names=names,
                output_names=[OUTPUT],
                dynamic_shapes={n: {0: batch, 1: sequence} for n in names},
                dynamo=True,
                external_data=external,
                optimize=True,
                verbose=False,
            )
    except Exception as exc:  # the exporter's errors are many and long: one line, the first of them
        raise TextuneError(
            f"--onnx: torch.onnx.export failed for {model_dir} ({_first_line(exc)}); export without --onnx"
        ) from None
    with torch.no_grad():
        expected = wrapper(*(sample[n] for n in names)).numpy()
    try:
        got = onnx_logits(path, {n: t.numpy() for n, t in sample.items()})
    except TextuneError:
        raise
    except Exception as exc:  # ONNX Runtime's own errors (an operator it lacks, a bad graph): one line
        raise TextuneError(f"--onnx: ONNX Runtime cannot run the exported graph ({_first_line(exc)})") from None
    error = float(np.abs(got - expected).max())
    if error > _CHECK_TOLERANCE * max(1.0, float(np.abs(expected).max())):
        raise TextuneError(f"--onnx: ONNX Runtime's logits differ from PyTorch's by {error:.3g}; export without --onnx")
    files = {"model": ONNX_FILE}
    if int8:
        try:
            _quantize(path, out_dir / INT8_FILE, external)
        except Exception as exc:
            raise TextuneError(f"--int8: quantisation failed ({_first_line(exc)}); export without --int8") from None
        files["int8"] = INT8_FILE
    return {**files, "inputs": names, "output": OUTPUT, "check_max_abs_error": error}
