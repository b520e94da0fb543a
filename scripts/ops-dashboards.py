#!/usr/bin/env python3
"""Checks the Grafana dashboards (grafana/dashboards/*.json).

  ops-dashboards.py render DASHBOARD...
      Every panel has a data source and a unit, every query a data source
      and an expression; the template variables datasource, namespace, job
      and instance exist; panel ids are unique and panels fit the grid.

  ops-dashboards.py query --prometheus URL --time UNIX --instance ADDR DASHBOARD...
      Every query of every panel, its template variables substituted (once
      with every variable on "All", once with the one node ADDR), evaluated
      by the Prometheus at URL at time UNIX through /api/v1/query: no error,
      and at least one series with a number (not NaN). The variables'
      label_values queries must find values too (namespace excepted: there
      is none outside Kubernetes).

Called by scripts/ops-check.sh; python3's standard library only.
"""

import argparse
import json
import math
import re
import sys
import urllib.parse
import urllib.request

VARIABLES = {"datasource", "namespace", "job", "instance"}


def panels(dashboard):
    """Every panel, those inside collapsed rows included."""
    for p in dashboard.get("panels", []):
        yield p
        yield from p.get("panels", [])


def render_problems(path, d):
    out = []
    names = {v.get("name") for v in d.get("templating", {}).get("list", [])}
    for missing in sorted(VARIABLES - names):
        out.append(f"{path}: no template variable {missing}")
    ids = set()
    for p in panels(d):
        where = f"{path}: panel {p.get('id')} {p.get('title')!r}"
        if p.get("id") in ids:
            out.append(f"{where}: duplicate id")
        ids.add(p.get("id"))
        ds = p.get("datasource") or {}
        if not ds.get("uid") or ds.get("type") != "prometheus":
            out.append(f"{where}: no Prometheus data source")
        unit = p.get("fieldConfig", {}).get("defaults", {}).get("unit")
        if not unit:
            out.append(f"{where}: no unit")
        g = p.get("gridPos", {})
        if not (0 <= g.get("x", -1) and g.get("w", 0) > 0 and g.get("x", 0) + g.get("w", 0) <= 24 and g.get("h", 0) > 0):
            out.append(f"{where}: gridPos {g} is off the 24-column grid")
        targets = p.get("targets") or []
        if not targets:
            out.append(f"{where}: no queries")
        for t in targets:
            if not (t.get("datasource") or {}).get("uid"):
                out.append(f"{where} query {t.get('refId')}: no data source")
            if not t.get("expr"):
                out.append(f"{where} query {t.get('refId')}: no expression")
    return out


def substitute(expr, values, rate_interval):
    for name, value in values.items():
        expr = expr.replace("${" + name + "}", value).replace("$" + name, value)
    expr = expr.replace("$__rate_interval", rate_interval).replace("$__interval", rate_interval)
    leftover = re.findall(r"\$\{?\w+", expr)
    if leftover:
        raise ValueError(f"unknown variables {leftover} in {expr}")
    return expr


def query(prometheus, expr, at=None):
    params = {"query": expr}
    if at:
        params["time"] = at
    url = f"{prometheus}/api/v1/query?" + urllib.parse.urlencode(params)
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            body = json.load(r)
    except urllib.error.HTTPError as e:
        body = json.load(e)
    if body.get("status") != "success":
        return None, f"{body.get('errorType')}: {body.get('error')}"
    return body["data"], None


def has_number(data):
    if data["resultType"] == "scalar":
        return not math.isnan(float(data["result"][1]))
    return any(not math.isnan(float(s["value"][1])) for s in data["result"])


def label_values_problems(prometheus, d, path):
    """Each variable's label_values(selector, label) query, as a series lookup."""
    out = []
    for v in d["templating"]["list"]:
        if v.get("type") != "query":
            continue
        definition = v.get("definition", "")
        m = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", definition)
        if not m:
            out.append(f"{path}: variable {v['name']}: cannot read {definition!r}")
            continue
        selector = substitute(m.group(1), {"namespace": ".*", "job": ".*"}, "1m")
        data, err = query(prometheus, selector)
        if err:
            out.append(f"{path}: variable {v['name']}: {selector}: {err}")
            continue
        values = {s["metric"].get(m.group(2)) for s in data["result"]} - {None}
        if not values and v["name"] != "namespace":
            out.append(f"{path}: variable {v['name']}: {definition} finds no values")
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["render", "query"])
    ap.add_argument("dashboards", nargs="+")
    ap.add_argument("--prometheus")
    ap.add_argument("--time", help="evaluation time, Unix seconds")
    ap.add_argument("--instance", help="one node's instance label, for the per-node pass")
    ap.add_argument("--rate-interval", default="1m", help="what $__rate_interval stands for")
    args = ap.parse_args()
    problems, checked = [], 0
    for path in args.dashboards:
        with open(path) as f:
            d = json.load(f)
        problems += render_problems(path, d)
        if args.mode != "query":
            checked += sum(1 for _ in panels(d))
            continue
        problems += label_values_problems(args.prometheus, d, path)
        passes = [
            ("all nodes", {"namespace": ".*", "job": ".*", "instance": ".*"}),
            # As Grafana sends one value of a multi-value variable (its dots
            # match themselves too).
            (f"node {args.instance}", {"namespace": ".*", "job": ".*", "instance": args.instance}),
        ]
        for name, values in passes:
            for p in panels(d):
                for t in p.get("targets", []):
                    expr = substitute(t["expr"], values, args.rate_interval)
                    data, err = query(args.prometheus, expr, args.time)
                    checked += 1
                    where = f"{path}: {name}: panel {p['title']!r} query {t['refId']}"
                    if err:
                        problems.append(f"{where}: {err}\n    {expr}")
                    elif not has_number(data):
                        problems.append(f"{where}: no data\n    {expr}")
    for line in problems:
        print(line, file=sys.stderr)
    what = "panels" if args.mode == "render" else "queries"
    print(f"dashboards: {checked} {what} checked, {len(problems)} problems")
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
