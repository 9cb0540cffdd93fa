"""``textune export``: a run's model as a standalone Hugging Face directory (merged) or its adapter alone."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from textune import _atomic
from textune.errors import TextuneError
from textune.run import layout, verify_run_dir

# Written into exported directories so that `textune predict` and Predictor.load work on them too.
META = layout.EXPORT_META


def export_run(
    run_dir: str | Path, out: str | Path, merge: bool = True, onnx: bool = False, int8: bool = False
) -> Path:
    """Copies ``run_dir/model`` (adapters already merged for LoRA runs) or ``run_dir/adapter`` to ``out``; with
    ``onnx`` also writes ``model.onnx`` for ONNX Runtime, and with ``int8`` its int8 copy ``model.int8.onnx`` (see
    :mod:`textune.onnx_export`).

    Raises:
        TextuneError: the run is unusable, ``out`` exists, ``--no-merge`` on a run without adapters, ``--onnx``
            with ``--no-merge``, on a model with tabular features or without the optional packages, ``--int8``
            without ``--onnx``.
    """
    run_dir, out = Path(run_dir), Path(out)
    manifest = verify_run_dir(run_dir)
    if out.exists() and any(out.iterdir()):
        raise TextuneError(f"{out}: already exists and is not empty; choose another --out")
    src = run_dir / (layout.MODEL if merge else layout.ADAPTER)
    if not merge and not (src / "adapter_config.json").is_file():
        raise TextuneError(f"{run_dir}: not a LoRA run, there is no adapter to export; drop --no-merge")
    if int8 and not onnx:
        raise TextuneError("--int8: quantises the ONNX export; add --onnx")
    if onnx:
        from textune.onnx_export import check_exportable, require_onnx

        if not merge:
            raise TextuneError("--onnx: exports the merged model; drop --no-merge")
        require_onnx()
        check_exportable(src)  # before anything is written
    # everything predict needs besides the weights: the recipe, the task state, the fitted feature statistics
    # (the fusion head cannot predict without them) and the precision the run evaluated with
    meta = {
        "recipe": layout.read_recipe_raw(run_dir),
        "labels": layout.read_task_state(run_dir),
        "features": layout.read_features(run_dir),
        "precision": manifest.get("precision"),
        "kind": "merged" if merge else "adapter",
        "source_run": str(run_dir.resolve()),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        shutil.copytree(src, tmp, dirs_exist_ok=True)
        if onnx:
            from textune.onnx_export import export_onnx

            meta["onnx"] = export_onnx(src, tmp, int8=int8)
        (tmp / META).write_text(json.dumps(meta, indent=1))
        _atomic.replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
