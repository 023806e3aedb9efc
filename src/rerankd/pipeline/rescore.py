"""int8-rescore: every document is scored in int8, then the head of the ranking again at a faithful precision (fp32,
or bf16 on CPUs that have it), in the same request.

Pure int8 reorders the top (bench/int8_fidelity.py); the documents that reach the top are few, so scoring only them
again gives the faithful precision's head for a fraction of its cost. The head is the top max(2 x top_n,
rescore_head_min) by int8; without top_n (every document returned) it is rescore_head_min. One object,
`RescoredHead` (pipeline/costs.py), carries the head's engine, size and precision to the planner, admission and the
runner, whose step `run/head.py` re-scores a request's head.

Scores stay on one scale and agree with the order: the head is ordered by, and reported with, its re-scored values;
the rest keep their int8 order, with their int8 scores shifted onto the head's scale by the head's own pairs (the
median difference, in logits for probabilities) and kept below the head's last score (`run.head.merge_head`).
Requests that fuse scores keep int8 only: fusion normalises over every candidate, whose re-scored values are unknown.
Requests with no more candidates than the head are scored by the head engine alone (`run.head.alone`): an int8 pass
would be redone in full. Cross-encoders and bi-encoders alike: a bi-encoder's head engine embeds the query too.

The head engine is a second engine of the same model (its own session, scheduler and score cache), so memory holds
both; the score cache budget is split between them.
"""

from __future__ import annotations

from rerankd.backends.select import INT8_RESCORE, choose
from rerankd.config import Settings
from rerankd.engine.engine import Engine
from rerankd.metrics import Metrics
from rerankd.models import ModelSpec
from rerankd.pipeline.costs import RescoredHead


def head_size(top_n: int | None, minimum: int) -> int:
    """Documents re-scored: twice what the client sees, at least `minimum`."""
    return minimum if top_n is None else max(2 * top_n, minimum)


def embedding_model_settings(settings: Settings) -> Settings:
    """Settings for a bi-encoder loaded only as the embedding first stage: it has no head to re-score, so where
    int8-rescore would be chosen (configured, or by `auto`) it embeds at the head's precision."""
    choice = choose(settings, kind="bi-encoder")
    if choice.precision != INT8_RESCORE:
        return settings
    return settings.model_copy(update={"backend": choice.backend, "precision": choice.head_precision})


class HeadRescorer:
    """The head engines of the models served at int8-rescore (the step that re-scores a request's head with them is
    `run/head.py`)."""

    def __init__(self, minimum: int) -> None:
        self.minimum = minimum
        self._heads: dict[Engine, Engine] = {}

    def load(self, spec: ModelSpec, settings: Settings, metrics: Metrics | None = None) -> Engine:
        """The engine serving `spec`: under int8-rescore the int8 one, its head engine kept here."""
        choice = choose(settings, kind=spec.kind)
        if choice.head is None:
            return Engine.load(spec, settings, metrics)
        # Two caches of half the budget each keep the model's cache memory within score_cache_mb.
        cache_mb = (settings.score_cache_mb + 1) // 2
        halved = settings.model_copy(update={"score_cache_mb": cache_mb})
        engine = Engine.load(spec, halved, metrics, choice=choice)
        # No metrics for the head engine: they are labelled by model name, which the int8 engine's gauges use.
        self._heads[engine] = Engine.load(spec, halved, choice=choice.head)
        return engine

    def warmup(self, seconds: float) -> None:
        for head in self._heads.values():
            head.warmup(seconds)

    def close(self) -> None:
        for head in self._heads.values():
            head.close()

    def describe(self, engine: Engine) -> str:
        """The engine line of /v1/models."""
        head = self._heads.get(engine)
        return engine.description if head is None else f"{engine.description}+{head.backend.precision}-head"

    def exact(self, engine: Engine) -> Engine:
        """`engine`'s head engine where it runs int8-rescore, else `engine` (the embedding pre-filter's engine)."""
        return self._heads.get(engine, engine)

    def head(self, engine: Engine, top_n: int | None) -> RescoredHead | None:
        """A request's re-scored head on `engine` (`Options.rescored_head`); None unless it runs int8-rescore."""
        head = self._heads.get(engine)
        if head is None:
            return None
        return RescoredHead(head, head_size(top_n, self.minimum), head.backend.precision)
