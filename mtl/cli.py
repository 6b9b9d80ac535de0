"""Command line: `mtl train | predict | embed | evaluate | compare | notebooks | cache | info`.

Heavy imports happen inside each command, so `--help` and `predict` start fast. Flag defaults and choices
come from `mtl.config` (the settings' one home). User mistakes print one line (`mtl <cmd>: error: ...`) and
exit 2; `--debug` shows tracebacks.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings

from mtl.errors import MTLError


class Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, no usage dump
        print(f"{self.prog}: error: {message} (see --help)", file=sys.stderr)
        raise SystemExit(2)


def _flag(name: str, cast=int):
    from mtl.config import flag

    return flag(name, cast)


def task_weights(s: str) -> dict[str, float]:
    out = {}
    for part in s.split(","):
        name, _, val = part.partition("=")
        try:
            out[name.strip()] = _flag("task_weight", float)(val)
        except argparse.ArgumentTypeError:
            raise argparse.ArgumentTypeError(f"expected task=weight[,task=weight], got {s!r}") from None
    return out


def _common(p: argparse.ArgumentParser, model: bool = False) -> None:
    from mtl.config import CHOICES
    from mtl.engine.embed import EmbedSpec

    if model:
        p.add_argument("--model", default=None, help="checkpoint (default saved_models/multi_task_model.safetensors)")
    p.add_argument("--backend", choices=CHOICES["backend"], default=EmbedSpec.backend, help="embedding backend (default: %(default)s; see `mtl info`)")
    p.add_argument("--device", choices=CHOICES["device"], default=EmbedSpec.device, help="device for torch work (default: %(default)s)")
    p.add_argument("--cache-dir", default=None, help="embedding cache folder (default: .cache/)")
    p.add_argument("--debug", action="store_true", help="show tracebacks")


def _embedding(p: argparse.ArgumentParser, layers_help: str) -> None:
    """--backbone and --layers (train, embed): defaults from `EmbedSpec`, their one home."""
    from mtl.engine.embed import EmbedSpec

    p.add_argument("--backbone", default=EmbedSpec.backbone, help="packaged model, a local folder, or a hub name (default: %(default)s)")
    p.add_argument("--layers", default=EmbedSpec.layers, help=layers_help)


def spec_of(a, cache: bool = True):
    """The EmbedSpec that a command's --backend/--device/--cache-dir (and --layers, --backbone where it has them) describe;
    what a command has no flag for keeps EmbedSpec's default."""
    from mtl.engine.embed import EmbedSpec

    given = {"backbone": getattr(a, "backbone", None), "layers": getattr(a, "layers", None)}
    return EmbedSpec(backend=a.backend, device=a.device, cache_dir=a.cache_dir, cache=cache, **{k: v for k, v in given.items() if v is not None})


