"""The `rerankd eval` command line: arguments, loading, and the printed and written report."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rerankd.config import Settings

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


def run(args: argparse.Namespace, settings: Settings) -> int:
    try:
        from rerankd.evaluation import harness, output
    except ImportError as exc:
        print(f"rerankd: eval needs the eval extra ({exc.name}): pip install 'rerankd[eval]'", file=sys.stderr)
        return 2
    from rerankd.datasets import load_beir
    from rerankd.pipeline.service import LocalService

    dataset = load_beir(args.dataset, args.split)
    final = settings.model[0]
    served = [final] if final == settings.embedding_model else [final, settings.embedding_model]
    # No score cache: the timed sample replays queries the accuracy pass scored, whose pairs it would answer.
    service = LocalService(settings.model_copy(update={"model": served, "score_cache_mb": 0}))
    print(f"rerankd eval: loading {', '.join(served)}", file=sys.stderr)
    service.load()
    try:
        engines = service.registry.engines
        config = harness.EvalConfig(
            model=engines[0].spec.name,
            bi_model=engines[-1].spec.name,
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
