"""Writes one benchmark's section of `benchmarks/RESULTS.md`, leaving the other sections alone."""

from __future__ import annotations

import os
import pathlib
import platform
import re
import sys

import jax

RESULTS = pathlib.Path(__file__).with_name("RESULTS.md")
HEADER = "# Benchmark results\n\nEach section is written by the script it names; rerun it to refresh.\n"


def machine() -> str:
    """One line saying where the numbers were taken."""
    return (f"{platform.processor() or platform.machine()}, jax {jax.__version__}, "
            f"{jax.device_count()} {jax.default_backend()} device(s), Python {platform.python_version()}")


def write_section(name: str, body: str) -> None:
    """Replaces (or appends) the section ``## name`` with ``body`` plus the command that made it."""
    module = "benchmarks." + os.path.splitext(os.path.basename(sys.argv[0]))[0]
    command = " ".join(["python -m", module, *sys.argv[1:]])
    section = f"## {name}\n\nCommand: `{command}`  \nMachine: {machine()}\n\n{body.strip()}\n"
    text = RESULTS.read_text() if RESULTS.exists() else HEADER
    pattern = re.compile(rf"^## {re.escape(name)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: section + "\n", text)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    RESULTS.write_text(text.rstrip("\n") + "\n")
