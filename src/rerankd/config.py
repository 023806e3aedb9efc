"""One `Settings` object for every knob.

Each knob has one name: the field `max_batch_tokens` is the CLI flag `--max-batch-tokens`, the environment
variable `RERANKD_MAX_BATCH_TOKENS` and the YAML key `max_batch_tokens`. Precedence, highest first: CLI flag,
environment variable, YAML file (`--config` / `RERANKD_CONFIG`), default. pydantic-settings reads the environment
and the file; nothing else reads `os.environ`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, field_validator
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from rerankd.vocabulary import AUTOSCALE, FusionMethod, RoutingPolicy, Strategy

ENV_PREFIX = "RERANKD_"


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "rerankd"


class Settings(BaseSettings):
    """Server, engine and request-limit settings (see docs/configuration.md for the generated table)."""

    # enable_decoding=False: list settings arrive as comma text (`_split_commas`), not JSON.
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, enable_decoding=False, extra="forbid", frozen=True, protected_namespaces=()
    )

    # Models
    model: list[str] = Field(
        default=["default"],
        description="Models to serve: hub id, local folder or preset name; the first is the default.",
    )
    model_kind: Literal["auto", "cross-encoder", "causal-lm", "bi-encoder", "late-interaction"] = Field(
        default="auto",
        description="Override the kind detected from the model's own files: cross-encoder (a classification "
        "head), causal-lm (an LLM scoring yes/no tokens through its chat template), bi-encoder or late-interaction "
        "(ColBERT: token vectors scored by MaxSim).",
    )
    cache_dir: Path = Field(
        default_factory=default_cache_dir, description="Where exports and built fixtures are cached."
    )

    # Engine
    backend: Literal["auto", "torch", "onnx", "openvino"] = Field(
        default="auto",
        description="Inference backend: onnx (ONNX Runtime, CPU or CUDA), openvino (CPU: fp32, bf16, static int8), "
        "torch (the reference; LLM rerankers on the CPU). auto: the fastest engine measured faithful on this CPU.",
    )
    precision: Literal["auto", "fp32", "fp16", "bf16", "int8", "int8-rescore"] = Field(
        default="auto",
        description="Numeric precision of the backend. bf16 needs a CPU with bf16 arithmetic (avx512_bf16, "
        "amx_bf16) or CUDA. int8-rescore (cross- and bi-encoders on the CPU): int8 for every document, then the head "
        "(the top max(2 x top_n, rescore_head_min) by int8) again at rescore_head_precision, so the head's order and "
        "scores are that precision's; loads the model twice.",
    )
    rescore_head_precision: Literal["auto", "fp32", "bf16"] = Field(
        default="auto",
        description="int8-rescore: the precision the head is scored again at. auto: bf16 with the openvino backend "
        "on a CPU with bf16 arithmetic, else fp32.",
    )
    rescore_head_min: int = Field(
        default=20,
        ge=1,
        description="int8-rescore: the fewest top documents re-scored in fp32 (the head when a request has no top_n); "
        "a request with no more documents than the head is scored in fp32 alone.",
    )
    device: Literal["auto", "cpu", "cuda"] = Field(default="auto", description="Where the model runs.")
    threads: int = Field(default=0, ge=0, description="Inference threads; 0 = the cores this process may use.")
    # Measured on the 2-core CPU (MiniLM-L6, 20-300-token documents): budgets of 1-2k tokens score 25-45% more
    # pairs per CPU-second than 8k (less padding, activations that stay in cache); GPUs want larger batches.
    max_batch_tokens: int = Field(
        default=2048,
        ge=0,
        description="Token budget of one batch (padded length x pairs); GPUs want ~16384. 0 = auto: measured by a "
        "short sweep at the first warm-up on this machine (engine/tuning.py), then cached per model, precision, CPU "
        "and thread count.",
    )
    max_batch_size: int = Field(default=128, ge=1, description="Most pairs in one batch.")
    max_queued_pairs: int = Field(
        default=100_000,
        ge=1,
        description="Pairs waiting in one model's queue before new work gets 429 (a memory "
        "bound; `max_queue_seconds` is the limit that normally applies first).",
    )
    max_queue_seconds: float = Field(
        default=10,
        ge=0,
        description="A new request whose expected wait (estimated from the work already admitted) is this many "
        "seconds or more gets 429 with Retry-After; /ready is 503 while all admitted work is over it; 0 = no limit.",
    )
    request_timeout_seconds: float = Field(
        default=60,
        ge=0,
        description="Deadline of a request (a request's `timeout_ms` may shorten it, never extend it): past it, its "
        "queued work is dropped and it gets 504; 0 = none.",
    )
    scheduling: Literal["fair", "fifo"] = Field(
        default="fair",
        description="How queued requests share the model: `fair` gives each waiting request up to one batch in "
        "turn, so small requests do not wait behind a large one; `fifo` serves them strictly in arrival order.",
    )
    score_cache_mb: int = Field(
        default=64,
        ge=0,
        description="Memory per model for the outputs of inputs already run (keyed by the exact token ids), so "
        "repeated pairs skip inference; ~0.2 KiB a pair; 0 = off.",
    )
    vector_cache_mb: int = Field(
        default=256,
        ge=0,
        description="Memory per late-interaction (ColBERT) model for document token vectors, keyed by model revision "
        "and document text, so a document seen before costs no encoder time; ~25 KiB a 128-token document at 96 "
        "dims in fp16; 0 = off.",
    )
    vector_cache_precision: Literal["fp16", "fp32"] = Field(
        default="fp16",
        description="How the vector cache stores document vectors: fp16 (half the memory; cached documents' scores "
        "move by ~1e-3) or fp32 (exact).",
    )
    warmup_seconds: float = Field(
        default=1.0, ge=0, description="Time spent warming up and calibrating before /ready turns 200."
    )

    # HTTP server
    host: str = Field(default="127.0.0.1", description="Address to listen on.")
    port: int = Field(default=8080, ge=0, le=65535, description="Port to listen on.")
    api_keys: list[str] = Field(
        default=[], description="Bearer tokens accepted on the API (comma list or repeated); empty = no authentication."
    )
    api_keys_file: Path | None = Field(
        default=None, description="File of further bearer tokens, one per line (# comments); read at start-up."
    )
    metrics_require_key: bool = Field(
        default=True,
        description="With api keys set, /metrics needs one too (Prometheus: `authorization` in the scrape config); "
        "false leaves /metrics open to scrapers without a key. Without api keys, /metrics is always open.",
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(default="info", description="Log level.")
    log_format: Literal["text", "json"] = Field(default="text", description="Log line format.")

    max_connections: int = Field(
        default=1024, ge=1, description="Open connections and requests at once; more get 503 (uvicorn's limit)."
    )
    header_timeout_seconds: float = Field(
        default=10, gt=0, description="Time a client has to send a request's headers before it is disconnected."
    )
    body_timeout_seconds: float = Field(
        default=30, gt=0, description="Time a client has to send a request's body before it gets 408."
    )
    keep_alive_seconds: float = Field(default=5, gt=0, description="Idle keep-alive connections close after this.")

    # Request limits
    max_documents: int = Field(default=10_000, ge=1, description="Most documents in one request.")
    max_request_bytes: int = Field(default=16 * 2**20, ge=1024, description="Largest request body in bytes.")
    max_query_chars: int = Field(
        default=32_768, ge=1, description="Longest query in characters (413 past it, before any tokenizing)."
    )
    max_query_tokens: int = Field(
        default=0, ge=0, description="Longest query in tokens (413 past it); 0 = the model's window."
    )
    max_instruction_tokens: int = Field(
        default=0, ge=0, description="Longest LLM instruction in tokens (413 past it); 0 = the model's window."
    )
    llm_special_tokens_in_text: bool = Field(
        default=False,
        description="LLM rerankers: read the tokenizer's special-token strings in user text (turn markers, "
        "`<think>`) as the model's control tokens, as sentence-transformers does; off = user text is read as text.",
    )

    # Strategies: the hybrid first stage, fusion, chunking (pipeline/, first_stage/)
    strategy: Strategy = Field(
        default="auto",
        description="Default strategy: auto (direct unless the latency budget calls for a pre-filter), direct, "
        "hybrid (BM25 pre-filter) or bi-encoder (embedding pre-filter).",
    )
    latency_budget_ms: float = Field(
        default=0, ge=0, description="Default latency budget per request for `auto`; 0 = no budget."
    )
    candidates: int = Field(
        default=100, ge=1, description="Documents a hybrid or bi-encoder pre-filter keeps when no budget sets it."
    )
    bm25_max_chars: int = Field(
        default=20_000,
        ge=1,
        description="Characters of each document that BM25 (hybrid pre-filter, fusion) reads; it indexes ~1 MB/s.",
    )
    first_stage_model: str = Field(
        default="",
        description="A served model (one of `model`) as the `hybrid` strategy's pre-filter instead of BM25: a "
        "cascade, e.g. a small cross-encoder choosing the candidates an LLM reranker scores. Empty = BM25 (also for "
        "requests to this model itself).",
    )
    embedding_model: str = Field(
        default="default",
        description="Bi-encoder of the embedding pre-filter, loaded at start-up; empty = no embedding pre-filter.",
    )
    embedding_cache_entries: int = Field(
        default=50_000, ge=0, description="Document embeddings kept in memory (~1.5 KiB each at 384 dims); 0 = off."
    )
    fusion: FusionMethod = Field(
        default="none", description="Default score fusion of the model's and the first stage's scores."
    )
    fusion_weight: float = Field(
        default=0.5, ge=0, le=1, description="Weight of the first-stage score in fusion (the model gets 1 - weight)."
    )
    rrf_k: int = Field(default=60, ge=1, description="The k of reciprocal rank fusion: 1 / (k + rank).")
    corpus_stats: Path | None = Field(
        default=None,
        description="BM25 statistics of your corpus, written by `rerankd corpus-stats`: the server's BM25 (hybrid "
        "pre-filter, fusion) takes document frequencies and mean length from it instead of the request's own "
        "documents, for every model (nothing is learned then).",
    )
    corpus_stats_mb: float = Field(
        default=8,
        ge=0,
        description="Memory per model for BM25 statistics learned from the documents requests send (a count-min "
        "sketch of document frequencies, and a Bloom filter so a re-sent document counts once); 0 = off.",
    )
    corpus_stats_warm_documents: int = Field(
        default=5_000,
        ge=1,
        description="Distinct documents a model's learned statistics need before BM25 uses them (until then it "
        "uses the request's own documents).",
    )
    corpus_stats_dir: Path | None = Field(
        default=None,
        description="Folder where learned BM25 statistics are saved at shutdown and read at start-up; empty = "
        "not kept.",
    )
    calibration: list[str] = Field(
        default=[],
        description="Calibration files written by `rerankd calibrate` (comma list or repeated), each for the model "
        "it names: `relevance_score` becomes the probability of relevance for the strategies it was fitted for.",
    )
    chunking: bool = Field(
        default=False, description="Split documents longer than the window into chunks (else truncate)."
    )
    chunk_tokens: int = Field(
        default=0, ge=0, description="Document tokens per chunk; 0 = what fits in the window beside the query."
    )
    chunk_overlap_tokens: int = Field(
        default=32, ge=0, description="Tokens consecutive chunks share (at most half a chunk)."
    )
    max_chunks_per_doc: int = Field(default=10, ge=1, description="Most chunks scored per document.")

    # Fleet: Ray Serve replicas, routing, autoscaling (fleet/)
    replicas: int = Field(
        default=0, ge=0, description="Model replicas on Ray Serve (fixed); 0 = one in-process engine, no Ray."
    )
    autoscale: str = Field(
        default="", pattern=r"^(\d+:\d+)?$", description="min:max model replicas, autoscaled on Ray Serve; empty = off."
    )
    ray_address: str = Field(
        default="", description="Ray cluster to join (auto, host:6379, ray://host:10001); empty = a local Ray."
    )
    routing: RoutingPolicy = Field(
        default="tokens",
        description="Replica choice: least outstanding tokens, fewest outstanding requests, round-robin, or Ray's "
        "power-of-two-choices.",
    )
    cache_affinity: bool = Field(
        default=True,
        description="With `tokens` routing, send a request to the replica that last served the same query (model, "
        "query, instruction) while it would finish there within the request's own work of the least loaded one, "
        "so that replica's score cache answers the pairs it has seen; for a late-interaction model (or first stage), "
        "the replica that last served overlapping documents (a MinHash of them), whose vector cache holds them; off "
        "(or no such cache) = least loaded only.",
    )
    replica_cpus: float = Field(
        default=1.0, gt=0, description="CPUs per model replica; CPU replicas run that many threads (unless threads)."
    )
    replica_gpus: float = Field(default=0, ge=0, description="GPUs per model replica on cuda; 0 = 1 on cuda.")
    replica_max_requests: int = Field(
        default=64, ge=1, description="Requests one replica holds (queued + running); more wait at the router."
    )
    replica_stall_seconds: float = Field(
        default=60, gt=0, description="Health check fails when work is queued and no batch finished for this long."
    )
    ingress_replicas: int = Field(
        default=0,
        ge=0,
        description="Ingress (HTTP) replicas of a fleet, at most one per node where the cluster has enough; 0 = one "
        "on every node at deploy time (at least 2), so each node's proxy hands requests to an ingress on its own node "
        "and a lost node takes only requests that entered through it, which a load balancer retries.",
    )
    autoscale_target_utilisation: float = Field(
        default=AUTOSCALE.target_utilisation,
        gt=0,
        le=1,
        description="Busy fraction per replica to aim for (the rest is headroom).",
    )
    autoscale_downscale_utilisation: float = Field(
        default=AUTOSCALE.downscale_utilisation,
        gt=0,
        lt=1,
        description="Remove a replica only if the rest stay at or below this busy fraction.",
    )
    autoscale_target_queued_tokens: int = Field(
        default=AUTOSCALE.target_queued_tokens,
        ge=1,
        description="Add replicas when queued tokens per replica exceed this.",
    )
    autoscale_target_p99_ms: float = Field(
        default=AUTOSCALE.target_p99_ms,
        gt=0,
        description="Add a replica when a busy fleet's p99 latency (ms) exceeds this.",
    )
    autoscale_upscale_seconds: float = Field(
        default=AUTOSCALE.upscale_seconds,
        ge=0,
        description="A need for more replicas must last this long before they are added.",
    )
    autoscale_downscale_seconds: float = Field(
        default=AUTOSCALE.downscale_seconds,
        ge=0,
        description="Quiet period before removing replicas, and after any scale-up.",
    )
    autoscale_downscale_step_seconds: float = Field(
        default=AUTOSCALE.downscale_step_seconds,
        ge=0,
        description="Between removals (one replica each) while the fleet stays quiet.",
    )

    @field_validator("max_batch_tokens")
    @classmethod
    def _batch_budget(cls, value: int) -> int:
        if 0 < value < 64:
            raise ValueError("max_batch_tokens must be 0 (auto) or at least 64")
        return value

    @field_validator("model", "api_keys", "calibration", mode="before")
    @classmethod
    def _split_commas(cls, value: Any) -> Any:
        # Environment variables carry lists as comma-separated text, and a repeated flag may too (`--api-keys a,b`).
        if isinstance(value, str):
            value = [value]
        if isinstance(value, list) and all(isinstance(item, str) for item in value):
            return [part.strip() for item in value for part in item.split(",") if part.strip()]
        return value

    def accepted_api_keys(self) -> list[str]:
        """`api_keys` plus the lines of `api_keys_file` (blank lines and # comments skipped)."""
        lines = [] if self.api_keys_file is None else Path(self.api_keys_file).read_text(encoding="utf-8").splitlines()
        from_file = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
        return [*self.api_keys, *from_file]

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # `Settings(...)` in code is exactly what it is given (tests, replicas, manifest defaults); only `load`
        # reads the environment and the YAML file.
        return (init_settings,)

    @classmethod
    def load(cls, overrides: dict[str, Any] | None = None, config_file: str | Path | None = None) -> Settings:
        """Build settings from CLI overrides, the environment and an optional YAML file, in that order."""
        config_file = config_file or os.environ.get(f"{ENV_PREFIX}CONFIG")
        from_file = _read_yaml(cls, Path(config_file)) if config_file else {}
        flags = {name: value for name, value in (overrides or {}).items() if value is not None}
        return cls(**{**from_file, **EnvSettingsSource(cls)(), **flags})


def _read_yaml(settings_cls: type[BaseSettings], path: Path) -> dict[str, Any]:
    # pydantic-settings skips a missing file and fails obscurely on a non-mapping; a named error is kinder.
    if not path.is_file():
        raise ValueError(f"{path}: no such settings file")
    try:
        return YamlConfigSettingsSource(settings_cls, yaml_file=path)()
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML: {exc}") from exc
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{path}: expected a mapping of setting names to values") from exc
