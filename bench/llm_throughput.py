"""LLM reranker throughput on the CPU: a Qwen3-Reranker-0.6B-shaped model against sentence-transformers, and the
cascade that makes it usable there, in one bounded run.

The model has Qwen3-Reranker-0.6B's shape (28 layers, hidden 1024, 16 query / 8 key-value heads of 128, MLP 3072,
tied embeddings) with RANDOM weights: its speed is the real model's, its scores mean nothing. It is built once into
the rerankd cache in sentence-transformers' CrossEncoder format, with the small byte-level BPE tokenizer and the
Qwen3-Reranker chat template of tests/test_golden_llm.py and a 512-token window. That tokenizer's 678-entry vocabulary
(the real one has 151,669) changes no FLOP that matters here: rerankd applies 2 rows of the LM head, and
sentence-transformers the full head at the last position only (`logits_to_keep=1`, 0.3 GFLOP per document with the
real vocabulary, <0.3% of the forward). It does split English into ~3.9 tokens per word where Qwen's tokenizer
needs ~1.35, so every document (a Debian package description) is cut to 1.35 tokens per word of its text: the
token counts are those the real model would see (template and query included: 82 tokens).

Measured, in this order, each bounded in time:
  - sentence-transformers `CrossEncoder.predict` (the baseline), rerankd onnx fp32 and torch fp32 in-process
    (Engine.load + prepare + score) at 10 and 100 documents, interleaved round by round; int8 is refused for LLM
    rerankers by design (tests/test_golden_llm.py);
  - the share of this CPU's fp32 GEMM peak (numpy, measured in the same run) each reaches: FLOPs = per document,
    2 x non-embedding parameters x tokens + 4 x layers x tokens^2 x (heads x head_dim) (QK^T and AV, the full square
    as the kernels compute it), over the unpadded prompt lengths;
  - through `rerankd serve` over HTTP (onnx fp32, the CPU default), the cascade `{"strategy": "hybrid",
    "first_stage_model": "ce-fixture", "candidates": 20}` (MiniLM-L6 cross-encoder shape picks 20, the Qwen3 shape
    scores those) at 100 and 1,000 documents, and the LLM alone on 1,000 documents: measured in full when the
    remaining time allows, else on a random subset and extrapolated per document (the table and JSON say so).

Targets (issue 11): the Qwen3 shape at 100 documents within 1.5x of the time its FLOPs need at the measured peak
(fraction >= 0.67); the cascade on 1,000 documents >= 10x faster than the LLM alone.

    .venv/bin/python bench/llm_throughput.py [--budget-seconds 600]
    .venv/bin/python bench/llm_throughput.py --in-process-only --systems "onnx-fp32" --name llm_throughput_onnx

Shared-prefix reuse (torch runs a batch's common template + instruction + query tokens once, issue 11): the system
`torch-fp32-full` is the torch backend with it off (every prompt in full), measured beside `torch-fp32` (on, the
default). Rows then carry `executed_gflop` (what ran: the prefix once per batch) beside `gflop` (full prompts, what
sentence-transformers computes) and the share of the peak each gives:

    .venv/bin/python bench/llm_throughput.py --in-process-only --layers 4 --rounds 3 \
        --systems "torch-fp32-full,torch-fp32,onnx-fp32" --name llm_prefix
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from common import DEBIAN_DATA, format_table, plot_path, save
from throughput import QUERY, Baseline, Budget, InProcess, Served, gemm_peaks

from rerankd.cachedir import build_once
from rerankd.config import default_cache_dir
from rerankd.models import ModelSpec, resolve_model

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the golden suite's tokenizer recipe

MODEL_VERSION = 1  # bump when the recipe below changes
WINDOW = 512  # tokens per prompt, template included
QWEN_TOKENS_PER_WORD = 1.35  # Qwen's tokenizer on English prose: documents are cut to this many tokens per word
QWEN3_0_6B = {
    "hidden_size": 1024, "num_hidden_layers": 28, "num_attention_heads": 16, "num_key_value_heads": 8,
    "head_dim": 128, "intermediate_size": 3072, "max_position_embeddings": 4096, "rms_norm_eps": 1e-6,
    "tie_word_embeddings": True,
}  # fmt: skip
ENGINES = {"onnx-fp32": ("onnx", "fp32"), "torch-fp32": ("torch", "fp32")}
SYSTEMS = ["sentence-transformers", *ENGINES]
FULL_PROMPTS = "torch-fp32-full"  # torch with shared-prefix reuse off: on request only (--systems)
CASCADE = {"strategy": "hybrid", "first_stage_model": "ce-fixture", "candidates": 20}
FLOPS_TARGET = 1 / 1.5  # within 1.5x of the FLOPs' time at peak
CASCADE_TARGET = 10.0  # cascade >= 10x faster than the LLM alone on 1,000 documents
CONTENTION = "other benchmarks may share these cores: compare ratios within this run, not absolute numbers"


# -- the model ----------------------------------------------------------------------------------------------------


def build_qwen3_shape(layers: int = QWEN3_0_6B["num_hidden_layers"]) -> Path:
    """Qwen3-Reranker-0.6B's shape, random weights, sentence-transformers CrossEncoder format; built once. Fewer
    `layers` give the same width at a fraction of the depth (bench/llm_profile.py)."""
    depth = "" if layers == QWEN3_0_6B["num_hidden_layers"] else f"-{layers}layers"
    target = default_cache_dir() / "fixtures" / f"bench-qwen3-reranker-0.6b-shape-v{MODEL_VERSION}{depth}"

    def build(folder: Path) -> None:
        import torch
        from sentence_transformers import CrossEncoder
        from test_golden_llm import RECIPES
        from transformers import AutoModelForCausalLM, Qwen3Config

        _, tokenizer, template = RECIPES["qwen3"]()  # tiny config discarded: tokenizer + template kept
        tokenizer.model_max_length = WINDOW
        shape = {**QWEN3_0_6B, "num_hidden_layers": layers}
        config = Qwen3Config(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, **shape)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = AutoModelForCausalLM.from_config(config).eval()
        plain = folder / "hf"
        model.save_pretrained(plain)
        tokenizer.save_pretrained(plain)
        del model
        CrossEncoder(str(plain), device="cpu", max_length=WINDOW).save(str(folder))
        answers = [tokenizer.convert_tokens_to_ids(token) for token in (template.true_token, template.false_token)]
        (folder / "1_LogitScore" / "config.json").write_text(
            json.dumps({"true_token_id": answers[0], "false_token_id": answers[1]})
        )
        st_config = folder / "sentence_bert_config.json"
        settings = json.loads(st_config.read_text()) if st_config.is_file() else {}
        st_config.write_text(json.dumps({**settings, "max_seq_length": WINDOW}))
        shutil.rmtree(plain)  # 1.8 GB: the CrossEncoder folder holds its own copy

    return build_once(target, build, done="modules.json")


def forward_flops(spec: ModelSpec, lengths: list[int], prefix: int = 0) -> float:
    """FLOPs of the decoder over these unpadded prompt lengths: 2 x non-embedding parameters per token (the linear
    layers), plus QK^T and AV over the full square (4 x n^2 x heads x head_dim per layer). Norms, rotary embeddings,
    softmax and the 2-row head are left out (<0.5%). With `prefix`, the first `prefix` tokens of every prompt are
    not computed (their keys and values are reused): n - prefix tokens, attending to all n."""
    config = json.loads((spec.path / "config.json").read_text())
    hidden, inner, layers = config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]
    q_width = config["num_attention_heads"] * config["head_dim"]
    kv_width = config["num_key_value_heads"] * config["head_dim"]
    per_layer = hidden * (q_width + 2 * kv_width) + q_width * hidden + 3 * hidden * inner
    return float(sum(layers * (2 * per_layer * (n - prefix) + 4 * (n - prefix) * n * q_width) for n in lengths))


def non_embedding_parameters(spec: ModelSpec) -> int:
    config = json.loads((spec.path / "config.json").read_text())
    hidden, inner, layers = config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]
    q_width = config["num_attention_heads"] * config["head_dim"]
    kv_width = config["num_key_value_heads"] * config["head_dim"]
    return layers * (hidden * (q_width + 2 * kv_width) + q_width * hidden + 3 * hidden * inner)


# -- documents ----------------------------------------------------------------------------------------------------


def documents(spec: ModelSpec, count: int, seed: int = 0) -> list[str]:
    """`count` distinct Debian package descriptions in random order, each cut to the tokens Qwen's tokenizer would
    give it (1.35 per word, within the window)."""
    from rerankd.engine.tokenize import Tokenizer

    if not (DEBIAN_DATA / "corpus.jsonl").is_file():
        raise SystemExit(f"the Debian descriptions data set is missing: {DEBIAN_DATA}")
    with (DEBIAN_DATA / "corpus.jsonl").open(encoding="utf-8") as lines:
        texts = [json.loads(line)["text"] for line in lines]
    rng = random.Random(seed)
    texts = rng.sample([text for text in texts if text.strip()], count)
    tokenizer = Tokenizer(spec)
    room = tokenizer.room(pair=True)
    return [tokenizer.clip(text, max(1, min(room, round(QWEN_TOKENS_PER_WORD * len(text.split()))))) for text in texts]


def prompt_lengths(spec: ModelSpec, docs: list[str]) -> list[int]:
    """Unpadded model input lengths (template + query + document), as rerankd and sentence-transformers build them."""
    from rerankd.engine.tokenize import Tokenizer

    return [len(item) for item in Tokenizer(spec).encode_prompts(QUERY, docs, None)]


# -- measuring ----------------------------------------------------------------------------------------------------


class Clock:
    """The run's time budget: phases ask how much is left and size their rounds to it."""

    def __init__(self, seconds: float) -> None:
        self.deadline = time.perf_counter() + seconds

    def left(self) -> float:
        return self.deadline - time.perf_counter()


