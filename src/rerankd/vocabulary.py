"""The names and shared estimates every layer agrees on, defined once: request strategies, fusion methods, routing
policies, the characters-per-token estimate and the autoscaling defaults.

Settings (`config.py`), the API's request fields, the planner, fusion, the router and the autoscaler import them
from here, so adding a strategy, a fusion method or a routing policy starts with one edit in this file (then its
implementation: docs/architecture.md, "Where to add"). Bottom layer: imports nothing of rerankd.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

# -- request strategies (docs/strategies.md) ----------------------------------------------------------------------

# What a request may ask for; `auto` resolves to one of the others per request (pipeline/planner.py).
Strategy = Literal["auto", "direct", "hybrid", "bi-encoder"]
# What actually ran.
ExecutedStrategy = Literal["direct", "hybrid", "bi-encoder"]
STRATEGIES: tuple[Strategy, ...] = get_args(Strategy)

# How a first stage's scores join the model's (pipeline/fusion.py); `none` keeps the model's alone.
FusionMethod = Literal["none", "zscore", "rrf"]
FUSION_METHODS: tuple[FusionMethod, ...] = get_args(FusionMethod)

# -- fleet routing (docs/fleet.md, Routing) ------------------------------------------------------------------------

# The policies rerankd's router implements (fleet/routing.py) ...
WorkAwarePolicy = Literal["tokens", "queue", "round-robin"]
WORK_AWARE_POLICIES: tuple[WorkAwarePolicy, ...] = get_args(WorkAwarePolicy)
# ... and what the `routing` setting accepts: those, or Ray Serve's own power-of-two-choices router.
RoutingPolicy = Literal[WorkAwarePolicy, "power-of-two"]
ROUTING_POLICIES: tuple[RoutingPolicy, ...] = get_args(RoutingPolicy)

# -- estimates made before any tokenizer runs -------------------------------------------------------------------

# Characters per token of English text under WordPiece / BPE vocabularies: how the ingress weighs requests (it has
# no tokenizer), where the cost model starts before it has measured a model's own ratio, and the basis of the first
# prefix a long text is tokenized to.
CHARS_PER_TOKEN = 4
PAIR_SPECIAL_TOKENS = 3  # [CLS] query [SEP] document [SEP]


# -- autoscaling defaults (fleet/autoscale.py, docs/fleet.md) -------------------------------------------------------


@dataclass(frozen=True)
class AutoscaleDefaults:
    """Each knob's default; the settings `autoscale_<name>` and `fleet.autoscale.AutoscaleConfig` both use these."""

    target_utilisation: float = 0.65  # busy fraction per replica to aim for: 35% headroom for failures and bursts
    downscale_utilisation: float = 0.5  # remove a replica only if the rest stay at or below this busy fraction
    target_queued_tokens: int = 32768  # queued tokens per replica above which replicas are added
    target_p99_ms: float = 2000  # p99 latency (ms) above which a busy fleet gets one more replica
    upscale_seconds: float = 10  # how long a need must last before replicas are added
    downscale_seconds: float = 300  # quiet period before removing replicas (and after any scale-up)
    downscale_step_seconds: float = 60  # between removals, one replica each, while the fleet stays quiet


AUTOSCALE = AutoscaleDefaults()
