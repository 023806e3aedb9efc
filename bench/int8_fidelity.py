"""Int8 options for the CPU, measured: speed and fidelity vs fp32 on real queries (issue 12).

Debian dev queries (the seeded sample of bench/fidelity.py), each with BM25's top 100 from the whole corpus, scored
by the trained cross-encoder (../shared/models/debian-minilm-ce; `--bi` adds the all-MiniLM-L6-v2 bi-encoder) with:

  fp32          the reference (rerankd's default on the CPU)
  dynamic       today's int8: dynamic quantization, QInt8 weights per channel (backends/quantize.py)
  static        static int8 calibrated on in-domain pairs (dev queries not evaluated here, with their BM25
                candidates): quantize_static, MinMax ranges, QDQ, U8 activations / S8 per-channel weights
  dynamic-keep-*  dynamic int8 with some MatMul/Gemm nodes kept in fp32 (nodes_to_exclude, by pattern)
  head-rescore  dynamic int8 for every document, then fp32 for the head (the top max(2 x top_n, 20) by int8,
                top_n = 10) of the same request: simulated from both precisions' scores; its speed is estimated
                from the two measured speeds (int8 over all pairs' tokens + fp32 over the head's tokens)
  int8-rescore  the same, built: `precision: int8-rescore` served by a real LocalService (pipeline/rescore.py),
                its ranking as served (no top_n: the head is rescore_head_min = 20, as for top_n = 10)
  ov-fp32, ov-bf16, ov-int8   the OpenVINO backend (backends/openvino.py) at fp32, bf16 (CPUs with bf16 only) and
                static int8 calibrated by NNCF on the packaged generic texts (not on this data)
  ov-int8-rescore-bf16, ov-int8-rescore-fp32   OpenVINO int8 for every document, the head again in bf16 / fp32,
                served as int8-rescore is

The served engines (fp32, int8, int8-rescore; `--served`, on by default) are also timed as a service answers
requests (top_n = 10, strategy direct), interleaved round by round in one run: the `served_*` rows.

Per option: docs/s (interleaved rounds over the same 200-document requests, best round; other processes on the
machine slow all options alike), and vs fp32 per query: Spearman, top-10 overlap, NDCG@10 delta (ranx).
Targets (issue 12): top-10 overlap >= 0.95, |NDCG@10 delta| <= 0.005. Scores are cached per option under the
rerankd cache folder (bench-int8/), so a re-run only scores what changed. `--search` tries more layer patterns on
the first 20 queries.

    .venv/bin/python bench/int8_fidelity.py [--queries 100] [--depth 100] [--options ...] [--search] [--bi]
                                            [--no-served] [--name int8_fidelity]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import re
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from common import DEBIAN_DATA, TRAINED_CE, format_table, machine, plot_path, save, spearman, top_k_overlap

from rerankd.backends.export import ensure_onnx
from rerankd.backends.onnx import OnnxBackend
from rerankd.backends.openvino import INT8_RECIPE
from rerankd.config import Settings
from rerankd.cores import available_cores
from rerankd.engine.engine import Engine
from rerankd.engine.tokenize import Tokenizer
from rerankd.evaluation.harness import measure
from rerankd.models import ModelSpec, resolve_model
from rerankd.pipeline.service import LocalService
from rerankd.pipeline.types import RerankRequest

TARGETS = {"top10_overlap": 0.95, "ndcg_delta": 0.005}
TOP_N = 10
HEAD = max(2 * TOP_N, 20)
HEAD_PATTERN = r"pooler|classifier"
# Node-name patterns kept in fp32 (regular expressions over the exported graph's MatMul/Gemm names).
KEEP = {
    "dynamic-keep-head": [HEAD_PATTERN],
    "dynamic-keep-head-lastffn": [HEAD_PATTERN, r"layer\.{last}/(intermediate|output)/"],
    "dynamic-keep-head-last": [HEAD_PATTERN, r"layer\.{last}/"],
    "dynamic-keep-ffn-out": [HEAD_PATTERN, r"layer\.\d+/output/dense"],
    "dynamic-keep-first-last": [HEAD_PATTERN, r"layer\.(0|{last})/"],
    "dynamic-keep-ffn": [HEAD_PATTERN, r"layer\.\d+/(intermediate|output)/dense"],
}
# OpenVINO engines scored through a real Engine: option -> precision.
OPENVINO = {"ov-fp32": "fp32", "ov-bf16": "bf16", "ov-int8": "int8"}
# Served int8-rescore variants: option -> (backend, head precision).
RESCORED = {
    "int8-rescore": ("onnx", "fp32"),
    "ov-int8-rescore-bf16": ("openvino", "bf16"),
    "ov-int8-rescore-fp32": ("openvino", "fp32"),
}
DEFAULT_OPTIONS = ["fp32", "dynamic", "static", "dynamic-keep-head-lastffn", "dynamic-keep-ffn-out", "int8-rescore"]
SERVED = ["fp32", "int8", "int8-rescore"]  # precisions timed through LocalService (--served-options adds more)
Rows = list[tuple[str, str, list[str]]]


# -- building the options ---------------------------------------------------------------------------------------


def build(option: str, spec: ModelSpec, cache_dir: Path, calibration: Sequence[tuple[str, str]]) -> Path:
    """The ONNX file of `option`, built once into the cache."""
    fp32 = ensure_onnx(spec, "fp32", cache_dir)
    if option == "fp32" or option in OPENVINO:  # OpenVINO reads the fp32 export (its int8 is built at load)
        return fp32
    if option == "dynamic":
        return ensure_onnx(spec, "int8", cache_dir)
    folder = cache_dir / "bench-int8" / f"{spec.short_name}-{spec.revision}-{option}"
    target = folder / "model.onnx"
    if target.is_file():
        return target
    folder.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    if option == "static":
        quantize_static_int8(spec, fp32, target, calibration)
    else:
        excluded = excluded_nodes(fp32, KEEP[option])
        quantize_dynamic_keeping(fp32, target, excluded)
    print(f"  built {option} in {time.perf_counter() - started:.0f} s", flush=True)
    return target


def excluded_nodes(model: Path, patterns: Sequence[str]) -> list[str]:
    import onnx

    graph = onnx.load(str(model), load_external_data=False).graph
    names = [node.name for node in graph.node if node.op_type in {"MatMul", "Gemm"}]
    layers = [int(m.group(1)) for name in names if (m := re.search(r"layer\.(\d+)/", name))]
    last = max(layers, default=0)
    compiled = [re.compile(pattern.replace("{last}", str(last))) for pattern in patterns]
    return [name for name in names if any(pattern.search(name) for pattern in compiled)]


def quantize_dynamic_keeping(source: Path, target: Path, excluded: list[str]) -> None:
    """Today's recipe (QInt8 per channel), with `excluded` nodes left in fp32."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        source, target, weight_type=QuantType.QInt8, per_channel=True, reduce_range=False, nodes_to_exclude=excluded
    )


