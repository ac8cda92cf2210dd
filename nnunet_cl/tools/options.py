"""Command-line parsing shared by the subcommands."""

from __future__ import annotations

import argparse


def parse_option(text: str) -> tuple:
    """``-o key=value`` -> ``(key, value)``; the method converts the value to its option's type."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"method option {text!r} must look like key=value")
    key, value = text.split("=", 1)
    return key.strip(), value.strip()
