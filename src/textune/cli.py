"""The ``textune`` command. Each subcommand is a thin wrapper over a plain function of the package.

Every command checks its arguments, its recipe and the paths it will write before it imports torch or transformers
(seconds to load): a typo is reported at once, and a refused output leaves nothing written.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

from textune import startup
from textune.errors import TextuneError
from textune.run import layout
from textune.safe_paths import check_output_dir, check_output_file


class _Formatter(logging.Formatter):
    """Notes print as they are; warnings and errors carry their level."""

    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage()
        return msg if record.levelno <= logging.INFO else f"{record.levelname.lower()}: {msg}"


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(message)s")
    for handler in logging.getLogger().handlers:
        handler.setFormatter(_Formatter())
    logging.getLogger("textune").setLevel(logging.INFO)  # textune's own notes (chosen rank, resume point)
    # Offline by default: nothing may reach for the hub unless a recipe allows it.
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if not verbose:
        warnings.filterwarnings("ignore", category=FutureWarning)
        _quiet_transformers()


def _quiet_transformers() -> None:
    """Errors only from transformers, and no "Writing model shards" bars (they would drown textune's own bar).

    Importing transformers takes seconds, so it is not imported for this: the environment variables it reads when
    it is first imported say the same. Where it is already imported (a caller of :func:`main`, the tests), its
    switches are set directly, since by then it has read the environment.
    """
    os.environ["TRANSFORMERS_VERBOSITY"] = "error"
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()


def _progress(args: argparse.Namespace, message: str) -> None:
    """One line on stderr while something slow and silent runs (a model load): for a person at a terminal, or
    with --verbose; not in a pipe or a log, where it would only be noise."""
    if args.verbose or getattr(sys.stderr, "isatty", lambda: False)():
        print(message, file=sys.stderr, flush=True)


def _recipe_inputs(recipe_path: str | None, recipe) -> list[str | None]:
    """The files a recipe reads: itself and its data files (the outputs may be none of them)."""
    data = getattr(recipe, "data", None)
    return [recipe_path, *(getattr(data, key, None) for key in ("train", "validation", "test"))]


def cmd_init(args: argparse.Namespace) -> int:
    from textune.recipe import init_template

    sys.stdout.write(init_template(args.task))
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from textune.recipe import load_recipe

    recipe = load_recipe(args.recipe, args.set)
    from textune.check import check_recipe, format_report  # torch and transformers: only for a valid recipe

    report = check_recipe(recipe)
    print(format_report(report))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from textune.recipe import load_recipe

    recipe = load_recipe(args.recipe, args.set) if args.recipe else None
    _check_train_out(args, recipe)
    if _cross_validated(args, recipe):
        return _train_cv(args, recipe)
    from textune.training.loop import train  # torch and transformers: only for a valid recipe and --out

    if args.processes > 1 and "WORLD_SIZE" not in os.environ:
        return _launch(args, recipe)
    run_dir = train(recipe, out=args.out, resume=args.resume)
    if int(os.environ.get("RANK", 0)) != 0:
        return 0  # the main process reports for all
    summary = json.loads((run_dir / layout.SUMMARY).read_text())
    _print_summary(summary)
    print(f"run directory: {run_dir}")
    return 0


def _cross_validated(args: argparse.Namespace, recipe) -> bool:
    """``--folds K`` (K >= 2), the recipe's ``cv.folds``, or ``--resume`` of a cross-validation parent;
    ``--folds 0`` forces a single run."""
    if args.folds is not None:
        return args.folds != 0  # 1 is refused with its reason by _train_cv
    if args.resume is not None:
        from textune.run import layout

        try:
            raw = layout.read_recipe_raw(Path(args.resume))
        except TextuneError:
            return False  # train() reports a directory that is not a run
        return bool((raw.get("cv") or {}).get("folds"))
    return recipe is not None and recipe.cv.enabled


def _train_cv(args: argparse.Namespace, recipe) -> int:
    if args.processes > 1:
        raise TextuneError("--processes: cross-validation runs its folds one after another in this process; drop it")
    if args.folds == 1:
        raise TextuneError("--folds 1: cross-validation needs at least 2 folds (0 trains once)")
    from textune.cv import train_cv

    parent = train_cv(recipe, out=args.out, folds=args.folds, resume=args.resume)
    summary = json.loads((parent / layout.SUMMARY).read_text())
    for metric, stats in (summary.get("cv") or {}).items():
        print(f"{metric}: {stats['mean']:.4f} +- {stats['std']:.4f} over folds; out-of-fold {stats['oof']:.4f}")
    print(f"cross-validation directory: {parent}")
    return 0


def _check_train_out(args: argparse.Namespace, recipe) -> None:
    """The run directory may not be a file nor lie inside another run; with --resume the run is its own."""
    if args.resume is not None:
        return
    inputs = _recipe_inputs(args.recipe, recipe)
    if args.out is not None:
        check_output_dir(args.out, inputs, what="--out")
    elif recipe is not None:
        check_output_dir(recipe.output.dir, inputs, what="output.dir", holds_outputs=True)


def _launch(args: argparse.Namespace, recipe) -> int:
    """Re-runs this command in N data-parallel processes (torchrun); the run directory is fixed here, so that
    every process writes into the same one."""
    from textune.run import new_run_dir
    from textune.training.launch import relaunch

    if args.out is None and args.resume is None:
        args.out = str(new_run_dir(recipe.output.dir, recipe.output.name, recipe._stem))
    argv = ["train"] + ([args.recipe] if args.recipe else [])
    for item in args.set:
        argv += ["--set", item]
    for flag, value in (("--out", args.out), ("--resume", args.resume)):
        if value:
            argv += [flag, value]
    if args.allow_pickle:
        argv.append("--allow-pickle")
    startup.hand_over()
    return relaunch(args.processes, argv)


def _print_metrics(summary: dict) -> None:
    for split in ("validation", "test"):
        metrics = summary.get(split)
        if metrics:
            shown = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, int | float))
            print(f"{split}: {shown}")


def _print_summary(summary: dict) -> None:
    _print_metrics(summary)
    if "train_seconds" not in summary:  # CV baselines and other parents: no single training
        return
    print(
        f"train: {summary['train_seconds']:.1f} s, {summary['train_samples_per_s']:.1f} samples/s; "
        f"trainable parameters {summary['parameters']['trainable']:,}"
    )


def _sha256(path: str | Path) -> str | None:
    from textune._atomic import sha256_file

    try:
        return sha256_file(path)
    except OSError:  # a missing input is reported by the reader, with its own message
        return None


def _evaluation_path(run: Path, source: str, digest: str | None) -> Path:
    """``RUN/evaluations/<stem>.json``, or ``<stem>-2.json``, ... when that name holds another evaluation.

    Two inputs can share a stem (``a/test.csv``, ``b/test.csv``): an earlier evaluation is never replaced, except
    by the evaluation of the same, unchanged file (same path and checksum), which would give the same numbers.
    """
    folder = run / layout.EVALUATIONS
    stem, resolved = Path(source).stem, str(Path(source).resolve())
    n = 1
    while True:
        path = folder / (f"{stem}.json" if n == 1 else f"{stem}-{n}.json")
        if not path.exists():
            return path
        if path.is_file() and digest is not None:
            try:
                earlier = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                earlier = None
            if isinstance(earlier, dict) and (earlier.get("input"), earlier.get("input_sha256")) == (resolved, digest):
                return path
        n += 1


def cmd_evaluate(args: argparse.Namespace) -> int:
    run = Path(args.run)
    evaluations = run / layout.EVALUATIONS  # the run owns it: writing there is what evaluate is for
    digest = _sha256(args.input)
    out = Path(args.output) if args.output else _evaluation_path(run, args.input, digest)
    check_output_file(out, inputs=[args.input, run], what="--output", owned=[evaluations])
    _progress(args, f"loading {args.run} ...")
    from textune import _atomic
    from textune.predict import Predictor

    predictor = Predictor.load(run, precision=args.precision)
    df = predictor.read_input(args.input)
    metrics = predictor.evaluate(df, source=args.input)
    for k, v in metrics.items():
        print(f"{k}: {v:.4f}")
    record = {"input": str(Path(args.input).resolve()), "input_sha256": digest, "rows": len(df), "metrics": metrics}
    _atomic.write_json(out, record)
    print(f"metrics written to {out}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    check_output_file(args.output, inputs=[args.input, args.run], what="--output")
    if args.processes > 1 and "WORLD_SIZE" not in os.environ:
        return _launch_predict(args)
    _progress(args, f"loading {args.run} ...")
    from tqdm.auto import tqdm

    from textune.predict import Predictor
    from textune.training.launch import rank, world_size

    shard, device = None, None
    if world_size() > 1:  # one of --processes N: its share of the chunks, on its own GPU where there are GPUs
        import torch

        shard = (rank(), world_size())
        device = f"cuda:{os.environ.get('LOCAL_RANK', 0)}" if torch.cuda.is_available() else "cpu"
        if device == "cpu":  # torchrun gives each process one thread: share the cores instead
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // world_size()))
    predictor = Predictor.load(args.run, device=device, precision=args.precision, engine=args.engine)
    # streamed in chunks: memory is bounded by --chunk-rows, the output appears atomically at the end
    show = sys.stderr.isatty() and rank() == 0
    with tqdm(desc="predict", unit="row", disable=not show, dynamic_ncols=True) as bar:
        n = predictor.predict_file(
            args.input, args.output, proba=args.proba, chunk_rows=args.chunk_rows, progress=bar, shard=shard
        )
    if rank() == 0:
        print(f"{n} predictions written to {args.output}")
    return 0


def _launch_predict(args: argparse.Namespace) -> int:
    """``predict --processes N``: the same command in N processes (torchrun, as training), each predicting every
    N-th chunk; rank 0 joins the parts. The run and the whole input are checked here first, so that bad input is
    one line from this process; a failed process leaves neither the output nor the parts behind."""
    import shutil

    from textune.predict import Predictor
    from textune.training.launch import relaunch

    _progress(args, f"checking {args.input} against {args.run} ...")
    import torch

    if torch.cuda.is_available() and args.processes > torch.cuda.device_count():
        raise TextuneError(
            f"--processes {args.processes}: this machine has {torch.cuda.device_count()} GPU(s), one per process"
        )
    predictor = Predictor.load(args.run, device="cpu", precision=args.precision, engine=args.engine)
    predictor.check_file(args.input, args.chunk_rows)
    del predictor  # the processes load their own copies
    startup.hand_over()

    argv = ["predict", args.run, "--input", args.input, "--output", args.output, "--chunk-rows", str(args.chunk_rows)]
    if args.proba:
        argv.append("--proba")
    if args.precision:
        argv += ["--precision", args.precision]
    argv += ["--engine", args.engine]
    if args.allow_pickle:
        argv.append("--allow-pickle")
    out = Path(args.output)
    try:
        code = relaunch(args.processes, argv)
    finally:  # joined and removed by rank 0 on success; left by a failed or interrupted launch
        shutil.rmtree(out.parent / f".{out.name}.textune-parts", ignore_errors=True)
    if code != 0:
        raise TextuneError(
            f"predict --processes {args.processes}: a process failed (its message is above); "
            f"nothing was written to {args.output}"
        )
    return 0


def cmd_params(args: argparse.Namespace) -> int:
    from textune.recipe import load_recipe

    recipe = load_recipe(args.recipe, args.set)
    from textune.params import format_parameter_report, parameter_report  # transformers: only for a valid recipe

    print(format_parameter_report(parameter_report(recipe, args.num_labels)))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    check_output_dir(args.out, inputs=[args.run], what="--out")
    from textune.export import export_run

    out = export_run(args.run, args.out, merge=args.merge, onnx=args.onnx, int8=args.int8)
    print(f"exported {'merged model' if args.merge else 'adapter'} to {out}")
    if args.onnx:
        print(f"ONNX: {out / 'model.onnx'}" + (f" and {out / 'model.int8.onnx'} (int8)" if args.int8 else ""))
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    from textune.recipe import load_recipe

    # tune() loads the recipe again; this first load reports a typo before optuna, torch and transformers load
    recipe = load_recipe(args.recipe, args.set)
    if args.out is not None:
        check_output_dir(args.out, _recipe_inputs(args.recipe, recipe), what="--out")
    import optuna

    from textune.tune import tune

    if not args.verbose:
        optuna.logging.set_verbosity(optuna.logging.WARNING)  # textune prints one line per trial instead
    result = tune(
        args.recipe,
        args.set,
        trials=args.trials,
        timeout=args.timeout,
        storage=args.storage,
        study_name=args.study,
        out=args.out,
        retrain_best=args.retrain_best,
        echo=print,
    )
    print("trials: " + ", ".join(f"{n} {state}" for state, n in sorted(result.counts.items())))
    if result.best_value is not None:
        params = ", ".join(f"{k}={v}" for k, v in result.best_params.items())
        print(f"best: {result.metric} {result.best_value:.4f} ({params})")
        print(f"best recipe: {result.best_recipe}")
    print(f"study directory: {result.study_dir} (storage {result.storage})")
    if result.retrained:
        print(f"retrained best recipe: {result.retrained}")
    return 0


def cmd_embed(args: argparse.Namespace) -> int:
    inputs = [args.input, args.model]  # the model is an input when it is a folder (a run or a model directory)
    out = check_output_file(args.output, inputs, what="--output")
    if out.suffix.lower() == ".npy":
        # the key column goes beside the array; the name as textune.embed.write_embeddings makes it
        ids = out.with_name(out.name[: -len(out.suffix)] + ".ids.csv")
        check_output_file(ids, inputs, what="the ids file beside --output")
    from textune.device import PRECISION_NAMES
    from textune.embed import embed_file

    files, emb = embed_file(
        args.model,
        args.input,
        args.output,
        text=args.text,
        id_col=args.id,
        pooling=args.pooling,
        normalize=args.normalize,
        prefix=args.prefix,
        max_length=args.max_length,
        batch_size=args.batch_size,
        precision=PRECISION_NAMES[args.precision],
        device=args.device,
        progress=not args.no_progress,
    )
    print(f"{emb.shape[0]} embeddings of dimension {emb.shape[1]} written to {', '.join(map(str, files))}")
    return 0


def cmd_baseline(args: argparse.Namespace) -> int:
    from textune.recipe import load_recipe

    recipe = load_recipe(args.recipe, args.set)
    inputs = _recipe_inputs(args.recipe, recipe)
    check_output_dir(
        args.out or recipe.output.dir, inputs, what="--out" if args.out else "output.dir", holds_outputs=True
    )
    from textune.baseline import KINDS, run_baselines  # torch: only for a valid recipe and --out

    runs = run_baselines(recipe, args.kind or KINDS, out=args.out, embed_model=args.embed_model, folds=args.folds)
    for run_dir in runs:
        summary = json.loads((run_dir / layout.SUMMARY).read_text())
        print(f"{summary['baseline']} baseline: {summary['description']}")
        _print_summary(summary)
        print(f"baseline directory: {run_dir}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    # the two files compare() writes, named as it names them; every compared path is an input
    out = Path(args.out)
    if out.suffix.lower() in (".csv", ".png", ".html"):
        out = out.with_suffix("")
    for suffix in (".csv", ".png", ".html"):
        check_output_file(out.with_name(out.name + suffix), inputs=args.runs, what="--out")
    from textune.report.compare import compare, format_table

    table, notes, files = compare(args.runs, args.out)
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    print(format_table(table))
    print(f"leaderboard written to {', '.join(map(str, files))}")
    return 0


def cmd_ensemble(args: argparse.Namespace) -> int:
    check_output_dir(args.out, inputs=args.runs, what="--out")
    from textune.ensemble import fit_ensemble

    out = fit_ensemble(args.runs, args.out, method=args.method, rounds=args.rounds, metric=args.metric)
    summary = json.loads((out / layout.SUMMARY).read_text())
    for member in summary.get("members", []):
        score = member.get("cv_score")
        shown = f"{score:.4f}" if isinstance(score, int | float) else "-"
        print(f"member {member.get('path')}: weight {member.get('weight', 0):.3f}, CV {shown}")
    _print_metrics(summary)
    if summary.get("predictable") is False:
        print("report only: a baseline member has weight and no saved model, so this ensemble cannot predict")
    print(f"ensemble directory: {out}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from textune.report.html import write_report

    print(f"report written to {write_report(args.run)}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    run = Path(args.run)
    if not run.is_dir():
        raise TextuneError(f"{run}: run directory not found")
    if layout.is_baseline_dir(run):
        raise TextuneError(f"{run}: is a baseline (scores to beat, no saved model); serve a fine-tuned run")
    # a CV parent or an ensemble, told by its summary's kind (textune.ensemble would import torch)
    combined = (run / layout.SUMMARY).is_file() and layout.read_summary(run).get("kind") in ("cv", "ensemble")
    if not (layout.has_model(run) or layout.is_export_dir(run) or combined):
        raise TextuneError(
            f"{run}: neither a run directory ({layout.RECIPE} beside {layout.MODEL}/) nor an exported one "
            f"({layout.EXPORT_META}); pass runs/NAME or a 'textune export' directory"
        )
    from textune.serve import ServeOptions, bind_socket, serve  # fastapi; torch only once the port is bound

    options = ServeOptions(
        max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms,
        max_queue=args.max_queue,
        max_rows=args.max_rows,
        max_body_bytes=args.max_body_bytes,
        precision=args.precision,
        workers=args.workers,
    )
    sock = bind_socket(args.host, args.port)  # a busy port is reported before seconds of model loading
    if args.host not in ("127.0.0.1", "::1", "localhost"):
        print(f"warning: --host {args.host}: reachable from other machines, with no authentication", file=sys.stderr)
    _progress(args, f"loading {args.run} ...")
    try:
        return serve(run, sock, options, access_log=args.verbose)
    finally:
        sock.close()


def _port(text: str) -> int:
    """An argparse ``type=`` for a TCP port."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number 1-65535, got {text!r}") from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port number 1-65535, got {value}")
    return value