def quantize_static_int8(spec: ModelSpec, source: Path, target: Path, pairs: Sequence[tuple[str, str]]) -> None:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    tokenizer = Tokenizer(spec)
    batches = []
    for start in range(0, len(pairs), 8):
        chunk = pairs[start : start + 8]
        if spec.kind == "cross-encoder":
            items = [tokenizer.encode_pairs(tokenizer.tokens([q])[0], [d])[0] for q, d in chunk]
        else:
            items = tokenizer.encode_texts([d for _, d in chunk])
        batch = tokenizer.collate(items)
        feeds = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask}
        if batch.token_type_ids is not None:
            feeds["token_type_ids"] = batch.token_type_ids
        batches.append(feeds)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter(batches)

        def get_next(self) -> dict | None:
            return next(self.items, None)

    quantize_static(
        source,
        target,
        Reader(),
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=["MatMul", "Gemm"],
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=CalibrationMethod.MinMax,
        extra_options={"WeightSymmetric": True, "ActivationSymmetric": False},
    )


def load_data(queries: int, depth: int, calibration: int = 256) -> tuple[Rows, dict, dict, list[tuple[str, str]]]:
    """The evaluated queries with BM25's top `depth` (as bench/fidelity.py picks them), and `calibration` in-domain
    pairs for static quantization: 32 other dev queries (never evaluated here), each with BM25's top candidates."""
    from rerankd.datasets import load_beir
    from rerankd.evaluation.harness import sample_queries
    from rerankd.first_stage import Bm25

    data = load_beir(DEBIAN_DATA)
    ordered = sample_queries(data, None, seed=0)  # the same order as bench/fidelity.py's sample
    chosen, others = ordered[:queries], ordered[-32:]
    saved = Settings().cache_dir / "bench-int8" / f"candidates-{queries}-{depth}-{calibration}.json"
    if saved.is_file():  # BM25 over the 55k-document corpus takes minutes on a busy 2-core machine
        found = json.loads(saved.read_text())
        rows = [(qid, data.queries[qid], docs) for qid, docs in found["rows"]]
        return rows, data.corpus, data.qrels, [(data.queries[q], data.corpus[d]) for q, d in found["pairs"]]
    doc_ids = list(data.corpus)
    started = time.perf_counter()
    index = Bm25([data.corpus[doc] for doc in doc_ids])
    top, _ = index.top([data.queries[q] for q in chosen], k=depth)
    rows = [(qid, data.queries[qid], [doc_ids[i] for i in row]) for qid, row in zip(chosen, top, strict=True)]
    top, _ = index.top([data.queries[q] for q in others], k=calibration // len(others))
    pair_ids = [(q, doc_ids[i]) for q, row in zip(others, top, strict=True) for i in row]
    pairs = [(data.queries[q], data.corpus[d]) for q, d in pair_ids]
    saved.parent.mkdir(parents=True, exist_ok=True)
    saved.write_text(json.dumps({"rows": [(qid, docs) for qid, _, docs in rows], "pairs": pair_ids}))
    print(f"BM25 for {len(chosen)} + {len(others)} queries in {time.perf_counter() - started:.0f} s", flush=True)
    return rows, data.corpus, data.qrels, pairs


# -- scoring ------------------------------------------------------------------------------------------------------


def engine_for(spec: ModelSpec, model: Path, option: str) -> Engine:
    settings = Settings(backend="onnx", precision="fp32", device="cpu", warmup_seconds=0, score_cache_mb=0)
    if option in OPENVINO:
        return Engine.load(spec, settings.model_copy(update={"backend": "openvino", "precision": OPENVINO[option]}))
    precision = "fp32" if option == "fp32" else "int8"
    backend = OnnxBackend(spec, model, device="cpu", precision=precision, threads=available_cores())
    return Engine(spec, Tokenizer(spec), backend, settings)


def option_digest(option: str, model: Path) -> str:
    """What an option's scores depend on: its model file, and for OpenVINO its version and int8 recipe."""
    digest = hashlib.sha256(model.read_bytes())
    if option in OPENVINO or option in RESCORED:
        import openvino

        digest.update(f"{openvino.__version__}-{INT8_RECIPE}".encode())
    return digest.hexdigest()[:12]


def score_rows(engine: Engine, rows: Rows, corpus: dict[str, str]) -> list[np.ndarray]:
    """Raw scores per query, one request per query (as a service sees them)."""

    async def run() -> list[np.ndarray]:
        return [
            await engine.score(await engine.prepare(query, [corpus[d] for d in docs]), raw=True)
            for _, query, docs in rows
        ]

    return asyncio.run(run())


def cached_scores(option: str, spec: ModelSpec, model: Path, rows: Rows, corpus: dict, cache_dir: Path) -> list:
    digest = option_digest(option, model)
    ids = hashlib.sha256(json.dumps([(q, d) for q, _, d in rows]).encode()).hexdigest()[:12]
    path = cache_dir / "bench-int8" / f"scores-{spec.short_name}-{option}-{digest}-{ids}.npz"
    if path.is_file():
        saved = np.load(path)
        return np.split(saved["scores"], np.cumsum(saved["lengths"])[:-1])
    engine = engine_for(spec, model, option)
    started = time.perf_counter()
    try:
        scores = score_rows(engine, rows, corpus)
    finally:
        engine.close()
    pairs = sum(len(s) for s in scores)
    print(f"  {spec.short_name} {option}: {pairs} pairs in {time.perf_counter() - started:.0f} s", flush=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, scores=np.concatenate(scores), lengths=np.array([len(s) for s in scores]))
    return scores


def speeds(spec: ModelSpec, models: dict[str, Path], requests: list[list[str]], rounds: int) -> dict[str, dict]:
    """docs/s and real tokens/s of each option on the same requests, interleaved round by round; best round."""
    engines = {name: engine_for(spec, path, name) for name, path in models.items()}
    tokenizer = Tokenizer(spec)
    try:
        prepared = [[engine.prepare_sync(q, docs) for q, docs in requests] for engine in engines.values()]
        tokens = sum(p.tokens for p in prepared[0])
        docs = sum(len(d) for _, d in requests)
        best = dict.fromkeys(engines, float("inf"))
        loop = asyncio.new_event_loop()
        for engine, prep in zip(engines.values(), prepared, strict=True):
            loop.run_until_complete(engine.score(prep[0]))  # untimed: first-call costs
        for _ in range(rounds):
            for (name, engine), prep in zip(engines.items(), prepared, strict=True):
                started = time.perf_counter()
                for request in prep:
                    loop.run_until_complete(engine.score(request))
                best[name] = min(best[name], time.perf_counter() - started)
        loop.close()
    finally:
        for engine in engines.values():
            engine.close()
    del tokenizer
    return {name: {"docs_per_s": docs / t, "tokens_per_s": tokens / t} for name, t in best.items()}


def service_for(spec: ModelSpec, option: str) -> LocalService:
    """A real in-process service for `option` (a precision, or a RESCORED variant), with nothing that would blur
    the timing (no cache, no admission limit, no embedding pre-filter)."""
    backend, precision, head = "onnx", option, "auto"
    if option in RESCORED:
        (backend, head), precision = RESCORED[option], "int8-rescore"
    elif option in OPENVINO:
        backend, precision = "openvino", OPENVINO[option]
    settings = Settings(
        model=[str(spec.path)], backend=backend, device="cpu", precision=precision, rescore_head_precision=head,
        warmup_seconds=0, score_cache_mb=0, max_queue_seconds=0, request_timeout_seconds=0, embedding_model="",
    )  # fmt: skip
    service = LocalService(settings, specs=[spec])
    service.load()
    return service


def served_rankings(spec: ModelSpec, precision: str, rows: Rows, corpus: dict, cache_dir: Path) -> list[np.ndarray]:
    """Per query, a score per document whose order is the served ranking (every document, no top_n), cached."""
    digest = hashlib.sha256(
        b"".join(ensure_onnx(spec, p, cache_dir).read_bytes() for p in ("fp32", "int8"))
        + option_digest(precision, ensure_onnx(spec, "fp32", cache_dir)).encode()
    ).hexdigest()[:12]
    ids = hashlib.sha256(json.dumps([(q, d) for q, _, d in rows]).encode()).hexdigest()[:12]
    path = cache_dir / "bench-int8" / f"served-{spec.short_name}-{precision}-{HEAD}-{digest}-{ids}.npz"
    if path.is_file():
        saved = np.load(path)
        return np.split(saved["scores"], np.cumsum(saved["lengths"])[:-1])
    service = service_for(spec, precision)
    started = time.perf_counter()
    try:
        results = [
            asyncio.run(service.rerank(RerankRequest(query, [corpus[d] for d in docs], strategy="direct")))
            for _, query, docs in rows
        ]
    finally:
        service.close()
    scores = []
    for result in results:
        ranked = np.empty(len(result.results))
        ranked[[r.index for r in result.results]] = -np.arange(len(result.results), dtype=np.float64)
        scores.append(ranked)
    print(f"  {spec.short_name} served {precision}: {len(rows)} requests in {time.perf_counter() - started:.0f} s")
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, scores=np.concatenate(scores), lengths=np.array([len(s) for s in scores]))
    return scores


