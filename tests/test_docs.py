"""Docs match the code: every `make` target and every `mammo` command and flag shown in a code
block of the README and the other docs exists."""

from __future__ import annotations

import contextlib
import io
import re
import subprocess
from functools import cache
from pathlib import Path

import pytest

from mammo.cli import main

ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted(
    {ROOT / "README.md", *ROOT.glob("docs/*.md"), *ROOT.glob("components/**/README.md"), *ROOT.glob("pipelines/**/README.md")}
)
SHELL_LANGUAGES = {"", "bash", "sh", "shell", "console"}


def shell_blocks(text: str) -> list[str]:
    """Bodies of fenced code blocks that hold shell (no language, bash, sh, console)."""
    blocks, body, language = [], None, ""
    for line in text.splitlines():
        if line.startswith("```"):
            if body is None:
                body, language = [], line[3:].strip()
            else:
                if language in SHELL_LANGUAGES:
                    blocks.append("\n".join(body))
                body = None
        elif body is not None:
            body.append(line)
    return blocks


def command_lines(path: Path) -> list[str]:
    """Shell lines of the fenced code blocks, continuations joined, prompts and comments dropped."""
    lines = []
    for block in shell_blocks(path.read_text()):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #")[0].strip().removeprefix("$ ")
            if line and not line.startswith("#"):
                lines.append(line)
    return lines


def mammo_invocations() -> list[tuple[str, list[str]]]:
    found = []
    for path in DOCS:
        for line in command_lines(path):
            for part in re.split(r"\s*(?:&&|\|\||;|\|)\s*", line):
                words = part.split()
                while words and (re.fullmatch(r"[A-Z_]+=\S*", words[0]) or words[0] in {"time", "exec"}):
                    words = words[1:]
                if words and (words[0] == "mammo" or words[0].endswith("/mammo")):
                    found.append((f"{path.relative_to(ROOT)}: {part}", words[1:]))
    return found


def make_invocations() -> list[tuple[str, str]]:
    found = []
    for path in DOCS:
        for line in command_lines(path):
            words = line.split()
            while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):  # VAR=value make ...
                words = words[1:]
            if words[:1] == ["make"]:
                for target in words[1:]:
                    if not target.startswith("-") and "=" not in target:
                        found.append((f"{path.relative_to(ROOT)}: {line}", target))
    return found


@cache
def make_targets() -> set[str]:
    out = subprocess.run(["make", "-pRrq", "-f", "Makefile", ":"], cwd=ROOT, capture_output=True, text=True).stdout
    return {m.group(1) for m in re.finditer(r"^([A-Za-z0-9_.-]+):", out, re.M)}


def command_words(args: list[str]) -> list[str]:
    """The subcommand path: words up to the first option, path, value or placeholder."""
    words = []
    for word in args:
        if word.startswith(("-", ".", "/", "<", "$", "'", '"')) or "/" in word or "=" in word or word.isupper():
            break
        words.append(word)
        if len(words) == 2 or words[0] in {"run", "split", "train", "unfreeze", "evaluate"}:
            break
    return words


@cache
def help_text(words: tuple[str, ...]) -> str:
    out, err = io.StringIO(), io.StringIO()
    code: object = None
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([*words, "--help"])
        except SystemExit as exit_info:
            code = exit_info.code
    assert code in (0, None), f"`mammo {' '.join(words)} --help` failed: {err.getvalue().strip()}"
    return out.getvalue()


def test_docs_exist():
    assert ROOT / "README.md" in DOCS and len(DOCS) >= 2


def test_readme_starts_with_the_two_commands():
    lines = command_lines(ROOT / "README.md")
    assert lines[:2] == ["make run", "make test"]


@pytest.mark.parametrize(("where", "target"), make_invocations())
def test_make_targets_exist(where, target):
    assert target in make_targets(), where


@pytest.mark.parametrize(("where", "args"), mammo_invocations())
def test_mammo_commands_and_flags_exist(where, args):
    words = command_words(args)
    text = help_text(tuple(words))
    for flag in (a.split("=")[0] for a in args if a.startswith("--")):
        assert flag in text, f"{where}: {flag} is not an option of `mammo {' '.join(words)}`"