def interleaved(runners: dict[str, Any], docs: list[str], budget: Budget) -> dict[str, list[float]]:
    """Seconds per call of each runner on `docs`, round by round, so that a busy machine slows all alike."""
    times: dict[str, list[float]] = {name: [] for name in runners}
    rounds, deadline = 0, time.perf_counter() + budget.seconds
    while rounds < budget.min_runs or (rounds < budget.max_runs and time.perf_counter() < deadline):
        for name, run in runners.items():
            started = time.perf_counter()
            run(docs)
            times[name].append(time.perf_counter() - started)
        rounds += 1
    return times


class ExecutedFlops:
    """Adds up the FLOPs a torch engine's batches execute: the reused prefix once per batch, then the remainders
    (the backend's own decision, `causal.reused_prefix`). `total` over a number of calls, divided by it."""

    def __init__(self, spec: ModelSpec, runner: InProcess) -> None:
        import torch

        from rerankd.backends.causal import reused_prefix

        backend = runner.engine_.backend
        forward, self.total = backend.forward, 0.0

        def counted(batch: Any) -> np.ndarray:
            mask = torch.from_numpy(batch.attention_mask)
            prefix = reused_prefix(torch.from_numpy(batch.input_ids), mask, backend.min_shared_prefix)
            lengths = mask.sum(dim=1).tolist()
            self.total += forward_flops(spec, [prefix]) + forward_flops(spec, lengths, prefix=prefix)
            return forward(batch)

        backend.forward = counted


