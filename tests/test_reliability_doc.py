"""docs/reliability.md cannot drift: its catalogue table is the test table of tests/test_bad_inputs.py (same ids,
kinds, exit codes, in order) and its exit-code table is twinflow_core/errors.EXIT_CODES.

    python tests/test_reliability_doc.py    # rewrite the two generated tables in docs/reliability.md
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

DOC = Path(__file__).resolve().parents[1] / "docs" / "reliability.md"


def catalogue_rows() -> list[str]:
    from test_bad_inputs import CASES

    rows = ["| id | kind | example | message contains | exit |", "|---|---|---|---|---|"]
    rows += [f"| {c.id} | {c.kind} | {c.example} | `{c.says}` | {c.code} |" for c in CASES]
    return rows


def exit_rows() -> list[str]:
    from twinflow_core.errors import EXIT_CODES

    return ["| exit | meaning |", "|---|---|"] + [f"| {k} | {v} |" for k, v in sorted(EXIT_CODES.items())]


def block(text: str, name: str) -> list[str]:
    m = re.search(rf"<!-- {name}:begin -->\n(.*?)\n<!-- {name}:end -->", text, re.S)
    assert m, f"{DOC}: no {name} block"
    return m.group(1).split("\n")


def render(text: str) -> str:
    for name, rows in (("catalogue", catalogue_rows()), ("exit-codes", exit_rows())):
        text = re.sub(
            rf"<!-- {name}:begin -->.*?<!-- {name}:end -->",
            lambda m: f"<!-- {name}:begin -->\n" + "\n".join(rows) + f"\n<!-- {name}:end -->",  # noqa: B023 - called within the iteration
            text,
            flags=re.S,
        )
    return text


def test_doc_tables_are_the_test_table_and_the_exit_codes():
    text = DOC.read_text()
    assert block(text, "catalogue") == catalogue_rows(), "run: python tests/test_reliability_doc.py"
    assert block(text, "exit-codes") == exit_rows(), "run: python tests/test_reliability_doc.py"


if __name__ == "__main__":
    DOC.write_text(render(DOC.read_text()))
