"""What the fleet benchmarks share: heavy-tailed requests, and an open-loop load generator.

Document counts follow a Pareto law (alpha ~1.1) cut to 5-1,000: most requests are small, a few are huge, which
is what search traffic looks like and what defeats round-robin.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import httpx
import numpy as np

VOCABULARY = [
    "database", "library", "server", "network", "storage", "kernel", "driver", "python", "package", "module",
    "graphics", "audio", "video", "font", "editor", "terminal", "shell", "compiler", "parser", "lexer", "debugger",
    "profiler", "cache", "queue", "scheduler", "thread", "process", "memory", "index", "search", "query", "rank",
    "score", "model", "token", "batch", "vector", "embedding", "cluster", "replica", "router", "policy",
]  # fmt: skip


def pareto_counts(rng: np.random.Generator, n: int, low: int = 5, high: int = 1000, alpha: float = 1.1) -> np.ndarray:
    """`n` document counts in [low, high], Pareto-distributed (inverse-CDF sampling of the truncated law)."""
    u = rng.random(n)
    ratio = (low / high) ** alpha
    return np.floor(low / (1 - u * (1 - ratio)) ** (1 / alpha)).astype(int).clip(low, high)


@dataclass(frozen=True)
class Request:
    query: str
    documents: list[str]


def make_requests(rng: np.random.Generator, counts: Sequence[int], words: tuple[int, int] = (10, 60)) -> list[Request]:
    """One request per count: a 4-word query, documents of `words` (uniform) random vocabulary words."""

    def text(k: int) -> str:
        return " ".join(rng.choice(VOCABULARY, size=k))

    return [
        Request(text(4), [text(int(rng.integers(words[0], words[1] + 1))) for _ in range(count)]) for count in counts
    ]


@dataclass
class Outcome:
    sent_at: float  # seconds since the run began
    latency: float
    status: int  # HTTP status; 0 for a transport error
    documents: int


@dataclass
class LoadResult:
    outcomes: list[Outcome] = field(default_factory=list)
    wall_seconds: float = 0.0

    @property
    def ok(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status == 200]

    @property
    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status != 200]


async def _send(client: httpx.AsyncClient, request: Request, sent_at: float) -> Outcome:
    t0 = time.perf_counter()
    try:
        response = await client.post("/v2/rerank", json={"query": request.query, "documents": request.documents})
        status = response.status_code
    except httpx.HTTPError:
        status = 0
    return Outcome(sent_at, time.perf_counter() - t0, status, len(request.documents))


def poisson_times(rate: float, count: int, seed: int = 0, start: float = 0.0) -> np.ndarray:
    """Arrival times (seconds) of `count` requests at Poisson rate `rate`, from `start`."""
    return start + np.cumsum(np.random.default_rng(seed).exponential(1 / rate, size=count))


async def open_loop(
    url: str,
    requests: Sequence[Request],
    times: Sequence[float],
    *,
    max_seconds: float = 600.0,
) -> LoadResult:
    """Send request i at `times[i]` seconds from now, whatever the answers' pace (open loop), and wait for all
    answers. Bounded: a fixed list, no request sent after `max_seconds`, none waited on longer than that."""
    result = LoadResult()
    limits = httpx.Limits(max_connections=2000, max_keepalive_connections=200)
    async with httpx.AsyncClient(base_url=url, timeout=max_seconds, limits=limits) as client:
        started = time.perf_counter()
        tasks = []
        for request, due in zip(requests, times, strict=True):
            if due > max_seconds:
                break
            delay = started + due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.ensure_future(_send(client, request, time.perf_counter() - started)))
        result.outcomes = list(await asyncio.gather(*tasks))
        result.wall_seconds = time.perf_counter() - started
    return result


async def closed_loop(
    url: str,
    requests: Sequence[Request],
    concurrency: int,
    *,
    max_seconds: float = 300.0,
    on_done: Callable[[Outcome, int], None] | None = None,
) -> LoadResult:
    """`concurrency` clients, each sending the next request as soon as its last one returns. Bounded by the list
    and by `max_seconds` (no new request after it)."""
    pending = list(reversed(requests))
    result = LoadResult()
    async with httpx.AsyncClient(base_url=url, timeout=max_seconds) as client:
        started = time.perf_counter()

        async def client_loop() -> None:
            while pending and time.perf_counter() - started < max_seconds:
                outcome = await _send(client, pending.pop(), time.perf_counter() - started)
                result.outcomes.append(outcome)
                if on_done is not None:
                    on_done(outcome, len(result.outcomes))

        await asyncio.gather(*(client_loop() for _ in range(concurrency)))
        result.wall_seconds = time.perf_counter() - started
    return result


def wait_ready(url: str, timeout: float = 300.0) -> float:
    """Seconds until the fleet's /ready answers 200 (raises TimeoutError after `timeout`)."""
    started = time.perf_counter()
    while time.perf_counter() - started < timeout:
        try:
            if httpx.get(f"{url}/ready", timeout=5).status_code == 200:
                return time.perf_counter() - started
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} not ready within {timeout:.0f}s")


def metric(url: str, name: str) -> float:
    """The sum of a Prometheus metric's samples on the fleet's /metrics (0 when absent)."""
    total = 0.0
    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        if line.startswith(name) and line[len(name) : len(name) + 1] in (" ", "{"):
            total += float(line.rsplit(" ", 1)[1])
    return total