def row(system: str, mode: str, count: int, times: list[float], flops: float, **extra: Any) -> dict:
    seconds = float(np.median(times))
    return {
        "system": system,
        "mode": mode,
        "docs": count,
        "docs_per_s": count / seconds,
        "seconds": seconds,
        "runs": len(times),
        "best_docs_per_s": count / min(times),
        "gflop": flops / 1e9,
        "achieved_gflops": flops / seconds / 1e9,
        **extra,
    }


def in_process(
    spec: ModelSpec, corpus: list[str], clock: Clock, systems: list[str] = SYSTEMS, rounds: int | None = None
) -> list[dict]:
    """sentence-transformers and rerankd's engines (those of `systems`) at 10 and 100 documents, all loaded at once;
    `rounds` of each at most (default 3 at 10 documents, 2 at 100)."""
    runners: dict[str, Any] = {"sentence-transformers": Baseline(spec)} if "sentence-transformers" in systems else {}
    executed: dict[str, ExecutedFlops] = {}
    try:
        for name, (backend, precision) in {**ENGINES, FULL_PROMPTS: ("torch", "fp32")}.items():
            if name not in systems:
                continue
            started = time.perf_counter()
            runners[f"rerankd {name}"] = InProcess(spec, backend, precision)
            if name == FULL_PROMPTS:
                runners[f"rerankd {name}"].engine_.backend.min_shared_prefix = None
            if backend == "torch":
                executed[f"rerankd {name}"] = ExecutedFlops(spec, runners[f"rerankd {name}"])
            print(f"loaded rerankd {name} in {time.perf_counter() - started:.0f} s", flush=True)
        for run in runners.values():
            run(corpus[:2])  # untimed: first-call costs
        rows = []
        for count, budget in ((10, Budget(seconds=30, min_runs=1, max_runs=rounds or 3)), (100, None)):
            docs = corpus[:count]
            if budget is None:  # one round; a second only if the clock has room for it and the later phases
                budget = Budget(seconds=max(0.0, clock.left() - 420), min_runs=1, max_runs=rounds or 2)
            flops = forward_flops(spec, prompt_lengths(spec, docs))
            for counter in executed.values():
                counter.total = 0.0
            for name, times in interleaved(runners, docs, budget).items():
                extra = {"executed_gflop": executed[name].total / len(times) / 1e9} if name in executed else {}
                rows.append(row(name, "in-process", count, times, flops, **extra))
            print(format_table(rows[-len(runners) :], ["system", "docs", "docs_per_s", "runs", "achieved_gflops"]))
            print(flush=True)
        return rows
    finally:
        for run in runners.values():
            run.close()


