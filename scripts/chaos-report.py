#!/usr/bin/env python3
"""Writes the chaos suite's figures (one JSON line per run) into docs/reliability.md,
between the markers <!-- chaos:begin --> and <!-- chaos:end -->."""
import argparse
import datetime
import json
import statistics

BEGIN, END = "<!-- chaos:begin -->", "<!-- chaos:end -->"


def main():
    p = argparse.ArgumentParser()
    p.add_argument("results")
    p.add_argument("doc")
    p.add_argument("--command", required=True)
    p.add_argument("--seconds", type=int, required=True)
    p.add_argument("--commit", required=True)
    args = p.parse_args()
    runs = [json.loads(l) for l in open(args.results) if l.strip()]
    commit = args.commit
    kills = sum(len(r["kills_at"]) for r in runs)
    violations = [v for r in runs for v in r["violations"]]
    drains = sorted(r["drain_seconds"] for r in runs if r["kills_at"])
    L = [BEGIN, "",
         f"Measured {datetime.date.today()} on commit {commit} with `{args.command}` "
         f"({args.seconds} s). Each run drains a node with 6 live-migratable VMs, a Deployment of 2 "
         "behind a PodDisruptionBudget (minAvailable 1) and a DaemonSet, and kills vacate with "
         "SIGKILL one to three times at random moments (0.1–4 s apart, seeded), starting a new "
         "one after each kill. In the runs marked so, 30% of the migrations also fail halfway "
         "(the simulator's `simulator.vacate.io/migration-failure-rate`): vacate retries them and, "
         "after its attempts, hands the VMI to KubeVirt's evacuation. The other faults run on a "
         "cluster the test starts for them (its own etcd, API server and simulator, with the API "
         "server's audit log) and are described below the tables.", "",
         "| figure | value |", "|---|---|",
         f"| runs | {len(runs)} ({sum(1 for r in runs if 'failing' in r.get('faults', ''))} with failing migrations) |",
         f"| SIGKILLs | {kills} |",
         f"| invariant violations | {len(violations)} |",
         f"| migrations per VMI | {sum(r['migrations'] for r in runs) / max(1, sum(r['vmis'] for r in runs)):.2f} |"]
    if drains:
        L.append(f"| drain time with kills, median (max) | {statistics.median(drains):.1f} s "
                 f"({drains[-1]:.1f} s) |")
    kinds = {}
    for r in runs:
        kinds.setdefault(r.get("faults", "SIGKILL"), []).append(r)
    L += ["", "| faults | runs | invariant violations | drain time, median (max) |", "|---|---|---|---|"]
    for kind, rs in kinds.items():
        d = sorted(r["drain_seconds"] for r in rs)
        L.append(f"| {kind} | {len(rs)} | {sum(len(r['violations']) for r in rs)} | "
                 f"{statistics.median(d):.1f} s ({d[-1]:.1f} s) |")
    L += ["", "Migrations per VMI count vacate's own; more than 1.00 comes from the failing "
          "migrations retried.",
          "", "A drain far longer than the median with no violation is one where a PodDisruptionBudget "
          "refused the evictions for a while (vacate's log of that run shows the refusals): the drain "
          "waits, as it must.",
          "", "| run | seed | faults | killed at / injected (s after the request) | drained in (s) | vacate's migrations | violations |",
          "|---|---|---|---|---|---|---|"]
    for r in runs:
        v = "; ".join(r["violations"]) or "0"
        what = ", ".join(str(k) for k in r["kills_at"]) or "; ".join(r.get("injected", []))
        L.append(f"| {r['run']} | {r['seed']} | {r.get('faults', 'SIGKILL')} | {what} | "
                 f"{r['drain_seconds']:.1f} | {r['migrations']} for {r['vmis']} VMIs | {v} |")
    evidence = [(r, e) for r in runs for e in r.get("evidence", [])]
    if evidence:
        L += ["", "What the runs' own checks saw (the frozen leader's writes in the API server's "
              "audit log; virt-launcher evictions while KubeVirt's webhooks were down):", ""]
        L += [f"- {r.get('faults')} run {r['run']}: {e}" for r, e in evidence]
    L += ["", END]
    text = open(args.doc).read()
    a, b = text.index(BEGIN), text.index(END) + len(END)
    open(args.doc, "w").write(text[:a] + "\n".join(L) + text[b:])


if __name__ == "__main__":
    main()