def served_speeds(
    spec: ModelSpec, requests: list[tuple[str, list[str]]], rounds: int, extra: Sequence[str] = ()
) -> dict[str, dict]:
    """docs/s of each served precision (and `extra` options) answering the same requests (top_n = TOP_N),
    interleaved round by round; best round per precision."""
    services = {option: service_for(spec, option) for option in dict.fromkeys([*SERVED, *extra])}
    docs = sum(len(d) for _, d in requests)
    best = dict.fromkeys(services, float("inf"))
    try:
        loop = asyncio.new_event_loop()

        def answer(service: LocalService, query: str, documents: list[str]) -> None:
            request = RerankRequest(query, documents, top_n=TOP_N, strategy="direct")
            loop.run_until_complete(service.rerank(request))

        for service in services.values():
            answer(service, *requests[0])  # untimed: first-call costs
        for _ in range(rounds):
            for precision, service in services.items():
                started = time.perf_counter()
                for query, documents in requests:
                    answer(service, query, documents)
                best[precision] = min(best[precision], time.perf_counter() - started)
        loop.close()
    finally:
        for service in services.values():
            service.close()
    return {precision: {"docs_per_s": docs / seconds} for precision, seconds in best.items()}


# -- fidelity -----------------------------------------------------------------------------------------------------