class PatientServed(Served):
    """`Served` with a longer start-up deadline: the engine's warm-up scores 2 x 64 documents before /ready, which
    takes the Qwen3 shape 2-3 minutes on 2 quiet cores (10+ on busy ones), past `Served`'s 300 s."""

    def __init__(self, *args: Any, startup_seconds: float = 1500, **kwargs: Any) -> None:
        self._startup_deadline = time.monotonic() + startup_seconds
        super().__init__(*args, **kwargs)

    def _ready(self) -> bool:
        """Waits here until ready, the process ends or our deadline passes (`Served` checks its own after)."""
        while not super()._ready():
            if self.process.poll() is not None or time.monotonic() > self._startup_deadline:
                return False
            time.sleep(0.5)
        return True


def served(spec: ModelSpec, corpus: list[str], clock: Clock, llm_per_doc: float) -> list[dict]:
    """The cascade at 100 and 1,000 documents and the LLM alone on 1,000 (or a subset), over HTTP."""
    log_dir = Path(tempfile.mkdtemp(prefix="rerankd-llm-throughput-"))
    extra = ["--model", "ce-fixture", "--embedding-model", "", "--request-timeout-seconds", "0"]
    server = PatientServed(spec, "onnx", "fp32", log_dir / "serve.log", extra=extra)

    def post(docs: list[str], body: dict[str, Any]) -> dict[str, Any]:
        answer = server.client.post("/v2/rerank", json={"query": QUERY, "documents": docs, **body})
        answer.raise_for_status()
        return {"strategy": answer.headers.get("X-Rerankd-Strategy", ""), **answer.json()}

    try:
        post(corpus[:2], {})  # untimed: first-call costs of both models
        post(corpus[:2], {"model": "ce-fixture"})
        rows = []
        for count in (100, 1000):
            docs = corpus[:count]
            times, answer = [], {}
            for _ in range(2 if count == 100 else 1):
                started = time.perf_counter()
                answer = post(docs, CASCADE)
                times.append(time.perf_counter() - started)
            scored = [item["index"] for item in answer["results"] if not item.get("cut_by_prefilter")]
            if "prefilter=model:" not in answer["strategy"] or len(scored) != CASCADE["candidates"]:
                raise RuntimeError(f"the cascade did not run as asked: {answer['strategy']!r}, {len(scored)} scored")
            flops = forward_flops(spec, prompt_lengths(spec, [docs[i] for i in scored]))
            rows.append(row("cascade ce-fixture top-20 -> qwen3", "http", count, times, flops, note=answer["strategy"]))
            print(format_table(rows[-1:], ["system", "docs", "docs_per_s", "seconds", "note"]), flush=True)
        # The LLM alone on 1,000 documents: in full only if the clock allows it (estimated from in-process onnx).
        room = clock.left() - 30
        count = 1000 if 1000 * llm_per_doc * 1.2 < room else int(np.clip(room / llm_per_doc / 1.2, 20, 100))
        docs = corpus[:count]  # the corpus is in random order: the first `count` are a random subset
        started = time.perf_counter()
        post(docs, {})
        seconds = time.perf_counter() - started
        flops = forward_flops(spec, prompt_lengths(spec, docs))
        note = "measured" if count == 1000 else f"extrapolated from {count} documents (per document)"
        alone = row("qwen3 alone", "http", count, [seconds], flops, note=note, measured_docs=count)
        if count != 1000:
            alone.update(docs=1000, seconds=seconds * 1000 / count, extrapolated_from=count)
        rows.append(alone)
        print(format_table(rows[-1:], ["system", "docs", "docs_per_s", "seconds", "note"]), flush=True)
        return rows
    finally:
        server.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget-seconds", type=float, default=600, help="time for the measurements (default 600)")
    parser.add_argument("--name", default="llm_throughput", help="results file name")
    parser.add_argument(
        "--systems", default=",".join(SYSTEMS), help=f"in-process systems, comma-separated (default all: {SYSTEMS})"
    )
    parser.add_argument("--in-process-only", action="store_true", help="skip the HTTP cascade phase")
    parser.add_argument("--layers", type=int, default=QWEN3_0_6B["num_hidden_layers"], help="decoder layers")
    parser.add_argument("--rounds", type=int, default=None, help="most interleaved rounds per document count")
    args = parser.parse_args()
    systems = args.systems.split(",")
    if set(systems) - {*SYSTEMS, FULL_PROMPTS}:
        raise SystemExit(f"--systems: unknown {', '.join(sorted(set(systems) - {*SYSTEMS, FULL_PROMPTS}))}")
    subset = args.in_process_only or set(systems) != set(SYSTEMS) or args.layers != QWEN3_0_6B["num_hidden_layers"]
    if subset and args.name == "llm_throughput":  # bench/results/llm_throughput.json holds full runs only
        raise SystemExit("a partial run (--systems, --in-process-only) needs its own --name")
    started = time.perf_counter()

    path = build_qwen3_shape(args.layers)
    spec = resolve_model(str(path))
    if spec.kind != "causal-lm":
        raise SystemExit(f"{path} was read as a {spec.kind}, not an LLM reranker")
    print(f"model: {path} ({non_embedding_parameters(spec) / 1e6:.0f} M non-embedding parameters, random weights, "
          f"window {spec.max_length})", flush=True)  # fmt: skip
    corpus = documents(spec, 1000)
    lengths = prompt_lengths(spec, corpus)
    print(f"prompts: {np.mean(lengths):.0f} tokens on average (median {np.median(lengths):.0f}, "
          f"max {max(lengths)}), {CONTENTION}", flush=True)  # fmt: skip
    peaks = [fp32_peak()]  # measured again between phases: neighbours' load comes and goes, the best one counts
    clock = Clock(args.budget_seconds)
    rows = in_process(spec, corpus, clock, systems, args.rounds)
    peaks.append(fp32_peak())
    failure = None
    if not args.in_process_only:
        onnx_100 = next(r for r in rows if r["system"] == "rerankd onnx-fp32" and r["docs"] == 100)
        try:
            rows += served(spec, corpus, clock, llm_per_doc=onnx_100["seconds"] / 100)
        except Exception as exc:  # the in-process results still get saved, with the failure
            failure = f"{type(exc).__name__}: {exc}"
            print(f"the HTTP phase failed: {failure}", flush=True)
        peaks.append(fp32_peak())
    _add_ratios(rows, max(peaks))
    checks = _checks(rows)
    peaks_seen = {"fp32_seen": peaks, "fp32": max(peaks), "fp32_quiet_recorded": _quiet_peak()}
    report(rows, checks, peaks_seen, spec, lengths, args.name, time.perf_counter() - started, failure, args.layers)


