"""The docs against the repository: every relative link resolves, and every closed set the
code keeps (statuses, result columns) is written in the doc that lists it.

No I/O beyond reading the markdown files; no Ray, no IREE: part of the fast tier.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from sweep.store.results import COLUMNS
from workers.core.kinds import Status

ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md")])
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^(```|~~~)")


def prose(path: Path) -> str:
    """The file without its fenced code blocks (their `#` lines are not headings)."""
    lines, inside = [], False
    for line in path.read_text().splitlines():
        if FENCE.match(line):
            inside = not inside
        elif not inside:
            lines.append(line)
    return "\n".join(lines)


def anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation but `-` and `_` dropped,
    spaces to `-`."""
    text = re.sub(r"`|\*\*|\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading's anchor, a repeated heading's as `-1`, `-2`, ... as GitHub numbers them."""
    seen: dict[str, int] = {}
    out = set()
    for line in prose(path).splitlines():
        m = re.match(r"#{1,6}\s+(.*)", line)
        if m:
            base = anchor(m.group(1))
            n = seen.get(base, 0)
            out.add(base if n == 0 else f"{base}-{n}")
            seen[base] = n + 1
    return out


def links(path: Path) -> list[str]:
    return [t for t in LINK.findall(prose(path)) if not re.match(r"[a-z]+:", t)]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_relative_link_resolves(doc: Path):
    """A link to a file names a file that exists, and its `#anchor` a heading in it."""
    broken = []
    for target in links(doc):
        file, _, frag = target.partition("#")
        dest = (doc.parent / file).resolve() if file else doc
        if not dest.exists():
            broken.append(f"{target}: no file {dest.relative_to(ROOT)}")
        elif frag and dest.suffix == ".md" and frag not in anchors(dest):
            broken.append(f"{target}: no heading with anchor #{frag} in {dest.name}")
    assert not broken, f"{doc.name} links to what is not there: {broken}"


def test_readme_links_name_their_file():
    """The front door's links say which file they open (`docs/config.md#...`), never a
    bare `#section` of the README itself."""
    bare = [t for t in links(ROOT / "README.md") if t.startswith("#")]
    assert not bare, f"README.md links without a file: {bare}"


def test_every_status_is_in_config_md():
    """docs/config.md lists the statuses a row can have: all of `Status`, no other."""
    text = prose(ROOT / "docs" / "config.md")
    listed = re.search(r"^Statuses: (.*?)(?=\n\n|\Z)", text, re.S | re.M)
    assert listed, "docs/config.md has no 'Statuses: ...' paragraph"
    named = set(re.findall(r"`([a-z_]+)`", listed.group(1)))
    missing = {s.value for s in Status} - named
    assert not missing, f"statuses missing from docs/config.md's 'Statuses:' list: {missing}"


def schema_doc_columns() -> set[str]:
    """The column names in the first cell of docs/schema.md's schema table; a name written
    as a suffix (`_p50` after `decode_ms_p10`) extends the cell's first name's stem."""
    names: set[str] = set()
    for line in prose(ROOT / "docs" / "schema.md").splitlines():
        if not line.startswith("| `"):
            continue
        cell = line.split("|")[1]
        stem = ""
        for name in re.findall(r"`([a-z0-9_]+)`", cell):
            if name.startswith("_"):
                names.add(stem + name)
            else:
                names.add(name)
                stem = stem or name.rsplit("_", 1)[0]
    return names


def test_every_result_column_is_in_schema_md():
    """docs/schema.md's table names every column of the Parquet schema, and no other."""
    documented = schema_doc_columns()
    missing = set(COLUMNS) - documented
    assert not missing, f"result columns missing from docs/schema.md's table: {sorted(missing)}"
    unknown = documented - set(COLUMNS)
    assert not unknown, f"docs/schema.md names columns the schema lacks: {sorted(unknown)}"


def test_layout_md_names_every_module():
    """docs/layout.md's file map names every module and subpackage of sweep/ and workers/."""
    text = (ROOT / "docs" / "layout.md").read_text()
    missing = [
        path.relative_to(ROOT).as_posix()
        for package in ("sweep", "workers")
        for path in sorted((ROOT / package).rglob("*.py"))
        if path.name != "__init__.py"
        and (path.name not in text or f"{path.parent.name}/" not in text)
    ]
    assert not missing, f"docs/layout.md's file map lacks: {missing}"