def head_rescored(fast: np.ndarray, exact: np.ndarray, head: int = HEAD) -> np.ndarray:
    """Scores whose order is what head re-scoring returns: the int8 top `head` re-ordered by fp32, above the
    rest in int8 order."""
    order = np.argsort(-fast, kind="stable")
    combined = np.empty_like(fast, dtype=np.float64)
    top = order[:head]
    span = float(exact.max() - exact.min()) + float(fast.max() - fast.min()) + 1.0
    combined[top] = exact[top] + span + float(fast.max())  # every head score above every other
    combined[order[head:]] = fast[order[head:]]
    return combined


def fidelity(name: str, rows: Rows, exact: list[np.ndarray], fast: list[np.ndarray], qrels: dict) -> dict[str, Any]:
    correlations = [spearman(a, b) for a, b in zip(exact, fast, strict=True)]
    overlap = [top_k_overlap(a, b) for a, b in zip(exact, fast, strict=True)]
    ndcg_exact = measure(qrels, rankings(rows, exact))["ndcg@10"]
    ndcg = measure(qrels, rankings(rows, fast))["ndcg@10"]
    return {
        "option": name,
        "spearman": float(np.mean(correlations)),
        "spearman_min": float(np.min(correlations)),
        "top10_overlap": float(np.mean(overlap)),
        "top10_overlap_min": float(np.min(overlap)),
        "ndcg@10": ndcg,
        "ndcg_delta": ndcg - ndcg_exact,
        "per_query_overlap": overlap,
    }


