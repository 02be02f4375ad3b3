#!/usr/bin/python3
"""Checks the console's DOM as headless Chromium left it after its script ran.

  check_console_dom.py DOM.html --shards N --variables NAME... --checkpoint TEXT

Fails (exit 1, saying what is missing) unless the page's refresh ran at
least once (body[data-refreshes] >= 1), the shards table has N rows, each
shown live, every NAME is a row of the variables table, a checkpoint row
contains TEXT, and the page has its charts: among them the shards' op
charts drawn from their own counters, with ops counted (the cluster trained
before the page was loaded), latency percentiles, and a line per shard in
the per-shard ops chart.
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
        # Charts by title: the highest value drawn (None: no data) and the
        # legend's entries.
        self.charts = {}
        self._chart = None  # the title of the last chart drawn
        self._in_legend = False  # inside its <div class="legend">
        self._legend_item = None  # [text] of the legend entry being read

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "body":
            self.refreshes = attrs.get("data-refreshes")
        if tag == "svg":
            self.svgs += 1
            title = attrs.get("aria-label", "")
            maximum = attrs.get("data-max")
            self.charts[title] = {"max": float(maximum) if maximum is not None else None,
                                  "legend": []}
            self._chart = title
        if tag == "div" and attrs.get("class") == "legend" and self._chart is not None:
            self._in_legend = True
        if tag == "span" and self._in_legend:
            self._legend_item = []
        if tag == "tr" and attrs.get("class") in self.rows:
            self._row = (attrs["class"], [])

    def handle_endtag(self, tag):
        if tag == "tr" and self._row is not None:
            kind, text = self._row
            self.rows[kind].append(" ".join(" ".join(text).split()))
            self._row = None
        if tag == "span" and self._legend_item is not None:
            self.charts[self._chart]["legend"].append(" ".join(" ".join(self._legend_item).split()))
            self._legend_item = None
        if tag == "div" and self._in_legend:
            self._in_legend = False
            self._chart = None

    def handle_data(self, data):
        if self._row is not None:
            self._row[1].append(data)
        if self._legend_item is not None:
            self._legend_item.append(data)


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
    if dom.svgs < 9:
        problems.append(f"{dom.svgs} charts, expected 9")
    # The shards' own counters reached the charts: the trainer's ops were
    # counted, with their latency, and each shard has its line.
    for title in ("Shard ops (all shards)", "Shard op latency percentiles",
                  "Shard bytes in / out", "Ops per shard (reads + writes)"):
        chart = dom.charts.get(title)
        if chart is None:
            problems.append(f"no chart {title!r}; charts: {sorted(dom.charts)}")
        elif not chart["max"]:
            problems.append(f"chart {title!r} shows no data (data-max={chart['max']!r})")
    per_shard = dom.charts.get("Ops per shard (reads + writes)", {"legend": []})["legend"]
    for k in range(args.shards):
        if not any(item.startswith(f"shard {k}") for item in per_shard):
            problems.append(f"no line for shard {k} in the per-shard ops chart: {per_shard}")
    if problems:
        print("check_console_dom: FAILED\n  " + "\n  ".join(problems))
        return 1
    print(f"check_console_dom: ok: {len(shards)} shards, {len(names)} variables, "
          f"{len(dom.rows['checkpoint'])} checkpoints, {dom.svgs} charts, "
          f"{dom.refreshes} refreshes; shard ops peak "
          f"{dom.charts['Shard ops (all shards)']['max']}/s; per shard: {per_shard}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
