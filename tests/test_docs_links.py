"""Every relative link and image in README.md and docs/*.md leads somewhere: the file exists, and
an ``#anchor`` names a heading of that file, slugged as GitHub does."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.MULTILINE | re.DOTALL)
CODE_SPAN = re.compile(r"(`+)(?!`).+?(?<!`)\1(?!`)", re.DOTALL)
# [text](target) and ![alt](target), an optional "title" after the target; <target> allowed.
INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_DEFINITION = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s.*)?$", re.MULTILINE)
HTML_SOURCE = re.compile(r"<(?:img|a)\b[^>]*?\b(?:src|href)=\"([^\"]+)\"", re.IGNORECASE)
HEADING = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.+?)[ \t]*#*[ \t]*$", re.MULTILINE)
EXTERNAL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")  # http:, https:, mailto:, ...


def _prose(markdown: str) -> str:
    """``markdown`` without fenced code blocks (a ``# comment`` there is no heading, and a
    ``[x](y)`` no link)."""
    return FENCE.sub("", markdown)


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: its text (links and code marks dropped) lowercased,
    every character but letters, digits, ``-``, ``_`` and spaces removed, spaces made ``-``."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    text = text.replace("`", "")
    kept = "".join(c for c in text.lower() if c.isalnum() or c in " -_")
    return kept.replace(" ", "-")


def anchors(markdown: str) -> set[str]:
    """Every heading anchor of a document; a repeated slug gets ``-1``, ``-2``... as on GitHub."""
    found: set[str] = set()
    counts: dict[str, int] = {}
    for _, text in HEADING.findall(_prose(markdown)):
        slug = github_slug(text)
        n = counts.get(slug, 0)
        counts[slug] = n + 1
        found.add(slug if n == 0 else f"{slug}-{n}")
    return found


def link_targets(markdown: str) -> list[str]:
    """The targets of the links and images of a document, outside code."""
    prose = CODE_SPAN.sub("", _prose(markdown))
    return [
        *INLINE_LINK.findall(prose),
        *REFERENCE_DEFINITION.findall(prose),
        *HTML_SOURCE.findall(prose),
    ]


def broken_links(document: Path, root: Path = ROOT) -> list[str]:
    """One line for each relative link of ``document`` that leads nowhere inside ``root``."""
    problems = []
    for target in link_targets(document.read_text()):
        if EXTERNAL.match(target):
            continue
        path, _, anchor = target.partition("#")
        resolved = (document.parent / path).resolve() if path else document
        name = f"{target!r} in {document.relative_to(root)}"
        if root not in resolved.parents and resolved != root:
            problems.append(f"{name}: outside the repository")
        elif not resolved.exists():
            problems.append(f"{name}: no such file")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved.read_text()):
            problems.append(f"{name}: no heading with that anchor")
    return problems


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_and_anchor_leads_somewhere(document: Path) -> None:
    assert broken_links(document) == []


def test_the_documents_link_to_each_other() -> None:
    """The README is the front page: it links every document under docs/ (none is orphaned),
    and the check above really sees links (a broken pattern would find none and pass)."""
    readme_targets = {t.partition("#")[0] for t in link_targets((ROOT / "README.md").read_text())}
    orphans = [p.name for p in DOCUMENTS[1:] if f"docs/{p.name}" not in readme_targets]
    assert orphans == []
    assert "docs/web-page.png" in readme_targets


@pytest.mark.parametrize(
    ("heading", "slug"),
    [
        ("Submit: `POST /v1/jobs`", "submit-post-v1jobs"),
        ("Delivery log: `GET /v1/jobs/<id>/deliveries`", "delivery-log-get-v1jobsiddeliveries"),
        ("Ready? `internvl-queue doctor`", "ready-internvl-queue-doctor"),
        ("What Redis's append-only file can lose", "what-rediss-append-only-file-can-lose"),
        ("Volumes, logs", "volumes-logs"),
        ("INTERNVL_AUTH and [keys](api.md)", "internvl_auth-and-keys"),
    ],
)
def test_github_slugs(heading: str, slug: str) -> None:
    assert github_slug(heading) == slug


def test_a_broken_link_and_a_missing_anchor_are_found(tmp_path: Path) -> None:
    markdown = (
        "# Title\n\n## Part two\n\n[ok](#part-two) [gone](#part-three) ![img](missing.png)\n"
        "```sh\n# not a heading [x](nowhere.md)\n```\n`[code](nowhere.md)` [web](https://x.y/)\n"
    )
    assert anchors(markdown) == {"title", "part-two"}
    assert link_targets(markdown) == ["#part-two", "#part-three", "missing.png", "https://x.y/"]
    document = tmp_path / "doc.md"
    document.write_text(markdown + "[up](../outside.md) [other](other.md#part-two)\n")
    (tmp_path / "other.md").write_text("## Part one\n")
    assert broken_links(document, tmp_path) == [
        "'#part-three' in doc.md: no heading with that anchor",
        "'missing.png' in doc.md: no such file",
        "'../outside.md' in doc.md: outside the repository",
        "'other.md#part-two' in doc.md: no heading with that anchor",
    ]