def rankings(rows: Rows, scores: list[np.ndarray]) -> dict[str, list[str]]:
    return {
        qid: [docs[i] for i in np.argsort(-s, kind="stable")] for (qid, _, docs), s in zip(rows, scores, strict=True)
    }


def head_tokens_fraction(spec: ModelSpec, rows: Rows, corpus: dict, fast: list[np.ndarray]) -> float:
    """Tokens of the head pairs over tokens of all pairs (what fp32 re-scoring adds, relative)."""
    tokenizer = Tokenizer(spec)
    total = head = 0
    for (_, query, docs), scores in zip(rows, fast, strict=True):
        lengths = np.array([len(item) for item in tokenizer.encode_pairs(tokenizer.tokens([query])[0],
                                                                         [corpus[d] for d in docs])])  # fmt: skip
        total += int(lengths.sum())
        head += int(lengths[np.argsort(-scores, kind="stable")[:HEAD]].sum())
    return head / total


def evaluate_model(label: str, spec: ModelSpec, args: argparse.Namespace, data: tuple) -> list[dict[str, Any]]:
    rows, corpus, qrels, calibration = data
    cache_dir = Settings().cache_dir
    options = list(dict.fromkeys(["fp32", "dynamic", *args.options]))
    built = [option for option in options if option not in RESCORED]
    models = {option: build(option, spec, cache_dir, calibration) for option in built}
    scores = {option: cached_scores(option, spec, path, rows, corpus, cache_dir) for option, path in models.items()}
    exact = scores["fp32"]
    requests = [(query, [corpus[d] for d in docs]) for _, query, docs in rows[: args.speed_requests]]
    speed = speeds(spec, models, requests, rounds=args.speed_rounds)
    results = []
    for option in built:
        row = {"model": label, **fidelity(option, rows, exact, scores[option], qrels), **speed[option]}
        results.append(row)
    # Head re-scoring simulated: dynamic int8 for all, fp32 for the head; speed estimated from the two speeds.
    rescored = [head_rescored(f, e) for f, e in zip(scores["dynamic"], exact, strict=True)]
    row = {"model": label, **fidelity("head-rescore (simulated)", rows, exact, rescored, qrels)}
    fraction = head_tokens_fraction(spec, rows, corpus, scores["dynamic"])
    seconds_per_token = 1 / speed["dynamic"]["tokens_per_s"] + fraction / speed["fp32"]["tokens_per_s"]
    ratio = speed["dynamic"]["docs_per_s"] / speed["dynamic"]["tokens_per_s"]  # docs per token, same requests
    row["tokens_per_s"] = 1 / seconds_per_token
    row["docs_per_s"] = ratio / seconds_per_token
    row["head_token_fraction"] = fraction
    results.append(row)
    for row in results:
        row["vs_fp32_speed"] = row["docs_per_s"] / speed["fp32"]["docs_per_s"]
    rescored = [option for option in options if option in RESCORED]
    for option in rescored:  # the built modes: served rankings (cross-encoder and bi-encoder alike)
        ranked = served_rankings(spec, option, rows, corpus, cache_dir)
        results.append({"model": label, **fidelity(f"{option} (served)", rows, exact, ranked, qrels)})
    if args.served:  # fp32, int8 and the int8-rescore variants answering requests, one interleaved run
        served = served_speeds(spec, requests, rounds=args.speed_rounds, extra=rescored)
        for precision, measured in served.items():
            row = next((r for r in results if r["option"] == f"{precision} (served)"), None)
            if row is None:
                row = {"model": label, "option": f"served {precision}"}
                results.append(row)
            row["docs_per_s"] = measured["docs_per_s"]
            row["vs_fp32_speed"] = measured["docs_per_s"] / served["fp32"]["docs_per_s"]
            row["vs_int8_speed"] = measured["docs_per_s"] / served["int8"]["docs_per_s"]
            row["speed_source"] = "served, interleaved with served fp32 and int8"
    for row in results:
        if "top10_overlap" in row:
            # Rounded to 1e-9 first: a delta of exactly the limit (one query's -0.5 over 100) sums to a float a
            # hair past it, and the printed limit is met.
            ndcg_delta = round(abs(row["ndcg_delta"]), 9)
            row["met"] = row["top10_overlap"] >= TARGETS["top10_overlap"] and ndcg_delta <= TARGETS["ndcg_delta"]
    return results


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(9, 5.5))
    for row in (row for row in rows if "top10_overlap" in row and "vs_fp32_speed" in row):
        marker = "o" if row["model"].endswith("(bi)") else "s"
        axis.scatter(row["vs_fp32_speed"], row["top10_overlap"], marker=marker, color="green" if row["met"] else "red")
        axis.annotate(f"{row['option']} ({row['ndcg_delta']:+.3f})", (row["vs_fp32_speed"], row["top10_overlap"]),
                      fontsize=7, xytext=(4, 3), textcoords="offset points")  # fmt: skip
    axis.axhline(TARGETS["top10_overlap"], color="grey", linestyle="--", label="top-10 overlap target")
    axis.set_xlabel("speed vs fp32 (docs/s ratio, same run)")
    axis.set_ylabel("top-10 overlap with fp32 (mean over queries)")
    cpu = machine()["cpu"]
    axis.set_title(f"int8 options: {cpu['model']} [{' '.join(cpu['flags'])}]  (label: NDCG@10 delta)", fontsize=9)
    axis.grid(True, alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def search_options() -> Iterator[str]:
    yield from KEEP


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--depth", type=int, default=100, help="BM25 candidates per query")
    parser.add_argument(
        "--options",
        nargs="+",
        default=DEFAULT_OPTIONS,
        choices=["fp32", "dynamic", "static", *KEEP, *OPENVINO, *RESCORED],
    )
    parser.add_argument("--search", action="store_true", help="every keep-in-fp32 pattern, on the first 20 queries")
    parser.add_argument("--bi", action="store_true", help="also the all-MiniLM-L6-v2 bi-encoder")
    parser.add_argument("--speed-requests", type=int, default=2, help="requests (queries) timed for docs/s")
    parser.add_argument("--speed-rounds", type=int, default=2)
    parser.add_argument("--no-served", dest="served", action="store_false", help="skip the served speed rows")
    parser.add_argument("--name", default="int8_fidelity", help="results file name (bench/results/NAME.json)")
    args = parser.parse_args()
    if args.search:
        args.queries, args.options = min(args.queries, 20), ["fp32", "dynamic", "static", *search_options()]
    if not DEBIAN_DATA.is_dir() or not TRAINED_CE.is_dir():
        raise SystemExit("the Debian data set and the trained cross-encoder (../shared) are needed")
    started = time.perf_counter()
    data = load_data(args.queries, args.depth)
    results = evaluate_model("debian-minilm-ce", resolve_model(str(TRAINED_CE)), args, data)
    if args.bi:
        results += evaluate_model("all-MiniLM-L6-v2 (bi)", resolve_model("default"), args, data)
    columns = ["model", "option", "docs_per_s", "vs_fp32_speed", "vs_int8_speed", "spearman", "spearman_min"]
    columns += ["top10_overlap"]
    columns += ["top10_overlap_min", "ndcg@10", "ndcg_delta", "met"]
    cpu = machine()["cpu"]
    heading = f"{cpu['model']} [{' '.join(cpu['flags'])}], {available_cores()} cores; {args.queries} Debian dev "
    heading += f"queries x BM25 top {args.depth}; targets {TARGETS}; {time.perf_counter() - started:.0f} s"
    print(f"\n{heading}\n" + format_table(results, columns))
    name = "int8_fidelity-search" if args.search else args.name
    payload = {"queries": args.queries, "depth": args.depth, "targets": TARGETS, "head": HEAD, "rows": results}
    path = save(name, payload | {"keep_patterns": KEEP, "seconds": time.perf_counter() - started})
    plot(results, plot_path(name))
    print(f"saved {path} and {plot_path(name)}")


if __name__ == "__main__":
    main()
