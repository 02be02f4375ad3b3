#!/usr/bin/python3
"""Checks deploy/grafana/psd.json and deploy/prometheus/psd-alerts.yml
against what a live cluster exports: every psd_* metric a panel or a rule
names must appear in one of the given /metrics bodies, and every panel must
be well formed (a Prometheus target per query, a place on the grid, a
unique id).

    check_dashboard.py --dashboard D --rules R METRICS_FILE...
"""

import argparse
import json
import re
import sys

import yaml

NAME = re.compile(r"\bpsd_[a-z0-9_]+")


def exported_names(paths):
    names = set()
    for path in paths:
        with open(path) as f:
            for line in f:
                if line.startswith("#") or not line.strip():
                    continue
                names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


def dashboard_queries(path, problems):
    with open(path) as f:
        dashboard = json.load(f)
    queries, ids = [], set()
    for panel in dashboard.get("panels", []):
        title = panel.get("title", "?")
        if panel.get("id") in ids:
            problems.append("panel %r: id %r is not unique" % (title, panel.get("id")))
        ids.add(panel.get("id"))
        if not {"x", "y", "w", "h"} <= set(panel.get("gridPos", {})):
            problems.append("panel %r has no gridPos" % title)
        if panel.get("type") == "row":
            continue
        targets = panel.get("targets") or []
        if not targets:
            problems.append("panel %r has no query" % title)
        for t in targets:
            if not t.get("expr"):
                problems.append("panel %r has an empty query" % title)
            queries.append(("panel %r" % title, t.get("expr", "")))
    return queries


def rule_queries(path):
    with open(path) as f:
        rules = yaml.safe_load(f)
    return [("alert %s" % r.get("alert") or r.get("record"), r["expr"])
            for group in rules["groups"] for r in group["rules"]]


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--dashboard", required=True)
    ap.add_argument("--rules", required=True)
    ap.add_argument("metrics", nargs="+", help="files holding /metrics bodies")
    args = ap.parse_args(argv)
    problems = []
    exported = exported_names(args.metrics)
    queries = dashboard_queries(args.dashboard, problems) + rule_queries(args.rules)
    named = set()
    for where, expr in queries:
        for name in NAME.findall(expr):
            named.add(name)
            if name not in exported:
                problems.append("%s names %s, which no /metrics exports" % (where, name))
    for p in problems:
        print("check_dashboard: " + p, file=sys.stderr)
    print("check_dashboard: %d queries name %d metrics; %d exported by the cluster; %d problems"
          % (len(queries), len(named), len(exported), len(problems)))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
