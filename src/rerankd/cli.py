"""`rerankd` command line: serve | rerank | eval | calibrate | corpus-stats | fixture | config | deploy.

Every `Settings` field is a flag of `serve` (`max_batch_tokens` -> `--max-batch-tokens`), so flags, environment
variables and YAML keys always agree. The flags go to `Settings.load` as its highest layer (pydantic-settings reads
the others). They are argparse rather than pydantic-settings' CliSettingsSource, which gives a parser every field
of its class: `rerank` and `eval` take a few settings beside arguments of their own.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import types
import typing
from pathlib import Path
from typing import Any

from rerankd.config import ENV_PREFIX, Settings
from rerankd.deploy import kubernetes
from rerankd.errors import RerankdError
from rerankd.evaluation import command as evaluation

# Settings that make sense for a one-off rerank in the shell.
_RERANK_FLAGS = ("model", "model_kind", "backend", "precision", "device", "threads", "max_batch_tokens", "cache_dir")


def add_settings_flags(parser: argparse.ArgumentParser, names: typing.Iterable[str] | None = None) -> None:
    """One flag per setting (and, for all of them, `--config`). Defaults are None so that an absent flag leaves
    env/YAML values alone."""
    if names is None:
        parser.add_argument("--config", help=f"YAML file of settings [env {ENV_PREFIX}CONFIG]")
    for name in names or Settings.model_fields:
        field = Settings.model_fields[name]
        flag = "--" + name.replace("_", "-")
        help_text = f"{field.description} [env {ENV_PREFIX}{name.upper()}]"
        origin = typing.get_origin(field.annotation)
        if origin is list:
            parser.add_argument(flag, action="append", default=None, help=help_text + " (repeatable)")
        elif field.annotation is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        elif origin is typing.Literal:
            parser.add_argument(flag, choices=typing.get_args(field.annotation), default=None, help=help_text)
        elif origin in (types.UnionType, typing.Union) or field.annotation in (str, int, float, Path):
            parser.add_argument(flag, default=None, help=help_text)
        else:  # pragma: no cover - a new field type needs a rule here
            raise TypeError(f"no CLI rule for setting {name}: {field.annotation}")


def _settings(args: argparse.Namespace, names: typing.Iterable[str] | None = None) -> Settings:
    overrides = {name: getattr(args, name, None) for name in names or Settings.model_fields}
    return Settings.load(overrides, getattr(args, "config", None))


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from rerankd.api import create_app
    from rerankd.api.server import build_server
    from rerankd.backends.select import choose
    from rerankd.fleet.launch import serve_fleet
    from rerankd.logs import configure_logging
    from rerankd.metrics import Metrics
    from rerankd.models import resolve_model
    from rerankd.pipeline.service import LocalService

    settings = _settings(args)
    configure_logging(settings.log_level, settings.log_format)
    if settings.ray_address:  # joining a cluster: replicas resolve the model on their own nodes
        return serve_fleet(settings)
    # Resolve (and download) before the port opens, so a wrong model id fails at once with a clear message.
    specs = [resolve_model(name, kind=settings.model_kind, cache_dir=settings.cache_dir) for name in settings.model]
    for spec in specs:  # each model's engine: the choice depends on its kind; fails fast on an impossible one
        print(f"rerankd: serving {spec.name} ({spec.kind}) from {spec.path}", file=sys.stderr)
        print(f"rerankd: engine {choose(settings, kind=spec.kind)}", file=sys.stderr)
    if settings.replicas or settings.autoscale:
        return serve_fleet(settings)
    metrics = Metrics()
    server: uvicorn.Server | None = None

    def stop() -> None:
        if server is not None:
            server.should_exit = True

    service = LocalService(settings, metrics, specs=specs, on_failure=stop)
    server = build_server(create_app(settings, service, metrics), settings)
    server.run()
    return 1 if service.state == "failed" else 0


def cmd_rerank(args: argparse.Namespace) -> int:
    from rerankd.pipeline.service import LocalService
    from rerankd.pipeline.types import RerankRequest

    # One-off: no warm-up, and no embedding pre-filter (plain direct scoring needs none).
    settings = _settings(args, _RERANK_FLAGS).model_copy(update={"warmup_seconds": 0.0, "embedding_model": ""})
    source = sys.stdin if args.file == "-" else open(args.file, encoding="utf-8")  # noqa: SIM115
    with source:
        documents = [line.rstrip("\n") for line in source if line.strip()]
    service = LocalService(settings)
    service.load()
    try:
        request = RerankRequest(
            args.query, documents, top_n=args.top_n, raw_scores=args.raw_scores, instruction=args.instruction
        )
        result = asyncio.run(service.rerank(request))
    finally:
        service.close()
    if args.json:
        print(json.dumps([{"index": r.index, "score": r.score, "text": documents[r.index]} for r in result.results]))
        return 0
    width = max(20, shutil.get_terminal_size((100, 20)).columns - 28)
    print(f"{'rank':>4}  {'index':>5}  {'score':>9}  document")
    for rank, r in enumerate(result.results, 1):
        text = documents[r.index]
        print(f"{rank:>4}  {r.index:>5}  {r.score:>9.4f}  {text[:width] + ('…' if len(text) > width else '')}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    return evaluation.run(args, _settings(args, evaluation.EVAL_SETTINGS))


def cmd_calibrate(args: argparse.Namespace) -> int:
    return evaluation.run_calibrate(args, _settings(args, evaluation.EVAL_SETTINGS))


def cmd_corpus_stats(args: argparse.Namespace) -> int:
    """Count a corpus's BM25 statistics into a file for `--corpus-stats`."""
    from rerankd.first_stage.corpus_stats import CountedStatistics, corpus_texts

    statistics = CountedStatistics.count(corpus_texts(Path(args.corpus)))
    statistics.save(Path(args.output), source=str(Path(args.corpus).resolve()))
    print(
        f"rerankd: {statistics.documents} documents, {len(statistics.frequencies)} terms, mean length "
        f"{statistics.average_length:.1f} terms -> {args.output}",
        file=sys.stderr,
    )
    return 0