def _milliseconds(text: str) -> float:
    """An argparse ``type=`` for a wait of 0 to 10,000 ms (longer would hold every request for seconds)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected milliseconds, got {text!r}") from None
    if not 0 <= value <= 10_000:
        raise argparse.ArgumentTypeError(f"expected 0 to 10000 milliseconds, got {text}")
    return value


class _Parser(argparse.ArgumentParser):
    """argparse with the bad-input contract: one ``error:`` line and exit code 2 (not the usage block)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        message = " ".join(message.splitlines())
        self.exit(2, f"error: {self.prog}: {message}; see '{self.prog} --help'\n")


def _int_at_least(minimum: int, why: str = "") -> Callable[[str], int]:
    """An argparse ``type=`` for a whole number >= ``minimum``; ``why`` ends the message (a hint or reason)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number >= {minimum}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}{why}")
        return value

    return parse


def _allow_pickle_arg(s: argparse.ArgumentParser) -> None:
    s.add_argument(
        "--allow-pickle",
        action="store_true",
        help="read .pkl data files (unpickling runs any code the file contains: only for files you trust)",
    )


def _processes_arg(s: argparse.ArgumentParser, verb: str, help: str) -> None:
    """``--processes N`` (torchrun) for a command that otherwise ``verb`` in this process."""
    s.add_argument(
        "--processes", type=_int_at_least(1, f" (1 {verb} in this process)"), default=1, metavar="N", help=help
    )


def _recipe_args(s: argparse.ArgumentParser, required: bool = True) -> None:
    s.add_argument("recipe", nargs=None if required else "?", help="recipe YAML file")
    s.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a recipe key, e.g. --set train.lr=3e-5 (repeatable)",
    )


def _add_init(sub) -> None:
    from textune.recipe import TASKS

    s = sub.add_parser("init", help="print an annotated starter recipe")
    s.add_argument(
        "task",
        nargs="?",
        default="classification",
        choices=TASKS,
        help=f"task kind: {', '.join(TASKS)} (default: %(default)s)",
    )
    s.set_defaults(func=cmd_init)


def _add_check(sub) -> None:
    s = sub.add_parser("check", help="validate a recipe and its data without training")
    _recipe_args(s)
    _allow_pickle_arg(s)
    s.set_defaults(func=cmd_check)


def _add_train(sub) -> None:
    s = sub.add_parser("train", help="fine-tune and write a run directory")
    _recipe_args(s, required=False)
    s.add_argument("--out", help="run directory (default: output.dir/<recipe>-<time>)")
    s.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from its last checkpoint")
    _processes_arg(s, "trains", "data-parallel training in N processes (torchrun; gloo on CPU, NCCL on GPUs)")
    s.add_argument(
        "--folds",
        type=_int_at_least(0),
        metavar="K",
        help="K-fold cross-validation under one parent: OOF predictions, CV mean +- std, a fold ensemble "
        "(default: the recipe's cv.folds; 0: one run)",
    )
    _allow_pickle_arg(s)
    s.set_defaults(func=cmd_train)


def _add_evaluate(sub) -> None:
    s = sub.add_parser("evaluate", help="metrics of a trained run on a labelled file")
    s.add_argument("run", help="run directory")
    s.add_argument("--input", required=True, help="labelled CSV/TSV/JSONL/Parquet")
    s.add_argument("--output", help="metrics JSON (default: RUN/evaluations/<input>.json)")
    s.add_argument(
        "--precision",
        choices=["fp32", "bf16", "fp16"],
        help="inference precision (default: the run's own, fp32 where this machine lacks native bf16)",
    )
    _allow_pickle_arg(s)
    s.set_defaults(func=cmd_evaluate)


def _add_predict(sub) -> None:
    s = sub.add_parser("predict", help="write predictions for a file, keyed by the id column")
    s.add_argument("run", help="run directory")
    s.add_argument("--input", required=True, help="CSV/TSV/JSONL/Parquet with the run's text columns")
    s.add_argument("--output", required=True, help="submission CSV")
    s.add_argument(
        "--proba", action="store_true", help="one probability column per class, after the predicted label(s)"
    )
    s.add_argument(
        "--chunk-rows",
        type=_int_at_least(1),
        default=20_000,
        metavar="N",
        help="rows read, encoded and predicted at a time: bounds memory on large files (default 20000)",
    )
    s.add_argument(
        "--precision",
        choices=["fp32", "bf16", "fp16"],
        help="inference precision (default: the run's own, fp32 where this machine lacks native bf16)",
    )
    _processes_arg(
        s, "predicts", "shard the chunks over N processes (torchrun, as training; one GPU each where there are GPUs)"
    )
    s.add_argument(
        "--engine",
        choices=["torch", "onnx", "onnx-int8"],
        default="torch",
        help="onnx / onnx-int8: ONNX Runtime on the CPU, for a `textune export --onnx [--int8]` directory",
    )
    _allow_pickle_arg(s)
    s.set_defaults(func=cmd_predict)


def _add_tune(sub) -> None:
    s = sub.add_parser("tune", help="hyperparameter search over the recipe's tune.space (Optuna)")
    _recipe_args(s)
    s.add_argument("--trials", type=int, help="trials in the study over all sessions and workers (tune.trials)")
    s.add_argument("--timeout", help="time budget of this session, e.g. 2h, 30m, 900 (tune.timeout)")
    s.add_argument("--storage", help="Optuna storage URL shared by workers, e.g. postgresql://user@host/db")
    s.add_argument("--study", help="study name in the storage (default: the recipe's file name)")
    s.add_argument("--out", help="study directory (default: output.dir/tune-<study>)")
    s.add_argument("--retrain-best", action="store_true", help="then train the best recipe (tune.retrain)")
    s.set_defaults(func=cmd_tune)


def _add_params(sub) -> None:
    s = sub.add_parser(
        "params", help="parameter counts of what train will train (config only; the data when the head needs it)"
    )
    _recipe_args(s)
    s.add_argument(
        "--num-labels",
        type=_int_at_least(1),
        help="labels (levels for ordinal) when the recipe lists none; else read from data.train",
    )
    s.set_defaults(func=cmd_params)


def _add_export(sub) -> None:
    s = sub.add_parser("export", help="write a run's model as a standalone Hugging Face directory")
    s.add_argument("run", help="run directory")
    s.add_argument("--out", required=True, help="output directory")
    s.add_argument(
        "--merge",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="merge LoRA adapters into the base weights (default), or --no-merge for the adapter alone",
    )
    s.add_argument(
        "--onnx",
        action="store_true",
        help="also write model.onnx (fp32 logits, for ONNX Runtime on CPU); needs pip install 'textune[onnx]'",
    )
    s.add_argument(
        "--int8", action="store_true", help="with --onnx, also write model.int8.onnx (dynamic int8 quantisation)"
    )
    s.set_defaults(func=cmd_export)


def _add_embed(sub) -> None:
    s = sub.add_parser("embed", help="sentence embeddings of a file's texts (.parquet or .npy), keyed by id")
    s.add_argument("model", metavar="MODEL_OR_RUN", help="bundled:minilm, a model directory, a hub id, or a run")
    s.add_argument("--input", required=True, help="CSV/TSV/JSONL/Parquet")
    s.add_argument("--text", help="text column or template like '{title}. {body}' (default: the run's data.text)")
    s.add_argument("--output", required=True, help=".parquet (id + emb_0..emb_N columns) or .npy (+ .ids.csv)")
    s.add_argument("--id", help="key column (default: the run's data.id, else 'id' when present)")
    s.add_argument("--pooling", choices=["mean", "cls"], default="mean", help="mean over tokens (default) or CLS")
    s.add_argument("--normalize", action="store_true", help="L2-normalise each embedding")
    s.add_argument("--prefix", help="'query' or 'passage' (E5 markers 'query: '/'passage: '), or any literal text")
    s.add_argument(
        "--max-length",
        type=_int_at_least(8, " (room for the special tokens and some text)"),
        help="tokens per text (default: the run's, else 256)",
    )
    s.add_argument("--batch-size", type=_int_at_least(1), default=64, help="texts per forward pass (default 64)")
    s.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32", help="autocast (default fp32)")
    s.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    s.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    s.set_defaults(func=cmd_embed)


def _add_baseline(sub) -> None:
    s = sub.add_parser("baseline", help="TF-IDF and frozen-embedding linear baselines on the recipe's own split")
    _recipe_args(s)
    s.add_argument(
        "--kind",
        action="append",
        choices=["tfidf", "embedding", "gbdt"],
        help="which baseline (repeatable; default tfidf and embedding; gbdt: gradient-boosted trees on features "
        "and text statistics)",
    )
    s.add_argument(
        "--folds", type=_int_at_least(2), metavar="K", help="K-fold CV with out-of-fold predictions (default: cv.folds)"
    )
    s.add_argument("--out", help="parent directory (default: output.dir); writes <recipe>-baseline-<kind>/")
    s.add_argument("--embed-model", help="encoder of the embedding baseline (default: the recipe's model.name)")
    s.set_defaults(func=cmd_baseline)


def _add_compare(sub) -> None:
    s = sub.add_parser("compare", help="leaderboard of runs and baselines (printed; CSV, PNG and an HTML page)")
    s.add_argument("runs", nargs="+", metavar="RUN", help="run or baseline directories, e.g. runs/*")
    s.add_argument("--out", default="leaderboard", help="output path without suffix (default ./leaderboard)")
    s.set_defaults(func=cmd_compare)


def _add_ensemble(sub) -> None:
    s = sub.add_parser("ensemble", help="weighted ensemble of cross-validated runs, fitted on out-of-fold predictions")
    s.add_argument("runs", nargs="+", metavar="DIR", help="CV runs (train --folds), CV baselines or ensembles")
    s.add_argument("--out", required=True, help="ensemble directory (predict, evaluate and serve load it like a run)")
    s.add_argument("--method", choices=["greedy", "stack"], default="greedy", help="ensemble selection or stacking")
    s.add_argument("--rounds", type=_int_at_least(1), default=25, help="greedy selection rounds (default 25)")
    s.add_argument("--metric", help="metric to optimise (default: the members' main metric)")
    s.set_defaults(func=cmd_ensemble)


def _add_report(sub) -> None:
    s = sub.add_parser("report", help="(re)write a run's self-contained report.html")
    s.add_argument("run", help="run or baseline directory")
    s.set_defaults(func=cmd_report)


def _add_serve(sub) -> None:
    s = sub.add_parser("serve", help="serve a run over HTTP: POST /predict (micro-batched), /health, /info, /docs")
    s.add_argument("run", help="run directory or 'textune export' directory")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default %(default)s: this machine only)")
    s.add_argument("--port", type=_port, default=8000, help="TCP port (default %(default)s)")
    s.add_argument(
        "--workers",
        type=_int_at_least(1),
        default=1,
        metavar="N",
        help="worker processes, each loading its own copy of the model and batching on its own (default 1)",
    )
    s.add_argument(
        "--max-batch",
        type=_int_at_least(1),
        default=64,
        metavar="ROWS",
        help="most rows in one forward pass gathered from several requests; 1: no micro-batching (default 64)",
    )
    s.add_argument(
        "--max-wait-ms",
        type=_milliseconds,
        default=5.0,
        metavar="MS",
        help="how long a batch waits for more requests (default 5)",
    )
    s.add_argument(
        "--max-queue",
        type=_int_at_least(1),
        default=256,
        metavar="REQUESTS",
        help="requests waiting for the model; beyond it requests get 503 (default 256)",
    )
    s.add_argument(
        "--max-rows", type=_int_at_least(1), default=1024, help="most rows in one request; more: 413 (default 1024)"
    )
    s.add_argument(
        "--max-body-bytes",
        type=_int_at_least(1),
        default=8 * 1024 * 1024,
        metavar="BYTES",
        help="largest request body; larger: 413 (default 8 MiB)",
    )
    s.add_argument(
        "--precision",
        choices=["fp32", "bf16", "fp16"],
        help="inference precision (default: the run's own, fp32 where this machine lacks native bf16)",
    )
    s.set_defaults(func=cmd_serve)


def build_parser() -> argparse.ArgumentParser:
    from textune import __version__

    p = _Parser(prog="textune", description="Fine-tune text encoders on tabular text data.")
    p.add_argument("--version", action="version", version=f"textune {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress and library messages")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    for add in (
        _add_init,
        _add_check,
        _add_train,
        _add_evaluate,
        _add_predict,
        _add_tune,
        _add_params,
        _add_export,
        _add_embed,
        _add_baseline,
        _add_compare,
        _add_ensemble,
        _add_report,
        _add_serve,
    ):
        add(sub)
    return p


def _pickle_scope(allow: bool) -> contextlib.AbstractContextManager:
    """``--allow-pickle`` for the data readers, without importing them (and pandas) for a command that fails on its
    arguments: while the reader module is not loaded, nothing can have switched pickle on."""
    if allow or "textune.data.io" in sys.modules:
        from textune.data.io import pickle_allowed

        return pickle_allowed(allow)
    return contextlib.nullcontext()


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(args.verbose)
    try:
        with _pickle_scope(getattr(args, "allow_pickle", False)):
            return args.func(args)
    except TextuneError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        loop = sys.modules.get("textune.training.loop")  # not imported: then this cannot be its exception
        if loop is not None and isinstance(exc, loop.TrainingInterrupted):
            print(f"stopped: {exc}", file=sys.stderr)
            return 130
        raise


# The commands that load a model: each resumes the collector (textune/startup.py) before it reads data, or hands
# the work over to other processes.
_PAUSE_COLLECTOR = {"train", "predict", "evaluate", "serve"}


def entry(argv: list[str] | None = None) -> int:
    """The ``textune`` executable: :func:`main`, with Python's garbage collector paused through a model-loading
    command's start-up (see :mod:`textune.startup`). ``main`` itself leaves the caller's collector alone."""
    command = next((a for a in (sys.argv[1:] if argv is None else argv) if not a.startswith("-")), None)
    if command in _PAUSE_COLLECTOR:
        startup.pause()
    try:
        return main(argv)
    finally:
        startup.end()


if __name__ == "__main__":
    sys.exit(entry())
