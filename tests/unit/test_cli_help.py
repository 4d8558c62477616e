"""`leanserve serve --help` renders every flag, the built-in plugins' included."""

from __future__ import annotations

import argparse

from pydantic import Field

from service.cli import add_settings_flags
from service.settings import Settings


def test_help_renders_every_settings_field_of_the_built_in_plugins():
    parser = argparse.ArgumentParser(prog="leanserve serve")
    add_settings_flags(parser, Settings)  # the built-in plugins' fields included
    text = parser.format_help()
    assert all(f"--{name.replace('_', '-')}" in text for name in Settings.model_fields
               if name not in ("api_keys", "engine_args"))  # --api-key, --engine-arg: repeated
    assert "--api-key" in text and "--engine-arg" in text


def test_a_percent_sign_in_a_description_is_shown_as_written():
    class WithPercent(Settings):
        saving_target: float = Field(0.9, description="tokens pruned (90% by default)")

    parser = argparse.ArgumentParser(prog="leanserve serve")
    add_settings_flags(parser, WithPercent)
    assert "(90% by default)" in parser.format_help()  # argparse %-formats help: a bare "%" would raise
