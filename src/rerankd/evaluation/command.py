"""The `rerankd eval` command line: arguments, loading, and the printed and written report."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from rerankd.config import Settings

if TYPE_CHECKING:
    from rerankd.pipeline.service import LocalService

# Settings that shape an evaluation run (the final scorer is the first --model).
EVAL_SETTINGS = (
    "model",
    "backend",
    "precision",
    "device",
    "threads",
    "max_batch_tokens",
    "max_batch_size",
    "cache_dir",
    "embedding_model",
    "rrf_k",
    "warmup_seconds",
    "corpus_stats",
    "corpus_stats_mb",
    "corpus_stats_warm_documents",
    "calibration",
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset", help="BEIR-format folder: corpus.jsonl, queries[-SPLIT].jsonl, qrels/SPLIT.tsv")
    parser.add_argument("--split", default="dev", help="query split to evaluate (default: dev)")
    parser.add_argument(
        "--depth", type=int, action="append", help="BM25 candidates per query, repeatable (default: 100 and 1000)"
    )
    parser.add_argument("--queries", type=int, default=None, help="evaluate a seeded sample of this many queries")
    parser.add_argument(
        "--max-pairs", type=int, default=100_000, help="per depth, at most queries x depth model pairs (default 100000)"
    )
    parser.add_argument(
        "--timed-queries", type=int, default=10, help="queries timed through the service per strategy (default 10)"
    )
    parser.add_argument("--hybrid-k", type=int, action="append", help="hybrid K values (default: 10 20 30 50 100)")
    parser.add_argument("--fusion-weight", type=float, action="append", help="fixed fusion weights (0.3 0.5 0.7)")
    parser.add_argument(
        "--fit-fraction", type=float, default=0.5, help="queries that fit the fusion weight; 0 = no fitting"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the query sample and split")
    parser.add_argument("--out", default="bench/results", help="folder for the JSON and PNG (default bench/results)")
    parser.add_argument("--name", default=None, help="file name stem (default eval-<dataset folder>)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument(
        "--learn-queries",
        type=int,
        default=0,
        help="first send the service this many --learn-split queries' BM25 candidates, as traffic it learns BM25 "
        "statistics from (default 0)",
    )
    parser.add_argument("--learn-split", default="train", help="the split --learn-queries come from (default train)")
    parser.add_argument(
        "--score-store", default=None, help="JSON file keeping model scores between runs (scoring is the slow part)"
    )
    parser.add_argument(
        "--first-stage-model",
        default=None,
        help="a model (a ColBERT, a small cross-encoder) also evaluated alone and as a cascade's first stage in "
        "front of --model (requests' first_stage_model), at every --hybrid-k",
    )


def add_calibrate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset", help="BEIR-format folder: corpus.jsonl, queries[-SPLIT].jsonl, qrels/SPLIT.tsv")
    parser.add_argument("--split", default="train", help="labelled split to fit on (default: train)")
    parser.add_argument("--output", required=True, help="the calibration file to write (JSON)")
    parser.add_argument(
        "--strategy",
        action="append",
        help="a variant to fit a map for, repeatable: direct, hybrid:K, bi-encoder:K, each optionally +zscore:W or "
        "+rrf:W (default: direct and hybrid:30+zscore:0.5)",
    )
    parser.add_argument("--queries", type=int, default=300, help="a seeded sample of this many queries (default 300)")
    parser.add_argument("--depth", type=int, default=100, help="BM25 candidates per query (default 100)")
    parser.add_argument("--holdout", type=float, default=0.3, help="share of queries that judge the fit (0.3)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the query sample and the hold-out")
    parser.add_argument("--score-store", default=None, help="JSON file keeping model scores between runs")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def _service(settings: Settings, models: list[str]) -> LocalService:
    from rerankd.pipeline.service import LocalService

    # No score cache: the timed sample replays queries the accuracy pass scored, whose pairs it would answer.
    service = LocalService(settings.model_copy(update={"model": models, "score_cache_mb": 0}))
    print(f"rerankd: loading {', '.join(models)}", file=sys.stderr)
    service.load()
    return service


def run(args: argparse.Namespace, settings: Settings) -> int:
    try:
        from rerankd.evaluation import harness, output
    except ImportError as exc:
        print(f"rerankd: eval needs the eval extra ({exc.name}): pip install 'rerankd[eval]'", file=sys.stderr)
        return 2
    from rerankd.datasets import load_beir
    from rerankd.evaluation.score_store import ScoreStore
    from rerankd.pipeline.calibration import Calibration

    dataset = load_beir(args.dataset, args.split)
    learn = []
    if args.learn_queries:
        other = load_beir(args.dataset, args.learn_split)
        learn = [other.queries[q] for q in harness.sample_queries(other, args.learn_queries, args.seed)]
    final = settings.model[0]
    # Without an embedding model (`--embedding-model ""`), no bi-encoder rows: half the scoring.
    served = (
        [final]
        if final == settings.embedding_model or not settings.embedding_model
        else [final, settings.embedding_model]
    )
    first_model = args.first_stage_model
    service = _service(settings, served if first_model is None else [*served, first_model])
    try:
        engines = service.registry.engines
        calibrations = [Calibration.load(path) for path in settings.calibration]
        calibration = next(
            (c for c in calibrations if service.registry.get(c.model).spec.name == engines[0].spec.name), None
        )
        config = harness.EvalConfig(
            model=engines[0].spec.name,
            bi_model=engines[len(served) - 1].spec.name if settings.embedding_model else None,
            first_model=None if first_model is None else engines[-1].spec.name,
            depths=tuple(args.depth or (100, 1000)),
            queries=args.queries,
            max_pairs=args.max_pairs,
            timed_queries=args.timed_queries,
            hybrid_ks=tuple(args.hybrid_k or (10, 20, 30, 50, 100)),
            fusion_weights=tuple(args.fusion_weight or (0.3, 0.5, 0.7)),
            fit_fraction=args.fit_fraction,
            rrf_k=settings.rrf_k,
            seed=args.seed,
            progress=not args.no_progress,
            learn_queries=learn,
            calibration=calibration,
            score_store=ScoreStore(Path(args.score_store) if args.score_store else None),
        )
        result = harness.Evaluation(dataset, service, config).run()
        score_cache = any(engine.cache is not None for engine in engines)
    finally:
        service.close()
    result = {"dataset": str(Path(args.dataset).resolve()), "model": config.model, "score_cache": score_cache, **result}
    print(output.tables(result))
    name = args.name or f"eval-{Path(args.dataset).resolve().name}"
    for path in output.write(result, Path(args.out), name):
        print(f"wrote {path}", file=sys.stderr)
    return 0


def run_calibrate(args: argparse.Namespace, settings: Settings) -> int:
    """Fit a map per variant on the labelled split's scores through the service, and write the calibration file."""
    try:
        from rerankd.evaluation import calibrate, harness
        from rerankd.evaluation.variants import Variant
    except ImportError as exc:
        print(f"rerankd: calibrate needs the eval extra ({exc.name}): pip install 'rerankd[eval]'", file=sys.stderr)
        return 2
    from rerankd.datasets import load_beir
    from rerankd.evaluation.score_store import ScoreStore
    from rerankd.pipeline.calibration import Calibration

    variants = [Variant.from_key(key) for key in args.strategy or ("direct", "hybrid:30+zscore:0.5")]
    dataset = load_beir(args.dataset, args.split)
    # The service calibrates nothing while its scores are being fitted.
    service = _service(settings.model_copy(update={"calibration": []}), [settings.model[0]])
    try:
        model = service.registry.engines[0].spec.name
        config = harness.EvalConfig(
            model=model,
            bi_model=None,
            depths=(args.depth,),
            queries=args.queries,
            rrf_k=settings.rrf_k,
            seed=args.seed,
            progress=not args.no_progress,
            score_store=ScoreStore(Path(args.score_store) if args.score_store else None),
        )
        evaluation = harness.Evaluation(dataset, service, config)
        scores, statistics = evaluation.candidate_scores()
    finally:
        service.close()
    maps = {}
    for variant in variants:
        returned = {qid: variant.returned(query, settings.rrf_k)[1] for qid, query in scores.items()}
        relevant = {
            qid: np.array([dataset.qrels[qid].get(doc, 0) > 0 for doc in query.doc_ids], dtype=np.float64)
            for qid, query in scores.items()
        }
        feature = "identity" if variant.fusion != "none" else "logit"
        maps[variant.name] = calibrate.fit_map(calibrate.Labelled(returned, relevant), feature, args.holdout, args.seed)
        report = maps[variant.name].report
        print(
            f"{variant.name}: {maps[variant.name].method}, held-out Brier {report['held_out']}, thresholds "
            f"{report['thresholds_for_precision']}",
            file=sys.stderr,
        )
    meta = {
        "dataset": str(Path(args.dataset).resolve()),
        "split": args.split,
        "queries": len(scores),
        "depth": args.depth,
        "bm25_statistics": statistics,
        "fusion_first_stage": "bm25",
    }
    Calibration(model, maps, meta).save(Path(args.output))
    print(f"wrote {args.output}", file=sys.stderr)
    return 0
