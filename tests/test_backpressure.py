"""Back-pressure in time: admission by estimated queued seconds (429 + Retry-After, /ready 503 meanwhile), nothing
accepted lost, and a single-process /health that reports a stuck engine."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
from conftest import wait_until

from rerankd.api import create_app
from rerankd.config import Settings
from rerankd.errors import Overloaded
from rerankd.pipeline.admission import Admission, Stage


def test_admission_holds_work_until_the_request_ends_and_turns_away_past_the_limit() -> None:
    admission = Admission(max_queue_seconds=10)
    # The second is judged by the 6 s ahead of it.
    with admission.admit(Stage("m", 6.0)), admission.admit(Stage("m", 6.0)):
        assert admission.queued_seconds("m") == 12.0
        assert admission.overloaded()
        with pytest.raises(Overloaded) as refused, admission.admit(Stage("m", 20.0)):
            pass
        assert refused.value.retry_after >= 1
        assert "max_queue_seconds=10" in refused.value.message
        # Under fair turns a small request waits ~its own work per request ahead, not the whole queue.
        with admission.admit(Stage("m", 0.1)):
            pass
        with admission.admit(Stage("other", 1.0)):  # models queue separately
            pass
    assert admission.queued_seconds("m") == 0.0
    assert not admission.overloaded()


def test_under_fifo_every_request_waits_for_the_whole_queue() -> None:
    admission = Admission(max_queue_seconds=10, fair=False)
    with admission.admit(Stage("m", 11.0)), pytest.raises(Overloaded), admission.admit(Stage("m", 0.1)):
        pass


def test_a_large_request_is_not_starved_by_its_own_size() -> None:
    admission = Admission(max_queue_seconds=1)
    with admission.admit(Stage("m", 1000.0)):  # an idle model admits anything
        pass
    # Under the limit: admitted, whatever its size.
    with admission.admit(Stage("m", 0.5)), admission.admit(Stage("m", 1000.0)):
        assert admission.queued_seconds("m") == 1000.5
    unlimited = Admission(max_queue_seconds=0)
    with unlimited.admit(Stage("m", 1e9)), unlimited.admit(Stage("m", 1e9)):  # 0 turns the limit off
        assert not unlimited.overloaded()


def test_a_cascade_is_judged_and_held_on_each_of_its_models_queues() -> None:
    admission = Admission(max_queue_seconds=5)
    first, own = Stage("fast", 8.0, "first_stage_model"), Stage("slow", 2.0)
    with admission.admit(Stage("fast", 6.0)):  # the first model's queue is busy, the slow model's idle
        with pytest.raises(Overloaded) as refused, admission.admit(first, own):
            pass
        assert refused.value.message.startswith("first_stage_model fast: expected wait 6.0 s")
        assert refused.value.retry_after >= 1
        assert admission.queued_seconds("slow") == 0.0  # a refused request holds nothing
        with admission.admit(Stage("fast", 3.0, "first_stage_model"), own) as ticket:
            assert (admission.queued_seconds("fast"), admission.queued_seconds("slow")) == (9.0, 2.0)
            ticket.stage_done(0)  # the first model answered: its queue is free while the slow model works
            ticket.stage_done(0)  # once only
            assert (admission.queued_seconds("fast"), admission.queued_seconds("slow")) == (6.0, 2.0)
        assert admission.queued_seconds("slow") == 0.0
    with pytest.raises(RuntimeError), admission.admit(first, own):  # a failed request releases every stage
        raise RuntimeError
    assert admission.queued_seconds("fast") == admission.queued_seconds("slow") == 0.0


@pytest.mark.slow  # a load burst: long on a busy machine
def test_a_burst_past_max_queue_seconds_gets_fast_429s_and_every_accepted_answer(thread_server) -> None:
    settings = Settings(model=["ce-fixture"], warmup_seconds=0.5, max_queue_seconds=1.0, embedding_model="")
    with thread_server(create_app(settings)) as srv:
        wait_until(lambda: httpx.get(f"{srv.url}/ready").status_code == 200, timeout=120)
        body = {"query": "q", "documents": [f"document number {i} " * 30 for i in range(60)]}
        readiness: list[int] = []

        async def burst() -> list[tuple[httpx.Response, float]]:
            async with httpx.AsyncClient(base_url=srv.url, timeout=120) as client:

                async def one() -> tuple[httpx.Response, float]:
                    started = time.perf_counter()
                    response = await client.post("/v2/rerank", json=body)
                    return response, time.perf_counter() - started

                async def watch_ready() -> None:
                    for _ in range(20):
                        readiness.append((await client.get("/ready")).status_code)
                        await asyncio.sleep(0.05)

                *answers, _ = await asyncio.gather(*(one() for _ in range(12)), watch_ready())
                return answers

        answers = asyncio.run(burst())
        codes = [response.status_code for response, _ in answers]
        assert set(codes) <= {200, 429} and 429 in codes and 200 in codes
        for response, _ in answers:
            if response.status_code == 429:
                assert int(response.headers["retry-after"]) >= 1
                assert "max_queue_seconds" in response.json()["error"]["message"]
            else:
                assert sorted(r["index"] for r in response.json()["results"]) == list(range(60))
        assert 503 in readiness  # the load balancer is told while the queue is over the limit
        wait_until(lambda: httpx.get(f"{srv.url}/ready").status_code == 200, timeout=60)


@pytest.mark.slow  # waits out a stall on purpose
def test_health_reports_a_stuck_engine_then_recovers(thread_server) -> None:
    # A stall limit shorter than one batch: while a large request runs, the engine counts as stuck.
    # No request deadline: on a loaded machine the request must still end in 200, however long it takes.
    settings = Settings(
        model=["ce-fixture"],
        warmup_seconds=0,
        replica_stall_seconds=0.05,
        embedding_model="",
        request_timeout_seconds=600,
    )
    with thread_server(create_app(settings)) as srv:
        wait_until(lambda: httpx.get(f"{srv.url}/ready").status_code == 200, timeout=120)
        body = {"query": "q", "documents": [f"document number {i} " * 80 for i in range(80)]}

        async def run() -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=srv.url, timeout=600) as client:
                work = asyncio.ensure_future(client.post("/v2/rerank", json=body))
                seen = []
                while not work.done():
                    seen.append(await client.get("/health"))
                    await asyncio.sleep(0.02)
                assert (await work).status_code == 200
                return seen

        seen = asyncio.run(run())
        stuck = [r for r in seen if r.status_code == 503]
        assert stuck and "replica_stall_seconds" in stuck[0].json()["reason"]
        assert httpx.get(f"{srv.url}/health").status_code == 200  # idle again: not stuck