def fp32_peak() -> float:
    """numpy's fp32 GEMM, GFLOP/s, best over bench/throughput.py's shapes (the int8 figure is not used here)."""
    peak = gemm_peaks(Budget(seconds=1.0, min_runs=2, max_runs=20))["fp32"]
    print(f"fp32 GEMM peak now: {peak:.0f} GFLOP/s", flush=True)
    return peak


def _add_ratios(rows: list[dict[str, Any]], peak: float) -> None:
    """Speed vs sentence-transformers at the same count, and the share of the best fp32 peak seen in this run (and of
    the quiet machine's, recorded by bench/throughput.py, where that file exists)."""
    quiet = _quiet_peak()
    base = {r["docs"]: r for r in rows if r["system"] == "sentence-transformers"}
    full = {r["docs"]: r for r in rows if r["system"] == f"rerankd {FULL_PROMPTS}"}
    for r in rows:
        r["peak_fraction"] = r["achieved_gflops"] / peak
        if "executed_gflop" in r:  # the FLOPs that ran, the reused prefix counted once per batch
            r["executed_peak_fraction"] = r["executed_gflop"] / r["seconds"] / peak
        if r["docs"] in full and r["mode"] == "in-process":
            r["vs_full_prompts"] = r["docs_per_s"] / full[r["docs"]]["docs_per_s"]
            r["best_vs_full_prompts"] = r["best_docs_per_s"] / full[r["docs"]]["best_docs_per_s"]
        if quiet:
            r["quiet_peak_fraction"] = r["achieved_gflops"] / quiet
        if r["docs"] in base:
            r["vs_st"] = r["docs_per_s"] / base[r["docs"]]["docs_per_s"]
        if r["docs"] == 1000 and r.get("extrapolated_from"):
            r["docs_per_s"] = 1000 / r["seconds"]