def build_parser() -> Parser:
    from mtl.config import CHOICES, FOLDS, TrainConfig

    d = TrainConfig()  # every training default, from its one home
    ap = Parser(prog="mtl", allow_abbrev=False, description="Multi-task sentence classification on a frozen sentence-transformer.")
    sub = ap.add_subparsers(dest="cmd", required=True)

    t = sub.add_parser("train", allow_abbrev=False, help="train the task heads on cached embeddings")
    t.add_argument("--data", action="append", help="labelled CSV (repeatable; default data/sentences.csv)")
    t.add_argument("--tasks", default=None, help="task=label,label;... (default: topic and sentiment)")
    t.add_argument("--epochs", type=_flag("epochs"), default=d.epochs)
    t.add_argument("--lr", type=_flag("lr", float), default=d.lr)
    t.add_argument("--batch-size", type=_flag("batch_size"), default=d.batch_size)
    t.add_argument("--hidden", type=_flag("hidden"), default=d.hidden, help="hidden units per head (0: linear head)")
    t.add_argument("--dropout", type=_flag("dropout", float), default=d.dropout)
    t.add_argument("--weight-decay", type=_flag("weight_decay", float), default=d.weight_decay, help="Adam weight decay (default: %(default)s)")
    t.add_argument("--class-balanced", action=argparse.BooleanOptionalAction, default=d.balance,
                   help="classes weigh equally within each source in the loss (for macro-recall on skewed data; default: %(default)s)")
    t.add_argument("--mix", type=_flag("mix", str), default=d.mix,
                   help="with several --data files, how much each weighs in a task's loss: rows (as many rows, as much weight), "
                        "equal, or a temperature T > 1 (weight ∝ rows**(1/T)) (default: %(default)s)")
    t.add_argument("--share", choices=CHOICES["share"], default=d.share,
                   help="none: independent heads; trunk: a shared Linear-ReLU-Dropout layer that every head reads (default: %(default)s)")
    t.add_argument("--prior", choices=CHOICES["prior"], default=d.prior,
                   help="descriptions: linear heads start as the zero-shot classifier (label descriptions) and weight decay "
                        "pulls them toward it, not toward zero (default: %(default)s)")
    t.add_argument("--trunk-hidden", type=_flag("trunk_hidden"), default=d.trunk_hidden, help="width of the shared trunk (default: %(default)s)")
    t.add_argument("--tune", action="store_true",
                   help="choose layers, head, weight decay, sharing and (several files) the mix by k-fold CV on the training rows "
                        "(mtl.research.select.candidates), then train that choice; --seed, --device and --tune-folds apply, "
                        "the other training flags are replaced by the choice")
    t.add_argument("--tune-folds", type=_flag("folds"), default=FOLDS, help="folds for --tune (default: %(default)s)")
    t.add_argument("--target", default=None, metavar="FILE",
                   help="with --tune: score the CV on this --data file's held-out folds only (training still uses every file)")
    t.add_argument("--weighting", choices=CHOICES["weighting"], default=d.weighting)
    t.add_argument("--task-weights", type=task_weights, default={}, help="static loss weights, e.g. topic=1,sentiment=2")
    t.add_argument("--seed", type=_flag("seed"), default=d.seed)
    _embedding(t, "embedding from the last layer (default) or the average of layers A-B, e.g. 4-6")
    t.add_argument("--out", default=None, help="checkpoint path (default saved_models/multi_task_model.safetensors)")
    t.add_argument("--metrics", default=None, help="metrics JSON path (default saved_models/metrics.json)")
    _common(t)

    p = sub.add_parser("predict", allow_abbrev=False, help="label sentences with a trained checkpoint")
    p.add_argument("inputs", nargs="*", help="text file (one per line), CSV/JSONL/Parquet with a text column, a glob, or - for stdin")
    p.add_argument("--format", choices=("table", "csv", "jsonl", "parquet"), default="table", help="with --out: parquet (default) or jsonl")
    _common(p, model=True)
    _corpus_options(p, predict=True)

    m = sub.add_parser("embed", allow_abbrev=False, help="write the embedding of every text of a corpus")
    m.add_argument("inputs", nargs="+", help="text file, CSV/JSONL/Parquet with a text column, a glob, or - for stdin")
    m.add_argument("--format", choices=("parquet", "jsonl"), default=None, help="shard format (default parquet; jsonl without --out)")
    _embedding(m, "last (default) or the average of layers A-B, e.g. 4-6")
    _common(m)
    _corpus_options(m, predict=False)

    k = sub.add_parser("cache", allow_abbrev=False, help="size of the embedding cache, and pruning it")
    k.add_argument("action", choices=("info", "prune"))
    k.add_argument("--max-entries", type=_flag("max_entries"), default=None, help="prune: keep at most N entries per cache folder (least recently used go)")
    k.add_argument("--max-mb", type=_flag("max_mb", float), default=None, help="prune: keep each cache folder under this many MB")
    k.add_argument("--older-than", type=_flag("older_than"), default=None, metavar="DAYS", help="prune: drop entries unused for DAYS days")
    k.add_argument("--cache-dir", default=None, help="embedding cache folder (default: .cache/)")
    k.add_argument("--debug", action="store_true", help="show tracebacks")

    e = sub.add_parser("evaluate", allow_abbrev=False, help="score a checkpoint on a labelled CSV")
    e.add_argument("--data", required=True)
    e.add_argument("--json", default=None, help="write the metrics here")
    _common(e, model=True)

    c = sub.add_parser("compare", allow_abbrev=False, help="baselines vs single- vs multi-task, k-fold CV + held-out test")
    c.add_argument("--data", action="append", help="labelled CSV with a split column (default data/sentences.csv)")
    c.add_argument("--model", default=None, help="checkpoint whose settings the heads use (default saved_models/multi_task_model.safetensors)")
    c.add_argument("--folds", type=_flag("folds"), default=FOLDS, help="(default: %(default)s)")
    c.add_argument("--out", default=None, help="CSV path (default saved_models/comparison.csv)")
    _common(c)

    i = sub.add_parser("info", allow_abbrev=False, help="CPU flags, GPU, versions, and which backend `auto` picks and why")
    i.add_argument("--debug", action="store_true")

    n = sub.add_parser("notebooks", allow_abbrev=False, help="run the numbered notebooks headless with papermill")
    n.add_argument("--epochs", type=_flag("epochs"), default=None)
    n.add_argument("--lr", type=_flag("lr", float), default=None)
    n.add_argument("--device", choices=CHOICES["device"], default=None)
    n.add_argument("--seed", type=_flag("seed"), default=None)
    n.add_argument("--full", action="store_true", help="the research notebooks' full experiments (slow; default: their quick form)")
    n.add_argument("--only", nargs="*", default=None, help="notebook name prefixes, e.g. 01 03")
    n.add_argument("--out", default=None, help="folder for executed copies (default runs/<timestamp>)")
    n.add_argument("-p", "--param", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"))
    n.add_argument("--publish", action="store_true", help="write the committed figures/ and results/ (make figures; the research notebooks need --full)")
    n.add_argument("--refresh-outputs", action="store_true", help="store the outputs nbval checks (after a deliberate change in results)")
    n.add_argument("--debug", action="store_true")
    return ap


# training flags whose values `--tune` replaces by the chosen candidate's (flag names without the leading --)
TUNED = {"epochs", "lr", "batch-size", "hidden", "dropout", "weight-decay", "class-balanced", "mix", "share", "prior", "trunk-hidden",
         "layers", "weighting", "task-weights"}


def cmd_train(a) -> int:
    from mtl import paths
    from mtl.config import Recipe, TrainConfig
    from mtl.evaluate import format_table
    from mtl.tasks import parse_tasks
    from mtl.train import train_from_csv

    tasks = parse_tasks(a.tasks)
    recipe = Recipe(a.layers, TrainConfig(
        epochs=a.epochs, lr=a.lr, batch_size=a.batch_size, hidden=a.hidden, dropout=a.dropout, weight_decay=a.weight_decay,
        balance=a.class_balanced, mix=a.mix, share=a.share, trunk_hidden=a.trunk_hidden, prior=a.prior,
        weighting=a.weighting, task_weights=a.task_weights, seed=a.seed, device=a.device,
    ))
    record = None
    if a.target is not None and not a.tune:
        raise MTLError("--target: only with --tune")
    if a.tune:
        replaced = [f for f in dict.fromkeys(arg.split("=")[0] for arg in a.argv) if f.removeprefix("--no-").removeprefix("--") in TUNED]
        if replaced:
            warnings.warn(f"--tune: {', '.join(replaced)} replaced by the settings the CV chooses (only --seed, --device, "
                          "--tune-folds and --target apply with --tune)", stacklevel=1)
        recipe, record = _tune(a, tasks)
    res = train_from_csv(a.data, tasks, recipe.train, recipe.spec(spec_of(a)), a.out, a.metrics, record=record)
    print(format_table(res["metrics"]["train"], "train split (seen in training):"))
    if "test" in res["metrics"]:
        print(format_table(res["metrics"]["test"], "test split (held out):"))
    for name, m in res["metrics"].get("by_source", {}).items():
        print(format_table(m, f"{name}:"))
    print(f"saved {a.out or paths.CHECKPOINT} and {a.metrics or paths.METRICS_JSON}", file=sys.stderr)
    return 0


def _tune(a, tasks) -> tuple:
    """`--tune`: CV on the given files' train rows; returns (the chosen Recipe, record for the checkpoint)."""
    from pathlib import Path

    from mtl import paths
    from mtl.research.select import tune

    data = a.data or [str(paths.DATA_CSV)]
    table, best, recipe = tune(data, tasks, spec_of(a), folds=a.tune_folds, seed=a.seed, device=a.device, target=a.target)
    if a.target:
        score = f"mean macro-recall over the tasks of {Path(a.target).name} (the --target), trained on every file"
    else:
        score = "mean macro-recall over sources and their tasks" if len(data) > 1 else "mean macro-recall over tasks"
    print(f"--tune: {a.tune_folds}-fold CV on the train rows of {len(data)} file(s), {score}:", file=sys.stderr)
    print(table.round(4).to_string(), file=sys.stderr)
    print(f"--tune: chose candidate {best} ({recipe.describe()})", file=sys.stderr)
    record = {"tune": {"folds": a.tune_folds, "metric": score, "target": a.target, "chosen": best, "layers": recipe.layers,
                       "config": recipe.train.as_dict(), "cv_table": table.reset_index().to_dict(orient="records")}}
    return recipe, record


def _corpus_options(p: argparse.ArgumentParser, predict: bool) -> None:
    """Options of the streaming path (`--out DIR`): chunked, sharded, resumable, optionally on Ray."""
    from mtl.corpus.ray_engine import WORKERS
    from mtl.corpus.stream import CHUNK_SIZE

    p.add_argument("--out", default=None, help="write sharded output to this folder (streaming, resumable)")
    p.add_argument("--chunk-size", type=_flag("chunk_size"), default=None, help=f"rows per output shard (default {CHUNK_SIZE})")
    p.add_argument("--engine", choices=("local", "ray"), default="local", help="ray: label chunks on a Ray cluster (pip install -e '.[scale]')")
    p.add_argument("--workers", type=_flag("workers"), default=None, help=f"--engine ray: labelling actors (default {WORKERS})")
    p.add_argument("--address", default=None, help="--engine ray: the cluster to join (default $RAY_ADDRESS, else a local instance)")
    p.add_argument("--cache", action="store_true", help="with --out: keep the vectors in the embedding cache too (a corpus is usually seen once)")
    if predict:
        p.add_argument("--with-embeddings", action="store_true", help="also write each text's vector")


def cmd_corpus(a) -> int:
    """`predict`/`embed` over a corpus: stream in chunks to `--out` (or, for embed without --out, JSONL on stdout)."""
    from dataclasses import replace
    from pathlib import Path

    from mtl import inputs
    from mtl.corpus import stream
    from mtl.predict import label, to_jsonl

    predict = a.cmd == "predict"
    fmt = {"table": "parquet", None: "parquet"}.get(a.format, a.format)
    if fmt == "csv":
        raise MTLError("--format csv: with --out, choose parquet or jsonl")
    if a.out is None and (a.engine == "ray" or a.format == "parquet"):
        raise MTLError(f"{'--engine ray' if a.engine == 'ray' else '--format parquet'} needs --out DIR")
    for name, given in (("--workers", a.workers is not None), ("--address", a.address is not None)):
        if given and a.engine != "ray":
            raise MTLError(f"{name}: only with --engine ray")
    paths_in = inputs.expand(a.inputs)
    for path in paths_in:
        inputs.check_input(path)
    if a.engine == "ray" and "-" in paths_in:
        raise MTLError("--engine ray reads files, not stdin (-)")
    spec = spec_of(a, cache=a.cache or a.out is None)
    model, ckpt = None, None
    if predict:
        from mtl import paths
        from mtl.engine.devices import checkpoint_backend
        from mtl.predict import embed_for, load_model

        model = str(a.model or paths.CHECKPOINT)
        ckpt = load_model(model)  # a missing or foreign checkpoint fails here, before any engine starts
        spec = replace(spec, backend=checkpoint_backend(spec.backend, ckpt.meta.get("backend")))

        def encode(texts, progress=None):
            return embed_for(ckpt, model, texts, spec, progress)[0]
    else:
        from mtl.engine.embed import encode as embed_texts

        def encode(texts, progress=None):
            return embed_texts(texts, spec, progress=progress)[0]
    job = stream.Job(
        command=a.cmd, inputs=paths_in, out=Path(a.out) if a.out else None, fmt=fmt, chunk_size=a.chunk_size or stream.CHUNK_SIZE,
        with_embeddings=bool(getattr(a, "with_embeddings", False)), model=model,
        backbone=None if predict else spec.backbone, layers=None if predict else spec.layers, backend=a.backend,
    )
    if job.out is None:  # embed, small: JSONL on stdout
        for texts, sources in inputs.iter_chunks(paths_in, job.chunk_size):
            sys.stdout.write(to_jsonl(label(texts, encode).rows(sources, with_embeddings=True)))
        return 0
    if a.engine == "ray":
        from mtl.corpus.ray_engine import ray_engine

        stream.run(job, *ray_engine(job, spec, a.workers, a.address))
        return 0
    stream.run(job, stream.local_engine(encode, ckpt))
    return 0


def cmd_cache(a) -> int:
    from pathlib import Path

    from mtl import paths
    from mtl.engine.cache import EmbeddingCache, folders

    root = Path(a.cache_dir or paths.CACHE_DIR)
    limits = (a.max_entries, a.max_mb, a.older_than)
    if a.action == "info" and any(v is not None for v in limits):
        raise MTLError("--max-entries/--max-mb/--older-than: only with `mtl cache prune`")
    if a.action == "prune" and all(v is None for v in limits):
        raise MTLError("prune: give --max-entries N, --max-mb M and/or --older-than DAYS")
    found = folders(root)
    if not found:
        print(f"{root}: no embedding cache")
        return 0
    for identity, mode in found:
        cache = EmbeddingCache(root, identity, mode)
        if a.action == "prune":
            before = cache.info()
            keep = a.max_entries
            if a.max_mb is not None and before["entries"]:
                per_entry = max(before["bytes"] / before["entries"], 1)
                keep = min(keep if keep is not None else before["entries"], int(a.max_mb * 1e6 / per_entry))
            gone = cache.prune(max_entries=keep, older_than_days=a.older_than)
            print(f"{identity}/{mode}: removed {gone} of {before['entries']} entries")
        i = cache.info()
        print(f"{identity}/{mode}: {i['entries']} entries, {i['bytes'] / 1e6:.1f} MB"
              + (f", last used {i['oldest_use']} .. {i['newest_use']}" if i["entries"] else "")
              + (f", {i['set_aside']} corrupt file(s) set aside" if i["set_aside"] else ""))
    return 0


def cmd_predict(a) -> int:
    from mtl import paths
    from mtl.inputs import read_all
    from mtl.predict import predictions, to_jsonl

    if a.out is not None or a.engine != "local":
        return cmd_corpus(a)
    for flag, value in (("--with-embeddings", a.with_embeddings), ("--chunk-size", a.chunk_size), ("--workers", a.workers),
                        ("--address", a.address), ("--cache", a.cache), ("--format parquet", a.format == "parquet")):
        if value:
            raise MTLError(f"{flag}: only with --out DIR")
    sources = a.inputs or [str(paths.TEST_SENTENCES)]
    texts = read_all(sources)
    if not texts:
        raise MTLError(f"{', '.join('<stdin>' if s == '-' else s for s in sources)}: no text to label (empty input)")
    pred = predictions(texts, a.model, spec_of(a))
    rows = pred.rows()
    for i, r in enumerate(rows):
        if r.get("error"):
            print(f"warning: input {i + 1}: {r['error']}, no prediction", file=sys.stderr)
    out = sys.stdout
    if a.format == "jsonl":
        out.write(to_jsonl(rows))
    elif a.format == "csv":
        import csv

        cols = pred.columns(sources=False)
        w = csv.writer(out)
        w.writerow(cols)
        for r in rows:
            w.writerow(["" if r.get(c) is None else json.dumps(r[c]) if c.endswith("_probs") else r[c] for c in cols])
    else:
        for r in rows:
            preds = "  ".join(f"{t}={r[t]} ({max(r[f'{t}_probs'].values()):.2f})" if r[t] else f"{t}=-" for t in pred.tasks)
            text = r["text"] if len(r["text"]) <= 70 else r["text"][:67] + "..."
            out.write(f"{text:<70}  {preds}\n")
    return 0


def cmd_evaluate(a) -> int:
    from mtl.atomic import write_text
    from mtl.evaluate import format_table
    from mtl.predict import evaluate_csv

    metrics = evaluate_csv(a.data, a.model, spec_of(a))["metrics"]
    if not metrics:
        raise MTLError(f"{a.data}: no labels for any task the model knows")
    print(format_table(metrics, f"{a.data}:"))
    if a.json:
        write_text(a.json, json.dumps(metrics, indent=2))
    return 0


def param_value(text: str):
    """`-p NAME VALUE`: numbers, lists and booleans as JSON or Python literals (`true` and `True` alike, so
    `-p full False` is False, not the truthy string "False"); anything else (e.g. "4-6", "cpu") stays a string."""
    import ast

    try:
        return json.loads(text)
    except ValueError:
        pass
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def cmd_notebooks(a) -> int:
    from mtl.nbtools.run import CHECKED_OUTPUTS, refresh_checked_outputs, run_all

    if a.refresh_outputs:
        for nb in refresh_checked_outputs(a.only):
            print(f"stored checked outputs of {nb.name} in {CHECKED_OUTPUTS}", file=sys.stderr)
        return 0
    params = {k: v for k, v in (("epochs", a.epochs), ("lr", a.lr), ("device", a.device), ("seed", a.seed)) if v is not None}
    if a.full:
        params["full"] = True
    params.update((name, param_value(value)) for name, value in a.param)
    run_all(params, only=a.only, out_dir=a.out, publish=a.publish)
    return 0


def cmd_compare(a) -> int:
    from mtl.research.compare import compare

    table = compare(a.data, a.model, folds=a.folds, spec=spec_of(a), out=a.out)
    print(table.to_string(index=False))
    return 0


def cmd_info(a) -> int:
    from mtl.engine.info import report

    print(report())
    return 0


COMMANDS = {
    "train": cmd_train, "compare": cmd_compare, "predict": cmd_predict, "evaluate": cmd_evaluate, "notebooks": cmd_notebooks,
    "embed": cmd_corpus, "cache": cmd_cache, "info": cmd_info,
}


def _interrupt(signum, frame):
    raise KeyboardInterrupt  # SIGTERM (e.g. `ray job stop`, `docker stop`) ends a run like Ctrl-C: one line, exit 130


def main(argv: list[str] | None = None) -> int:
    import signal
    import threading

    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    on_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _interrupt) if on_main else None
    if not args.debug:
        warnings.showwarning = lambda msg, cat, *rest, **kw: print(f"warning: {msg}", file=sys.stderr)
    try:
        return COMMANDS[args.cmd](args)
    except MTLError as exc:
        if args.debug:
            raise
        print(f"mtl {args.cmd}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"mtl {args.cmd}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    finally:
        if on_main:
            signal.signal(signal.SIGTERM, previous)
