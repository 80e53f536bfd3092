"""``python -m mammo_components.readmes [--check]``: write (or check) the ``## Inputs`` table of
every component's README from its ``entrypoint.run`` (``spec.inputs_table``), so the table says
what the signature and its ``Args:`` section say (``make component-docs``)."""

from __future__ import annotations

import argparse
import re
import sys

from mammo_components.spec import components, inputs_table

#: The section a README's table lives in: from its heading to the next ``## `` heading.
INPUTS_SECTION = re.compile(r"(^## Inputs\n\n?)(\| Argument \|.*?\n)(?=\n|\Z)", re.S | re.M)


def with_inputs_table(readme: str, table: str, where: str) -> str:
    """``readme`` with its Inputs table replaced by ``table`` (the prose around it kept)."""
    found = INPUTS_SECTION.search(readme)
    if found is None:
        raise SystemExit(f"{where}: no '## Inputs' section starting with a '| Argument |' table")
    return readme[:found.start(2)] + table + "\n" + readme[found.end(2):]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mammo_components.readmes", description=__doc__)
    parser.add_argument("--check", action="store_true", help="Only report READMEs whose table differs (exit 1).")
    args = parser.parse_args(argv)
    stale = []
    for component in components().values():
        path = component.readme
        text = path.read_text(encoding="utf-8")
        wanted = with_inputs_table(text, inputs_table(component), str(path))
        if wanted != text:
            stale.append(str(path))
            if not args.check:
                path.write_text(wanted, encoding="utf-8")
    verb = "differ from their entrypoint" if args.check else "rewritten"
    for path in stale:
        print(f"{path}: Inputs table {verb}")
    return 1 if stale and args.check else 0


if __name__ == "__main__":
    sys.exit(main())