def _quiet_peak() -> float | None:
    """The fp32 peak bench/throughput.py measured on a quiet machine of the same CPU model, if recorded."""
    from common import RESULTS, machine

    path = RESULTS / "throughput.json"
    if not path.is_file():
        return None
    recorded = json.loads(path.read_text())
    same_cpu = recorded.get("machine", {}).get("cpu", {}).get("model") == machine()["cpu"]["model"]
    return float(recorded["peaks_gflops"]["fp32"]) if same_cpu else None


def _checks(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    checks = []
    for name in ENGINES:
        r = next((r for r in rows if r["system"] == f"rerankd {name}" and r["docs"] == 100), None)
        if r is None:  # not measured in this run (--systems)
            continue
        checks.append({
            "check": f"qwen3 shape, rerankd {name}, 100 docs: share of the fp32 GEMM peak",
            "value": r["peak_fraction"],
            "limit": f">= {FLOPS_TARGET:.2f} (within 1.5x of the FLOPs' time at peak)",
            "ok": r["peak_fraction"] >= FLOPS_TARGET,
        })  # fmt: skip
    cascade = next((r for r in rows if r["system"].startswith("cascade") and r["docs"] == 1000), None)
    alone = next((r for r in rows if r["system"] == "qwen3 alone"), None)
    if cascade is None or alone is None:
        limit = f">= {CASCADE_TARGET:.0f}x"
        checks.append({"check": "cascade vs the LLM alone, 1,000 docs", "value": None, "limit": limit, "ok": None})
        return checks
    ratio = alone["seconds"] / cascade["seconds"]
    how = f" (LLM alone {alone['note']})"
    checks.append({"check": "cascade vs the LLM alone, 1,000 docs, speed-up" + how, "value": ratio,
                   "limit": f">= {CASCADE_TARGET:.0f}x", "ok": ratio >= CASCADE_TARGET})  # fmt: skip
    return checks


def report(
    rows, checks, peaks, spec, lengths, name: str, seconds: float, failure: str | None = None, layers: int = 28
) -> None:
    columns = ["system", "mode", "docs", "docs_per_s", "seconds", "runs", "vs_st", "vs_full_prompts",
               "best_vs_full_prompts", "achieved_gflops", "peak_fraction", "executed_peak_fraction",
               "quiet_peak_fraction", "note"]  # fmt: skip
    print("\n" + format_table(rows, columns))
    print("\n" + format_table(checks, ["check", "value", "limit", "ok"]))
    print(f"\nrandom weights (speed only); {CONTENTION}; whole run {seconds:.0f} s")
    payload = {
        "model": {
            "shape": "Qwen3-Reranker-0.6B (random weights)",
            "config": {**QWEN3_0_6B, "num_hidden_layers": layers},
            "non_embedding_parameters": non_embedding_parameters(spec),
            "window": spec.max_length,
            "tokenizer": "tests/test_golden_llm.py small BPE + Qwen3-Reranker chat template; documents cut to "
            f"{QWEN_TOKENS_PER_WORD} tokens per word (Qwen's rate)",
        },
        "prompt_tokens": {"mean": float(np.mean(lengths)), "median": float(np.median(lengths)), "max": max(lengths)},
        "query": QUERY,
        "flops_formula": "per document: layers x (2 x n x P_layer + 4 x n^2 x heads x head_dim), P_layer = "
        "non-embedding parameters of one layer (q,k,v,o projections + 3 MLP matrices), n = unpadded prompt tokens; "
        "executed (torch): per batch, the reused prefix p once, then per document layers x (2 x (n - p) x P_layer "
        "+ 4 x (n - p) x n x heads x head_dim)",
        "peaks_gflops": peaks,
        "int8": "refused for LLM rerankers by design (fidelity; tests/test_golden_llm.py)",
        "note": f"random weights; {CONTENTION}",
        "seconds": seconds,
        "rows": rows,
        "checks": checks,
        "failure": failure,
    }
    path = save(name, payload)
    plot(rows, plot_path(name), layers)
    print(f"saved {path} and {plot_path(name)}")


def plot(rows: list[dict[str, Any]], path: Path, layers: int = 28) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(9, 5))
    labels = [f"{r['system']}\n{r['docs']} docs" + (" (extrap.)" if r.get("extrapolated_from") else "") for r in rows]
    colors = ["tab:gray" if r["system"] == "sentence-transformers" else "tab:blue" for r in rows]
    colors = ["tab:green" if r["system"].startswith("cascade") else c for r, c in zip(rows, colors, strict=True)]
    axis.barh(range(len(rows)), [r["docs_per_s"] for r in rows], color=colors)
    axis.set_yticks(range(len(rows)), labels, fontsize=7)
    axis.set_xscale("log")
    axis.set_xlabel("documents / second (log)")
    depth = "" if layers == QWEN3_0_6B["num_hidden_layers"] else f", {layers} of its 28 layers"
    axis.set_title(f"Qwen3-Reranker-0.6B shape{depth} (random weights), CPU fp32, one request at a time")
    axis.invert_yaxis()
    axis.grid(True, axis="x", alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
