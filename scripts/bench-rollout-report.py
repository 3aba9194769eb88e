#!/usr/bin/env python3
"""Writes the rolling-upgrade benchmark's figures (scripts/bench-rollout.sh) into
docs/benchmarks.md, between its rollout markers (appended when they are missing), and prints
them."""

import argparse
import json
import statistics
from datetime import datetime
from collections import Counter
from pathlib import Path

START = "<!-- rollout:start -->"
END = "<!-- rollout:end -->"


def load(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def fleet_bound(bounds, fleet_slots):
    """The least time the whole rollout can take: every VM of the rollout's nodes moved once,
    at most `fleet_slots` migrations at once (the lanes' outbound limits and the cluster's),
    and no node faster than its own bound."""
    work = sum(b["migration_bound_seconds"] * b["slots"] for b in bounds)
    return max(work / fleet_slots, max(b["bound_seconds"] for b in bounds))


def stamp(text):
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def migration_seconds(m):
    """How long a migration held its slot: from leaving Pending (KubeVirt's evacuation keeps
    them Pending while its limits are full) to its end, or from creation when it records no
    phase after Pending. Whole seconds, as the API keeps them; their mean is what counts."""
    status = m.get("status", {})
    phases = {t.get("phase"): stamp(t["phaseTransitionTimestamp"])
              for t in status.get("phaseTransitionTimestamps", [])
              if t.get("phaseTransitionTimestamp")}
    if "Succeeded" not in phases:
        return None
    after = [t for p, t in phases.items() if p not in ("Pending", "Succeeded", "Failed")]
    start = min(after) if after else stamp(m["metadata"]["creationTimestamp"])
    return phases["Succeeded"] - start


def event_times(path):
    """Per migration, from the watch events the benchmark recorded as they arrived: its source
    node, when it left Pending and when it succeeded."""
    seen = {}
    for line in path.read_text().splitlines():
        parts = line.split(" ")
        if len(parts) < 3:
            continue
        at, name = float(parts[0]), parts[2]
        phase = parts[3] if len(parts) > 3 else ""
        m = seen.setdefault(name, {"node": "", "created": at, "started": None, "ended": None})
        if len(parts) > 4 and parts[4]:
            m["node"] = parts[4]
        if phase not in ("", "Pending") and m["started"] is None:
            m["started"] = at
        if phase == "Succeeded" and m["ended"] is None:
            m["ended"] = at
    return [m for m in seen.values() if m["started"] is not None and m["ended"] is not None]


def between_nodes(times, lanes):
    """The mean time from the end of a node's last migration to the creation of the next
    node's first (each node after the first `lanes`, against the latest node that ended
    before it started)."""
    spans = {}
    for m in times:
        first, last = spans.get(m["node"], (m["created"], m["ended"]))
        spans[m["node"]] = (min(first, m["created"]), max(last, m["ended"]))
    ordered = sorted(spans.values())
    gaps = []
    for first, _ in ordered[lanes:]:
        ended = [last for _, last in ordered if last <= first]
        if ended:
            gaps.append(first - max(ended))
    return statistics.mean(gaps) if gaps else None


def slot_figures(times, slots):
    """The mean time a migration held its slot, and the mean time a node's slot stood empty
    between one migration's end and the next one's start (the node's first `slots` left out)."""
    held = [m["ended"] - m["started"] for m in times]
    gaps = []
    by_node = {}
    for m in times:
        by_node.setdefault(m["node"], []).append(m)
    for ms in by_node.values():
        ms.sort(key=lambda m: m["started"])
        for m in ms[slots:]:
            ended = [o["ended"] for o in ms if o["ended"] <= m["started"]]
            if ended:
                gaps.append(m["started"] - max(ended))
    return (statistics.mean(held) if held else None, statistics.mean(gaps) if gaps else None)


def measure(out, result, fleet_slots, lanes):
    prefix = result["prefix"]
    vmis = json.loads((out / f"vmis-{prefix}.json").read_text())["items"]
    migrations = json.loads((out / f"migrations-{prefix}.json").read_text())["items"]
    per_vmi = Counter(m["spec"].get("vmiName", "") for m in migrations)
    bounds = load(out / f"bound-{prefix}.jsonl")
    bound = fleet_bound(bounds, fleet_slots)
    row = {
        "round": result["round"],
        "tool": result["tool"],
        "seconds": result["seconds"],
        "bound": bound,
        "ratio": result["seconds"] / bound,
        "vmis": len(vmis),
        "migrations": len(migrations),
        "per_vm": len(migrations) / max(1, len(vmis)),
        "moved_again": sum(1 for n in per_vmi.values() if n > 1),
        "predicted": None,
        # The least time of one migration in the simulator's model, and the mean measured.
        "model_migration": sum(b["migration_bound_seconds"] * b["slots"] for b in bounds)
        / max(1, sum(b["vmis"] for b in bounds)),
        "migration": statistics.mean(
            [d for d in map(migration_seconds, migrations) if d is not None] or [0.0]),
        "gap": None,
        "between": None,
    }
    events = out / f"migration-events-{prefix}.txt"
    if events.exists():
        times = event_times(events)
        held, gap = slot_figures(times, bounds[0]["slots"] if bounds else 1)
        if held is not None:
            row["migration"] = held
        row["gap"] = gap
        row["between"] = between_nodes(times, lanes)
    plan = out / f"plan-{prefix}.json"
    if plan.exists():
        row["predicted"] = json.loads(plan.read_text()).get("predictedSeconds")
    return row


def section(rows, args):
    by_tool = {t: [r for r in rows if r["tool"] == t] for t in ("vacate", "kubectl")}
    lines = [
        START,
        "## Rolling upgrade: each VM moved once",
        "",
        f"`{args.command}` on commit {args.commit}: 20 nodes with 10 LiveMigrate VMs (1 GiB) each, "
        f"upgraded {args.lanes} at a time, two empty spare nodes outside the rollout; the simulator "
        f"at time scale {args.time_scale}, KubeVirt's limits {args.per_node} per node and "
        f"{args.per_cluster} in the cluster. vacate gets the upgrade label on all 20 nodes "
        f"(`fleet.max_draining = {args.lanes}`, migrations steered to nodes that do not wait for their "
        "drain); the baseline is the loop kured and system-upgrade-controller run, in "
        f"{args.lanes} lanes: `kubectl drain` a node (KubeVirt's evacuation moves its VMs), upgrade "
        "it, `kubectl uncordon`, next. The upgrade itself is the kubelet reporting the new version "
        "as soon as a node is drained. The bound is the least time KubeVirt's limits allow: every "
        f"VM of the rollout moved once, {min(args.per_cluster, args.lanes * args.per_node)} "
        "migrations at a time.",
        "",
        "| tool | rounds | migrations per VM, median (max) | VMs moved more than once, median (max) "
        "| time / bound, median (max) | time, median |",
        "|---|---|---|---|---|---|",
    ]
    for tool, name in (("vacate", "vacate"), ("kubectl", "kubectl drain loop")):
        rs = by_tool[tool]
        if not rs:
            continue
        lines.append(
            f"| {name} | {len(rs)} "
            f"| {statistics.median(r['per_vm'] for r in rs):.2f} ({max(r['per_vm'] for r in rs):.2f}) "
            f"| {statistics.median(r['moved_again'] for r in rs):.0f} ({max(r['moved_again'] for r in rs)}) "
            f"| {statistics.median(r['ratio'] for r in rs):.3f} ({max(r['ratio'] for r in rs):.3f}) "
            f"| {statistics.median(r['seconds'] for r in rs):.1f} s |"
        )
    predicted = [r for r in by_tool["vacate"] if r["predicted"]]
    lines += ["", "Each round:", "",
              "| round | tool | time | bound | time / bound | VMIs | migrations | per VM | moved again "
              "| one migration, mean (model) | slot empty between migrations, mean "
              "| between nodes, mean | predicted by `vacate plan` |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r["round"], r["tool"])):
        pred = (
            f"{r['predicted']:.1f} s ({(r['predicted'] / r['seconds'] - 1) * 100:+.0f} %)"
            if r["predicted"]
            else ("—" if r["tool"] == "kubectl" else "unknown")
        )
        lines.append(
            f"| {r['round']} | {r['tool']} | {r['seconds']:.1f} s | {r['bound']:.1f} s | {r['ratio']:.3f} "
            f"| {r['vmis']} | {r['migrations']} | {r['per_vm']:.2f} | {r['moved_again']} "
            f"| {r['migration']:.2f} s ({r['model_migration']:.2f} s) "
            f"| {'—' if r['gap'] is None else format(r['gap'], '.2f') + ' s'} "
            f"| {'—' if r['between'] is None else format(r['between'], '.2f') + ' s'} | {pred} |"
        )
    if predicted:
        errors = [abs(r["predicted"] / r["seconds"] - 1) * 100 for r in predicted]
        lines += [
            "",
            f"`vacate plan --concurrency {args.lanes}`, run before each vacate rollout, predicted its "
            f"time within {statistics.median(errors):.0f} % (median; largest {max(errors):.0f} %), from the "
            "bandwidth measured in the cluster: per migration slot over the drains of vacate's "
            "earlier rounds when there were any, the time between migrations included; else over "
            "the migrations of KubeVirt's evacuation in the kubectl rounds, each from leaving "
            "Pending to its end.",
        ]
    model = [r for r in rows if r["model_migration"]]
    if model:
        extra = statistics.median(r["migration"] - r["model_migration"] for r in model)
        lines += [
            "",
            f"One migration held its slot {extra:.2f} s longer than the simulator's model on "
            "average (median over the rounds; from leaving Pending to its end, timed by a watch "
            "of the migrations as their changes arrived): the API round "
            "trips of the target pod's creation, binding and start and of each phase KubeVirt "
            "writes, which no tool can take out and the bound leaves out. They do not shrink "
            "with the time scale, so a faster scale weighs them more against the bound. "
            "\"Slot empty\" is the time from a migration's end to the next one's start on the "
            "same node (vacate's reaction; for the kubectl loop, KubeVirt's evacuation starting "
            "the next Pending one). \"Between nodes\" is the time from a node's last "
            "migration's end to the next node's first migration: vacate's uncordon and the next "
            "start gate; for the kubectl loop, `kubectl drain` noticing the node is empty, the "
            "upgrade, `kubectl uncordon` and the next `kubectl drain`.",
        ]
    lines.append(END)
    return "\n".join(lines) + "\n"


def main():
    p = argparse.ArgumentParser()
    p.add_argument("out", type=Path)
    p.add_argument("doc", type=Path)
    p.add_argument("--lanes", type=int, required=True)
    p.add_argument("--per-node", type=int, required=True)
    p.add_argument("--per-cluster", type=int, required=True)
    p.add_argument("--time-scale", required=True)
    p.add_argument("--commit", required=True)
    p.add_argument("--command", required=True)
    args = p.parse_args()
    fleet_slots = min(args.per_cluster, args.lanes * args.per_node)
    rows = [measure(args.out, r, fleet_slots, args.lanes) for r in load(args.out / "results.jsonl")]
    text = section(rows, args)
    print(text)
    doc = args.doc.read_text() if args.doc.exists() else ""
    if START in doc and END in doc:
        head, rest = doc.split(START, 1)
        tail = rest.split(END, 1)[1].lstrip("\n")
        doc = head + text + ("\n" + tail if tail else "")
    else:
        doc = doc.rstrip("\n") + "\n\n" + text
    args.doc.write_text(doc)


if __name__ == "__main__":
    main()
