"""`leanserve serve --help` renders every flag, the built-in plugins' included."""

from __future__ import annotations

import argparse

from service.cli import add_settings_flags
from service.settings import Settings


def test_help_renders_every_settings_field_even_with_percent_signs_in_descriptions():
    parser = argparse.ArgumentParser(prog="leanserve serve")
    add_settings_flags(parser, Settings)  # the built-in plugins' fields included
    text = parser.format_help()  # argparse %-formats each help string: a bare "%" would raise here
    assert "--adaptive-threshold" in text and "93%" in text
