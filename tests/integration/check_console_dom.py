#!/usr/bin/python3
"""Checks the console's DOM as headless Chromium left it after its script ran.

  check_console_dom.py DOM.html --shards N --variables NAME... --checkpoint TEXT

Fails (exit 1, saying what is missing) unless the page's refresh ran at
least once (body[data-refreshes] >= 1), the shards table has N rows, each
shown live, every NAME is a row of the variables table, a checkpoint row
contains TEXT, and the page has its charts.
"""
import argparse
import html.parser
import sys


class Dom(html.parser.HTMLParser):
    """Rows by class (shard, variable, checkpoint) with their text."""

    def __init__(self):
        super().__init__()
        self.refreshes = None
        self.rows = {"shard": [], "variable": [], "checkpoint": []}
        self.svgs = 0
        self._row = None  # (kind, [text])

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "body":
            self.refreshes = attrs.get("data-refreshes")
        if tag == "svg":
            self.svgs += 1
        if tag == "tr" and attrs.get("class") in self.rows:
            self._row = (attrs["class"], [])

    def handle_endtag(self, tag):
        if tag == "tr" and self._row is not None:
            kind, text = self._row
            self.rows[kind].append(" ".join(" ".join(text).split()))
            self._row = None

    def handle_data(self, data):
        if self._row is not None:
            self._row[1].append(data)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("dom")
    parser.add_argument("--shards", type=int, required=True)
    parser.add_argument("--variables", nargs="+", required=True)
    parser.add_argument("--checkpoint", required=True)
    args = parser.parse_args()
    dom = Dom()
    with open(args.dom, encoding="utf-8") as f:
        dom.feed(f.read())
    problems = []
    if not dom.refreshes or int(dom.refreshes) < 1:
        problems.append(f"the page's refresh never ran (data-refreshes={dom.refreshes!r})")
    shards = dom.rows["shard"]
    if len(shards) != args.shards:
        problems.append(f"{len(shards)} shard rows, expected {args.shards}: {shards}")
    for row in shards:
        if " live " not in f" {row} ":
            problems.append(f"shard not shown live: {row}")
    names = [row.split(" ")[0] for row in dom.rows["variable"]]
    for name in args.variables:
        if name not in names:
            problems.append(f"variable {name} not listed; rows: {names}")
    if not any(args.checkpoint in row for row in dom.rows["checkpoint"]):
        problems.append(f"no checkpoint row with {args.checkpoint}: {dom.rows['checkpoint']}")
    if dom.svgs < 5:
        problems.append(f"{dom.svgs} charts, expected 5")
    if problems:
        print("check_console_dom: FAILED\n  " + "\n  ".join(problems))
        return 1
    print(f"check_console_dom: ok: {len(shards)} shards, {len(names)} variables, "
          f"{len(dom.rows['checkpoint'])} checkpoints, {dom.svgs} charts, "
          f"{dom.refreshes} refreshes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