def cmd_fixture(args: argparse.Namespace) -> int:
    from rerankd.models.fixture import build_ce_fixture

    print(build_ce_fixture(Path(args.cache_dir) if args.cache_dir else None))
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    """Print the settings in force (or, with --markdown, the table of every knob)."""
    if args.markdown:
        print("| setting | CLI flag | environment | default | meaning |\n|---|---|---|---|---|")
        for name, field in Settings.model_fields.items():
            default: Any = field.get_default(call_default_factory=True)
            if isinstance(default, Path) and default.is_relative_to(Path.home()):  # the same table on any machine
                default = Path("~", default.relative_to(Path.home()))
            print(
                f"| `{name}` | `--{name.replace('_', '-')}` | `{ENV_PREFIX}{name.upper()}` | `{default}` | "
                f"{field.description} |"
            )
        return 0
    print(json.dumps(_settings(args).model_dump(mode="json"), indent=2))
    return 0


def cmd_deploy(args: argparse.Namespace) -> int:
    """Print Kubernetes manifests (KubeRay RayService, or plain) generated from the settings."""
    return kubernetes.run(args, _settings(args))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rerankd", description="A fast reranking service.")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="Serve the HTTP API.")
    add_settings_flags(serve)
    serve.set_defaults(run=cmd_serve)

    rerank = commands.add_parser("rerank", help="Rerank the lines of a file (or - for stdin) against a query.")
    rerank.add_argument("query")
    rerank.add_argument("file", help="one document per line; - reads standard input")
    rerank.add_argument("--top-n", type=int, default=None)
    rerank.add_argument("--raw-scores", action="store_true", help="logits instead of sigmoid scores")
    rerank.add_argument("--json", action="store_true", help="print JSON instead of a table")
    rerank.add_argument("--instruction", default=None, help="an LLM reranker's task description")
    add_settings_flags(rerank, _RERANK_FLAGS)
    rerank.set_defaults(run=cmd_rerank)

    evaluate = commands.add_parser("eval", help="Measure every strategy's accuracy and speed on a BEIR folder.")
    evaluation.add_arguments(evaluate)
    add_settings_flags(evaluate, evaluation.EVAL_SETTINGS)
    evaluate.set_defaults(run=cmd_eval)

    calibrate = commands.add_parser(
        "calibrate", help="Fit score -> P(relevant) maps on a labelled BEIR split; write a file for --calibration."
    )
    evaluation.add_calibrate_arguments(calibrate)
    add_settings_flags(calibrate, evaluation.EVAL_SETTINGS)
    calibrate.set_defaults(run=cmd_calibrate)

    corpus_stats = commands.add_parser(
        "corpus-stats", help="Count a corpus's BM25 statistics (document frequencies) into a file for --corpus-stats."
    )
    corpus_stats.add_argument("corpus", help="a BEIR folder or corpus.jsonl, or a text file of one document a line")
    corpus_stats.add_argument("--output", required=True, help="the statistics file to write (.json, or .json.gz)")
    corpus_stats.set_defaults(run=cmd_corpus_stats)

    fixture = commands.add_parser("fixture", help="Build the ce-fixture test cross-encoder; print its folder.")
    fixture.add_argument("--cache-dir", default=None)
    fixture.set_defaults(run=cmd_fixture)

    config = commands.add_parser("config", help="Print the settings in force.")
    config.add_argument("--markdown", action="store_true", help="print the table of all settings instead")
    add_settings_flags(config)
    config.set_defaults(run=cmd_config)

    deploy = commands.add_parser("deploy", help="Print Kubernetes manifests for these settings (docs/fleet.md).")
    kubernetes.add_arguments(deploy)
    add_settings_flags(deploy)
    deploy.set_defaults(run=cmd_deploy)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except RerankdError as exc:
        print(f"rerankd: {exc.message}", file=sys.stderr)
        return 2
    except ValueError as exc:  # invalid settings (pydantic) or bad flag values
        print(f"rerankd: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
