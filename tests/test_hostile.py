"""Hostile clients: nothing a client sends crashes, stalls or exhausts the server. Every case gets a clear 4xx (or a
bounded, correct answer) in little time, and the server stays healthy after each.

One real `rerankd serve` process with the default limits (16 MB bodies), so its memory can be read from /proc.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import served, wait_until

from rerankd.api import create_app
from rerankd.api.errors import ERROR_RESPONSES
from rerankd.cli import _settings, build_parser
from rerankd.config import Settings
from rerankd.engine.tokenize import Tokenizer
from rerankd.models import resolve_model
from rerankd.pipeline.service import LocalService
from rerankd.pipeline.types import ModelInfo, RerankRequest, RerankResult

REQUEST_SECONDS = 2.0  # the bound for a hostile request's answer (or refusal)
RSS_GROWTH_MB = 300
HEADER_TIMEOUT = 2
BODY_TIMEOUT = 2


@pytest.fixture(scope="module")
def hostile_server(ce_fixture_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    log = tmp_path_factory.mktemp("hostile") / "server.log"
    arguments = [
        "--model", "ce-fixture", "--warmup-seconds", "0.5", "--backend", "onnx", "--precision", "fp32",
        "--embedding-model", "", "--header-timeout-seconds", str(HEADER_TIMEOUT),
        "--body-timeout-seconds", str(BODY_TIMEOUT),
    ]  # fmt: skip
    with served(arguments, log) as (url, process):
        yield url, process.pid


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def post(url: str, path: str, body: dict | bytes, **kwargs) -> tuple[httpx.Response, float]:
    started = time.perf_counter()
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"content-type": "application/json", **kwargs.pop("headers", {})}
    response = httpx.post(f"{url}{path}", content=content, headers=headers, timeout=60, **kwargs)
    return response, time.perf_counter() - started


def assert_healthy(url: str) -> None:
    assert httpx.get(f"{url}/health", timeout=5).status_code == 200
    response, _ = post(url, "/v2/rerank", {"query": "sql", "documents": ["SQLite database", "a game"]})
    assert response.status_code == 200


# -- the race: one tokenizer, many threads ----------------------------------------------------------------------


def test_tokenizer_is_safe_under_threads_mixing_truncating_and_counting_calls(ce_fixture_path: Path) -> None:
    tokenizer = Tokenizer(resolve_model("ce-fixture"))
    query = tokenizer.tokens(["how do I store data in a lightweight database"])[0]
    long_documents = ["database " * 900, "alarm clock " * 700] * 8
    over_length, errors = [], []
    stop = time.monotonic() + 5

    def encode() -> None:
        while time.monotonic() < stop:
            over_length.extend(len(item) for item in tokenizer.encode_pairs(query, long_documents) if len(item) > 512)

    def count_and_clip() -> None:
        while time.monotonic() < stop:
            tokenizer.tokens(long_documents)  # every token: no truncation
            tokenizer.clip(long_documents[0], 20)
            tokenizer.encode_texts(long_documents[:2])

    def guarded(target) -> None:
        try:
            target()
        except Exception as exc:  # collected: an exception in a thread would not fail the test
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=(t,)) for t in (encode, count_and_clip, encode, count_and_clip)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == []
    assert over_length == []


# -- sizes: each answered or refused fast, memory bounded ------------------------------------------------------


@pytest.mark.parametrize(
    ("case", "body", "statuses"),
    [
        ("1 MB query", {"query": "word " * 200_000, "documents": ["one"] * 1000}, {413}),
        ("4 MB query", {"query": "x" * 4_000_000, "documents": ["a"]}, {413}),
        ("query over the window", {"query": "database " * 3000, "documents": ["a"]}, {413}),
        ("10 MB document", {"query": "sql", "documents": ["database " * 1_200_000, "short"]}, {200}),
        (
            "10 MB document, chunked",
            {"query": "sql", "documents": ["database " * 1_200_000], "max_chunks_per_doc": 5},
            {200},
        ),
        (
            "10 MB document, hybrid",
            {"query": "sql", "documents": ["database " * 1_200_000, "sql"] * 1, "strategy": "hybrid"},
            {200},
        ),
        (
            "10 MB document, clipped",
            {"query": "sql", "documents": ["database " * 1_200_000], "max_tokens_per_doc": 8},
            {200},
        ),
        ("17 MB body", {"query": "sql", "documents": ["x" * (17 * 2**20)]}, {413}),
    ],
)
def test_large_inputs_are_answered_or_refused_quickly_with_bounded_memory(hostile_server, case, body, statuses):
    url, pid = hostile_server
    before = rss_mb(pid)
    response, seconds = post(url, "/v2/rerank", body)
    assert response.status_code in statuses, response.text[:500]
    assert seconds < REQUEST_SECONDS + 1.5, f"{case}: {seconds:.2f}s"  # + the client's own JSON encoding/upload
    assert rss_mb(pid) - before < RSS_GROWTH_MB, case
    if response.status_code == 413:
        message = response.json()["error"]["message"]
        assert any(limit in message for limit in ("max_query_chars", "max_query_tokens", "max_request_bytes"))
    assert_healthy(url)


# -- bad text and shapes ------------------------------------------------------------------------------------------

SURROGATE = b'"lone \\ud800 surrogate"'


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/v2/rerank", b'{"query": ' + SURROGATE + b', "documents": ["a"]}', "query"),
        ("/v2/rerank", b'{"query": "q", "documents": ["a", ' + SURROGATE + b"]}", "documents[1]"),
        ("/v1/rerank", b'{"query": "q", "documents": [{"text": ' + SURROGATE + b"}]}", "documents[0]"),
        ("/rerank", b'{"query": "q", "texts": ["ok", ' + SURROGATE + b"]}", "texts[1]"),
        ("/rerank", b'{"query": ' + SURROGATE + b', "texts": ["ok"]}', "query"),
    ],
)
def test_lone_surrogates_are_a_400_naming_the_field(hostile_server, path, body, field) -> None:
    url, _ = hostile_server
    response, _ = post(url, path, body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["message"].startswith(f"{field}: lone surrogate")


@pytest.mark.parametrize(
    "body",
    [
        {"query": "sql", "documents": ["a", "the"], "strategy": "hybrid", "candidates": 1},
        {"query": "sql", "documents": ["", ""], "fusion": "zscore"},
        {"query": "sql", "documents": ["", "", ""], "fusion": "rrf", "strategy": "hybrid", "candidates": 2},
        {"query": "the", "documents": ["a", "of"], "fusion": "zscore"},
    ],
)
def test_first_stages_without_a_single_term_still_answer(hostile_server, body) -> None:
    url, _ = hostile_server
    response, _ = post(url, "/v2/rerank", body)
    assert response.status_code == 200, response.text
    assert sorted(r["index"] for r in response.json()["results"]) == list(range(len(body["documents"])))


def test_405_carries_allow_and_500s_are_in_the_openapi_document(hostile_server) -> None:
    url, _ = hostile_server
    response = httpx.get(f"{url}/v2/rerank")
    assert response.status_code == 405
    assert "POST" in response.headers["allow"]
    spec = httpx.get(f"{url}/openapi.json").json()
    for path in ("/v2/rerank", "/v1/rerank", "/rerank"):
        assert {"400", "413", "429", "504"} <= set(spec["paths"][path]["post"]["responses"])


def test_timeout_ms_gives_504_and_drops_the_work(hostile_server) -> None:
    url, _ = hostile_server
    body = {"query": "sql", "documents": [f"document {i} " * 100 for i in range(400)], "timeout_ms": 50}
    response, seconds = post(url, "/v2/rerank", body)
    assert response.status_code == 504
    assert "timeout_ms" in response.json()["error"]["message"]
    assert seconds < 2

    def queued_pairs() -> float:
        lines = httpx.get(f"{url}/metrics").text.splitlines()
        return sum(float(line.rsplit(" ", 1)[1]) for line in lines if line.startswith("rerankd_queue_pairs{"))

    wait_until(lambda: queued_pairs() == 0, timeout=5)  # the dropped work left the queue at once
    assert_healthy(url)


def test_request_timeout_seconds_bounds_any_timeout_ms(thread_server, ce_fixture_path) -> None:
    settings = Settings(model=["ce-fixture"], warmup_seconds=0, embedding_model="", request_timeout_seconds=0.05)
    with thread_server(create_app(settings)) as srv:
        wait_until(lambda: httpx.get(f"{srv.url}/ready").status_code == 200, timeout=120)
        documents = [f"document {i} " * 100 for i in range(400)]
        for timeout_ms in (1e12, 1e300, 60_000):  # a client cannot lift the server's deadline
            response, seconds = post(
                srv.url, "/v2/rerank", {"query": "sql", "documents": documents, "timeout_ms": timeout_ms}
            )
            assert response.status_code == 504, response.text[:300]
            assert "request_timeout_seconds" in response.json()["error"]["message"]
            assert seconds < 2
        short, _ = post(srv.url, "/v2/rerank", {"query": "sql", "documents": documents, "timeout_ms": 1})
        assert short.status_code == 504
        assert "timeout_ms" in short.json()["error"]["message"]  # a shorter deadline of the client's own applies


# -- slow clients ---------------------------------------------------------------------------------------------------


def test_slow_headers_are_cut_off_and_do_not_block_others(hostile_server) -> None:
    url, _ = hostile_server
    port = int(url.rsplit(":", 1)[1])
    slow = []
    for _ in range(200):
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        sock.sendall(b"POST /v2/rerank HTTP/1.1\r\nHost: x\r\n")  # and then nothing more
        slow.append(sock)
    try:
        assert_healthy(url)  # others are served meanwhile
        time.sleep(HEADER_TIMEOUT + 1)
        closed = 0
        for sock in slow:
            sock.settimeout(3)
            try:
                data = sock.recv(200)
            except OSError:
                data = b""
            closed += data.startswith(b"HTTP/1.1 408") or data == b""
        assert closed == len(slow)
    finally:
        for sock in slow:
            sock.close()


def test_a_body_trickled_byte_by_byte_gets_408(hostile_server) -> None:
    url, _ = hostile_server
    port = int(url.rsplit(":", 1)[1])
    head = b"POST /v2/rerank HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=BODY_TIMEOUT + 5) as sock:
        sock.sendall(head)
        started = time.monotonic()
        for byte in b'{"query": "sql", "documents": ':  # one byte every 0.25 s: slower than the time-out allows
            with contextlib.suppress(OSError):  # the server may have answered and closed already
                sock.sendall(bytes([byte]))
            time.sleep(0.25)
            if time.monotonic() - started > BODY_TIMEOUT + 1:
                break
        answer = sock.recv(1000)
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert b"body_timeout_seconds" in answer
    assert b"connection: close" in answer.lower()  # the rest of the body may still come: no next request on it
    assert_healthy(url)


def test_a_413_on_a_chunked_body_closes_the_connection_promptly(hostile_server) -> None:
    url, _ = hostile_server
    port = int(url.rsplit(":", 1)[1])
    head = b"POST /v2/rerank HTTP/1.1\r\nHost: x\r\ntransfer-encoding: chunked\r\n\r\n"
    chunk = b"%x\r\n%s\r\n" % (2**20, b"x" * 2**20)
    answer = b""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(head)
        for _ in range(40):  # up to 40 MB: the limit is 16 MB
            sock.sendall(chunk)
            sock.settimeout(0.01)
            with contextlib.suppress(TimeoutError):
                answer += sock.recv(65536)
            if b"\r\n\r\n" in answer:
                break
        assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
        assert b"connection: close" in answer.lower()
        # The server stops reading and closes: the client soon sees the end of the stream (or a reset).
        sock.settimeout(0.5)
        closed_after = None
        started = time.monotonic()
        while time.monotonic() - started < 5:
            try:
                sock.sendall(chunk)
                if sock.recv(65536) == b"":
                    closed_after = time.monotonic() - started
                    break
            except TimeoutError:
                continue
            except OSError:  # reset or broken pipe: closed
                closed_after = time.monotonic() - started
                break
    assert closed_after is not None and closed_after < BODY_TIMEOUT, "the server kept the connection open"
    assert_healthy(url)


# -- auth and keys --------------------------------------------------------------------------------------------------


def test_api_keys_take_comma_lists_repeats_and_a_file(tmp_path) -> None:
    keys_file = tmp_path / "keys"
    keys_file.write_text("# team keys\nfrom-file\n\n")
    args = build_parser().parse_args(
        ["serve", "--api-keys", "a,b", "--api-keys", "c", "--api-keys-file", str(keys_file)]
    )
    assert _settings(args).accepted_api_keys() == ["a", "b", "c", "from-file"]


def test_non_ascii_and_unknown_bearer_tokens_are_401_never_500(thread_server, ce_fixture_path) -> None:
    settings = Settings(model=["ce-fixture"], warmup_seconds=0, api_keys=["ключ", "plain"], embedding_model="")
    with thread_server(create_app(settings)) as srv:
        wait_until(lambda: httpx.get(f"{srv.url}/ready").status_code == 200, timeout=120)
        body = {"query": "q", "documents": ["a"]}

        def status(token: bytes, scheme: bytes = b"Bearer ") -> int:
            headers = [(b"authorization", scheme + token), (b"content-type", b"application/json")]
            return httpx.post(f"{srv.url}/v2/rerank", content=json.dumps(body), headers=headers).status_code

        assert status("ключ".encode()) == 200
        assert status(b"plain") == 200
        assert status("ключи".encode()) == 401
        assert status(b"\xff\xfe") == 401
        assert status(b"x") == 401
        assert status(b"", scheme=b"Bearer") == 401


def test_metrics_need_a_key_and_no_answer_shows_a_local_models_path(thread_server, ce_fixture_path) -> None:
    folder = str(ce_fixture_path)
    settings = Settings(model=[folder], warmup_seconds=0, api_keys=["k"], embedding_model="")
    key = {"authorization": "Bearer k"}
    with thread_server(create_app(settings)) as srv:
        wait_until(lambda: httpx.get(f"{srv.url}/ready").status_code == 200, timeout=120)
        assert httpx.get(f"{srv.url}/metrics").status_code == 401
        answers = []
        for name in (folder, ce_fixture_path.name, "default"):  # the path as given still names it
            response, _ = post(
                srv.url, "/v1/rerank", {"query": "sql", "documents": ["a", "b"], "model": name}, headers=key
            )
            assert response.status_code == 200, response.text
            assert response.json()["model"] == ce_fixture_path.name
            answers.append(response.text)
        missing, _ = post(srv.url, "/v2/rerank", {"query": "sql", "documents": ["a"], "model": "nope"}, headers=key)
        assert missing.status_code == 404
        models = httpx.get(f"{srv.url}/v1/models", headers=key)
        assert [model["id"] for model in models.json()["data"]] == [ce_fixture_path.name]
        metrics = httpx.get(f"{srv.url}/metrics", headers=key)
        assert metrics.status_code == 200 and f'model="{ce_fixture_path.name}"' in metrics.text
    for text in (*answers, missing.text, models.text, metrics.text):
        assert str(ce_fixture_path.parent) not in text


def test_metrics_can_be_left_open_to_a_scraper_without_a_key(thread_server) -> None:
    settings = Settings(api_keys=["k"], metrics_require_key=False)
    with thread_server(create_app(settings, service=_BrokenService())) as srv:
        assert httpx.get(f"{srv.url}/metrics").status_code == 200
        assert httpx.get(f"{srv.url}/v1/models").status_code == 401  # the API itself still needs the key


class _BrokenService:
    """A service with a bug: what a client sees of an unexpected exception."""

    state = "ready"
    overloaded = False

    def start(self) -> None: ...

    def close(self) -> None: ...

    def health_problem(self) -> None:
        return None

    def models(self) -> list[ModelInfo]:
        return []

    async def rerank(self, request: RerankRequest) -> RerankResult:
        raise KeyError("secret internal detail")


def test_a_500_says_internal_error_and_a_request_id_that_is_in_the_log(thread_server, caplog) -> None:
    with thread_server(create_app(Settings(), service=_BrokenService())) as srv:
        response = httpx.post(f"{srv.url}/v2/rerank", json={"query": "q", "documents": ["a"]})
    assert response.status_code == 500
    message = response.json()["error"]["message"]
    assert "secret" not in message and "KeyError" not in message
    request_id = response.headers["x-request-id"]
    assert message == f"internal error (request id {request_id})"
    assert any(request_id in record.getMessage() and record.exc_info for record in caplog.records)


def test_the_servers_cascade_model_asked_directly_prefilters_by_bm25_not_by_itself(ce_fixture_path) -> None:
    settings = Settings(model=["ce-fixture"], first_stage_model="ce-fixture", warmup_seconds=0, embedding_model="")
    service = LocalService(settings)
    service.load()
    try:
        request = RerankRequest("sql", ["SQLite database", "a game", "sql server"], strategy="hybrid", candidates=2)
        answer = asyncio.run(service.rerank(request))
    finally:
        service.close()
    assert answer.meta["rerankd"]["prefilter"] == "bm25"  # not "model:rerankd/ce-fixture": no document scored twice


def test_a_misconfigured_embedding_model_is_refused_at_start(ce_fixture_path) -> None:
    service = LocalService(Settings(model=["ce-fixture"], embedding_model="ce-fixture", warmup_seconds=0))
    with pytest.raises(Exception, match="must be a bi-encoder"):
        service.load()
    assert service.state == "failed"
    service.close()


def test_error_statuses_are_documented() -> None:
    assert {400, 413, 429, 504} <= set(ERROR_RESPONSES)
