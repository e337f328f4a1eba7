"""The docs' examples run: every fenced block preceded by a ``<!-- test -->`` line in docs/*.md is executed
(```python in-process, ```bash with the venv's ``featurestream`` on PATH), in one temporary directory per
document that holds a link to ``examples/``; blocks of one document share that directory, in order."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
DOCS = REPO_ROOT / "docs"
MARK = "<!-- test -->"
_BLOCK = re.compile(r"^<!-- test -->\n```(python|bash)\n(.*?)^```", re.M | re.S)


def _marked_blocks(text: str) -> list[tuple[str, str]]:
    return [(m.group(1), m.group(2)) for m in _BLOCK.finditer(text)]


DOCUMENTS = sorted(p for p in DOCS.glob("*.md") if f"\n{MARK}\n" in p.read_text())


@pytest.mark.parametrize("doc", DOCUMENTS, ids=lambda p: p.name)
def test_marked_blocks_run(doc, tmp_path, monkeypatch):
    text = doc.read_text()
    blocks = _marked_blocks(text)
    assert len(blocks) == len(re.findall(r"^<!-- test -->$", text, re.M)), f"{doc.name}: a {MARK} line must precede a ```python or ```bash block"
    (tmp_path / "examples").symlink_to(REPO_ROOT / "examples")
    monkeypatch.chdir(tmp_path)
    for key in [k for k in os.environ if k.startswith("FEATURESTREAM_")]:
        monkeypatch.delenv(key)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "PYTHONPATH": str(REPO_ROOT)}  # fmt: skip
    for i, (lang, code) in enumerate(blocks):
        if lang == "python":
            exec(compile(code, f"{doc.name}[block {i}]", "exec"), {"__name__": f"docs_{doc.stem}_{i}"})
        else:
            done = subprocess.run(["bash", "-euo", "pipefail", "-c", code], env=env, capture_output=True,
                                  text=True, timeout=120)  # fmt: skip
            assert done.returncode == 0, f"{doc.name}[block {i}]:\n{code}\n{done.stdout}\n{done.stderr}"


def test_reference_covers_every_command():
    from featurestream.cli import build_parser

    parser = build_parser()
    commands = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction").choices
    reference = (DOCS / "reference.md").read_text()
    missing = [c for c in commands if f"### `featurestream {c}`" not in reference]
    assert not missing, f"docs/reference.md lacks {missing}; regenerate with: python docs/gen_reference.py"


def test_docs_links_resolve():
    for doc in [*DOCS.glob("*.md"), REPO_ROOT / "README.md"]:
        for target in re.findall(r"\]\(([^)#:]+\.md)(?:#[^)]*)?\)", doc.read_text()):
            assert (doc.parent / target).exists(), f"{doc.name} links to missing {target}"
