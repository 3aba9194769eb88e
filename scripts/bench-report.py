#!/usr/bin/env python3
"""The report of scripts/bench.sh: reads what the bench measured (results.jsonl,
cordon.json, audit.log, commands.txt in OUT) and writes DOCS/benchmarks.md and
DOCS/benchmarks.png (with gnuplot). Writes only figures found in OUT."""

import argparse
import collections
import datetime
import json
import os
import platform
import re
import statistics
import subprocess
import sys

TARGET_MEDIAN = 1.05
TARGET_MAX = 1.10
TARGET_CORDON_P99 = 0.2
TARGET_WRITES_PER_VMI = 4
READS = {"get", "list", "watch"}
WRITES = {"create", "update", "patch", "delete", "deletecollection"}
SCENARIOS = {
    "drain-6": "homogeneous: 6 VMIs of 4 GiB, a DaemonSet, a bare emptyDir pod (5 s grace)",
    "drain-mixed": "heterogeneous: VMIs of 1, 2, 4, 8, 16, 32 GiB; 2 Deployment pods under a "
    "PDB (maxUnavailable 1) and 2 bare emptyDir pods, all with 30 s grace; a DaemonSet",
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("docs")
    ap.add_argument("--rounds", type=int, required=True)
    ap.add_argument("--time-scale", required=True)
    ap.add_argument("--scale1", required=True)
    ap.add_argument("--cordon-requests", type=int, required=True)
    args = ap.parse_args()

    results = [json.loads(l) for l in open(os.path.join(args.out, "results.jsonl")) if l.strip()]
    cordon = json.load(open(os.path.join(args.out, "cordon.json")))
    commands = open(os.path.join(args.out, "commands.txt")).read().strip().splitlines()
    audit = read_audit(os.path.join(args.out, "audit.log"))

    # A round whose node had no VMI when its bound was taken (seeding went wrong) measures
    # nothing; it is listed in the rounds but left out of the figures.
    empty = [r for r in results if r["bound"]["vmis"] == 0]
    results = [r for r in results if r not in empty]
    main_runs = [r for r in results if r["requested_scale"] != 1 or str(args.time_scale) == "1"]
    scale1_runs = [r for r in results if r not in main_runs]
    releases = []
    for r in results:
        # A case is a scenario on one KubeVirt release the simulator follows.
        r["release"] = r.get("release", "v1.9")
        r["base"] = r["scenario"]
        r["scenario"] = f"{r['base']}, KubeVirt {r['release']}"
        if r["release"] not in releases:
            releases.append(r["release"])
        r["seconds"] = r["timing"]["seconds"]
        r["bound_s"] = r["bound"]["bound_seconds"]
        r["ratio"] = r["seconds"] / r["bound_s"]
        mem = r["bound"]["memory_bound_seconds"]
        r["mem_ratio"] = r["seconds"] / mem if mem > 0 else float("nan")
        r["migrated"] = r["bound"]["vmis"] - r["after"]["vmis"]
        r["stalls"] = stalls(os.path.join(args.out, f"migrations-{r['prefix']}.json"))
        if r["tool"] == "vacate":
            r["api"] = api_counts(audit, r["timing"]["start_unix"], r["vacate_stopped_unix"])

    scenarios = [f"{s}, KubeVirt {rel}" for rel in releases for s in SCENARIOS
                 if any(r["scenario"] == f"{s}, KubeVirt {rel}" for r in main_runs)]
    summary = []
    per_scenario = {}
    for s in scenarios:
        runs = [r for r in main_runs if r["scenario"] == s]
        v = [r for r in runs if r["tool"] == "vacate"]
        k = [r for r in runs if r["tool"] == "kubectl"]
        vr = [r["ratio"] for r in v]
        kr = [r["ratio"] for r in k]
        rounds = sorted({r["round"] for r in runs})
        wins = 0
        paired = 0
        for n in rounds:
            a = [r["seconds"] for r in v if r["round"] == n]
            b = [r["seconds"] for r in k if r["round"] == n]
            if a and b:
                paired += 1
                wins += a[0] <= b[0]
        migrated = sum(r["migrated"] for r in v)
        writes = sum(r["api"]["writes"] for r in v)
        reads = sum(r["api"]["reads"] for r in v)
        lease_writes = sum(r["api"]["lease_writes"] for r in v)
        per_scenario[s] = dict(v=v, k=k, migrated=migrated)
        summary += [
            (f"drain time / bound, median ({s})", fmt_pair(vr, kr, statistics.median),
             f"≤ {TARGET_MEDIAN:.2f}",
             met(vr and statistics.median(vr) <= TARGET_MEDIAN) + below_one(vr)),
            (f"drain time / bound, max ({s})", fmt_pair(vr, kr, max),
             f"≤ {TARGET_MAX:.2f}", met(vr and max(vr) <= TARGET_MAX) + below_one(vr)),
            (f"vacate ≤ kubectl drain in every round ({s})",
             f"{wins} of {paired} rounds", "every round", met(paired and wins == paired)),
            (f"API writes per migrated VMI, vacate ({s})",
             f"{writes / migrated:.2f} ({writes} writes, {migrated} VMIs; "
             f"+{lease_writes / migrated:.2f} lease renewals)" if migrated else "no VMI migrated",
             f"≤ {TARGET_WRITES_PER_VMI}", met(migrated and writes / migrated <= TARGET_WRITES_PER_VMI)),
            (f"API reads per migrated VMI, vacate ({s})",
             f"{reads / migrated:.2f} ({reads} reads)" if migrated else "no VMI migrated", "–", "–"),
        ]
    if empty:
        summary.append(("rounds left out: no VMI on the node when its bound was taken",
                        ", ".join(f"{r['scenario']} on {r.get('release', 'v1.9')} round {r['round']} ({r['tool']})" for r in empty),
                        "none", met(False)))
    summary.insert(0, ("request label → cordon, p99 (p50)",
                       f"{cordon['p99_seconds']:.3f} s ({cordon['p50_seconds']:.3f} s) over "
                       f"{cordon['requests']} requests", f"≤ {TARGET_CORDON_P99} s",
                       met(cordon["p99_seconds"] <= TARGET_CORDON_P99)))
    for r in scale1_runs:
        summary.append((f"drain time / bound at time scale 1 ({r['scenario']}, {r['tool']})",
                        f"{r['ratio']:.3f} ({r['seconds']:.1f} s, bound {r['bound_s']:.1f} s)",
                        "–", "–"))

    plot(args, main_runs, scenarios)
    write_doc(args, results, main_runs, scale1_runs, scenarios, summary, cordon, commands, per_scenario)
    print_summary(summary)


def met(ok):
    return "yes" if ok else "no"


def below_one(ratios):
    """A mark for ratios below 1, which the simulator should not allow."""
    return "*" if any(r < 1 for r in ratios) else ""


def fmt_pair(vr, kr, f):
    v = f"{f(vr):.3f}" if vr else "–"
    k = f"{f(kr):.3f}" if kr else "–"
    return f"vacate {v}, kubectl drain {k}"


STALL_SECONDS = 4


def stalls(path):
    """Migrations of a drain that stayed STALL_SECONDS or more in Scheduling (whole-second
    timestamps): the simulator's migration controller missed the target pod turning Ready
    and waited for its 5 s re-check. None when the run did not record the migrations."""
    if not os.path.exists(path):
        return None
    n = 0
    for m in json.load(open(path)).get("items", []):
        at = {}
        for t in (m.get("status") or {}).get("phaseTransitionTimestamps") or []:
            at[t["phase"]] = datetime.datetime.fromisoformat(
                t["phaseTransitionTimestamp"].replace("Z", "+00:00")).timestamp()
        if "Scheduling" in at and "Scheduled" in at and at["Scheduled"] - at["Scheduling"] >= STALL_SECONDS:
            n += 1
    return n


def read_audit(path):
    """The first audit event of every request, by auditID."""
    seen = {}
    with open(path) as f:
        for line in f:
            try:
                e = json.loads(line)
            except ValueError:
                continue
            if e.get("auditID") in seen:
                continue
            ts = e["requestReceivedTimestamp"].replace("Z", "+00:00")
            e["_t"] = datetime.datetime.fromisoformat(ts).timestamp()
            seen[e["auditID"]] = e
    return list(seen.values())


def api_counts(audit, start, end):
    """vacate's requests received in [start, end], by verb and resource."""
    by = collections.Counter()
    reads = writes = lease_writes = lease_reads = 0
    for e in audit:
        if e.get("user", {}).get("username") != "vacate" or not start <= e["_t"] <= end:
            continue
        verb = e.get("verb", "?")
        ref = e.get("objectRef", {}) or {}
        resource = ref.get("resource", e.get("requestURI", "?"))
        if ref.get("subresource"):
            resource += "/" + ref["subresource"]
        lease = ref.get("resource") == "leases"
        if verb in WRITES:
            if lease:
                lease_writes += 1
            else:
                writes += 1
        elif verb in READS:
            if lease:
                lease_reads += 1
            else:
                reads += 1
        by[(verb, resource)] += 1
    return dict(reads=reads, writes=writes, lease_writes=lease_writes, lease_reads=lease_reads,
                by={f"{v} {r}": n for (v, r), n in sorted(by.items())})


def plot(args, runs, scenarios):
    data = os.path.join(args.out, "plot.dat")
    with open(data, "w") as f:
        for i, s in enumerate(scenarios):
            f.write(f"# {s}: round vacate kubectl bound\n")
            for n in sorted({r["round"] for r in runs if r["scenario"] == s}):
                row = {r["tool"]: r for r in runs if r["scenario"] == s and r["round"] == n}
                v = row.get("vacate")
                k = row.get("kubectl")
                bound = (v or k)["bound_s"]
                f.write(f"{n} {v['seconds'] if v else 'NaN'} {k['seconds'] if k else 'NaN'} {bound}\n")
            f.write("\n\n")
    png = os.path.join(args.docs, "benchmarks.png")
    columns = min(len(scenarios), 2) or 1
    rows = (len(scenarios) + columns - 1) // columns or 1
    size = f"1200,{440 * rows}"
    script = [
        f"set terminal pngcairo size {size} font 'sans,10'" if has_cairo() else f"set terminal png size {size}",
        f"set output '{png}'",
        f"set multiplot layout {rows},{columns} title 'Drain time per round against the bound "
        f"(time scale {args.time_scale})'",
        "set xlabel 'round'", "set ylabel 'seconds'", "set yrange [0:*]", "set xtics 1",
        f"set xrange [0.5:{max([r['round'] for r in runs] + [1]) + 0.5}]",
        "set key bottom right", "set grid ytics",
    ]
    for i, s in enumerate(scenarios):
        script += [
            f"set title '{s}'",
            f"plot '{data}' index {i} using 1:2 with linespoints pt 7 lw 2 title 'vacate', "
            f"'' index {i} using 1:3 with linespoints pt 5 lw 2 title 'kubectl drain', "
            f"'' index {i} using ($1-0.45):4:(0.9):(0) with vectors nohead dt 2 lw 2 lc rgb 'black' title 'bound'",
        ]
    script.append("unset multiplot")
    subprocess.run(["gnuplot"], input="\n".join(script), text=True, check=True)


def has_cairo():
    out = subprocess.run(["gnuplot", "-e", "set terminal"], capture_output=True, text=True)
    return "pngcairo" in out.stdout + out.stderr


def write_doc(args, results, runs, scale1_runs, scenarios, summary, cordon, commands, per_scenario):
    b0 = results[0]["bound"]
    meta = json.load(open(os.path.join(args.out, "meta.json")))
    L = []
    w = L.append
    w("# Benchmarks")
    w("")
    w(f"Written by `make bench` (scripts/bench.sh, scripts/bench-report.py) on {meta['date']}: "
      f"commit `{meta['commit']}`{' with local changes' if meta['dirty'] else ''}, "
      f"{os.cpu_count()} cores ({platform.machine()}), release builds, ROUNDS={args.rounds}, "
      f"time scale {args.time_scale}, BENCH_SCALE1={args.scale1}. Every figure below was measured "
      "in that run; the machine is shared with other builds, so compare the tools within a round.")
    w("")
    w("## Summary")
    w("")
    w("| figure | measured | target | target met? |")
    w("|---|---|---|---|")
    for row in summary:
        w("| " + " | ".join(row) + " |")
    w("")
    if any("*" in row[3] for row in summary):
        w("\\* Some ratios are below 1.00, which the simulator should not allow: it times each "
          "migration's preparation and copy on a sub-second clock of its own (see \"How the simulator "
          "times migrations\" below). Check the run before trusting these figures.")
    w("")
    w("![drain time per round against the bound](benchmarks.png)")
    w("")
    w("## What runs")
    w("")
    w("One testbed (`testbed up --nodes 0 --audit-user vacate`: real etcd, kube-apiserver, "
      "kube-controller-manager and kube-scheduler, kwok nodes, the KubeVirt simulator). In each round "
      "every scenario is seeded twice under different prefixes, giving twin nodes: `v<round>-…-worker-0` "
      "for vacate and `k<round>-…-worker-0` for `kubectl drain --ignore-daemonsets "
      "--delete-emptydir-data --force` (KubeVirt's eviction webhook and evacuation controller do the "
      "migrations). The tools run one after the other, never together, so neither takes KubeVirt's "
      "cluster-wide migration slots from the other; which tool goes first alternates between rounds. "
      "Each scenario has three nodes: worker-0 is drained, the other two receive the VMs.")
    w("")
    releases = list(dict.fromkeys(r["release"] for r in results))
    for s in SCENARIOS:
        if any(r["base"] == s for r in results):
            w(f"- `tests/scenarios/{s}.yaml`: {SCENARIOS[s]}.")
    w("")
    w("The rounds run once for each KubeVirt release the simulator follows (its annotation "
      "`simulator.vacate.io/kubevirt-release` on the KubeVirt CR, docs/testbed.md \"Modes\"): "
      f"{', '.join(releases)}. The release changes the baseline: in v1.9 KubeVirt's evacuation "
      "controller creates every migration of the node at once with priority `system-critical` and "
      "its migration queue starts them as slots free up; in v1.7 it creates at most the free slots "
      "per pass and looks again later. vacate creates its own migrations in both.")
    w("")
    w("vacate runs from its release binary, one instance per drained node, started before the request "
      "and stopped after the drain, with this configuration (the limits are the KubeVirt CR's, so only "
      "KubeVirt limits it):")
    w("")
    w("```toml")
    toml = open(os.path.join(args.out, "vacate.toml")).read().strip()
    toml = re.sub(r'set=[^"]*"', 'set=<prefix>"', toml)
    toml = re.sub(r'"bench-[^"]*"', '"bench-<prefix>"', toml)
    toml = re.sub(r'127\.0\.0\.1:\d+', "127.0.0.1:<free port>", toml)
    w(toml)
    w("```")
    w("")
    w("## The bound")
    w("")
    w("`testbed bench-bound NODE` computes it just before each drain from what the cluster says: the "
      "KubeVirt CR's `parallelOutboundMigrationsPerNode`, `parallelMigrationsPerCluster` and "
      "`bandwidthPerMigration` (KubeVirt's defaults 2, 5 and unlimited where the CR leaves them out), the "
      "simulator's annotations on that CR (`simulator.vacate.io/time-scale`, which the bench sets, and "
      "`simulator.vacate.io/effective-bandwidth`, the throughput of a migration KubeVirt does not limit; "
      "absent, the simulator's defaults in crates/kubevirt-sim/src/settings.rs apply: 128 MiB/s), the "
      "guest memory of the node's VMIs and the grace periods of its other pods. In this run: "
      f"P = min({b0['parallel_outbound_migrations_per_node']}, {b0['parallel_migrations_per_cluster']}) "
      f"= {b0['slots']} slots, B = {b0['bandwidth_bytes_per_second'] / 2**20:.0f} MiB/s "
      f"({b0['bandwidth_from']}), time scale {b0['time_scale']:g} ({b0['time_scale_from']}).")
    w("")
    w("The simulator holds a migration's slot from its target pod's creation to its end; inside that, "
      "the target's preparation takes a fixed 2 simulated seconds (`TARGET_PREPARATION`, "
      "crates/kubevirt-sim/src/settings.rs) and the memory copy takes guest memory / B "
      "(`ClusterConfig::migration_duration`), both divided by the time scale. So for VMIs of memory "
      "mᵢ the bound is")
    w("")
    w("    migration bound = max( Σᵢ (2 s + mᵢ/B) / P , maxᵢ (2 s + mᵢ/B) ) / time scale")
    w("    bound           = max( migration bound , longest grace period of the node's other evictable pods )")
    w("")
    w("The second term is there because kwok ends a deleted pod when its grace period is over "
      "(crates/testbed/kwok/stages.yaml), in real seconds whatever the time scale; DaemonSet pods "
      "and virt-launcher pods (deleted with no grace period when their VMI has moved) are left out. "
      "It is the binding term only if the pods' grace period exceeds the migration bound. The bound "
      "leaves out everything else a drain cannot avoid either (scheduling the target pods, the "
      "simulator's phase steps, the PDB letting one pod go at a time, API round trips), so 1.00 cannot "
      "be reached exactly. The \"memory only\" column of the rounds is the same drain over the issue's "
      "formula without the preparation time, max(Σ mᵢ / (P·B), max mᵢ / B) / time scale.")
    w("")
    w("**How the simulator times migrations.** It times a migration's target preparation and its "
      "memory copy from the instant it moved the migration into PreparingTarget and Running, on a "
      "sub-second clock of its own, and ends each exactly when due (the API's whole-second timestamps "
      "only serve after a simulator restart). A drain therefore cannot beat the bound above.")
    w("")
    for s in scenarios:
        r = next(x for x in runs if x["scenario"] == s)
        b = r["bound"]
        w(f"- {s}: {b['vmis']} VMIs, {b['total_memory_bytes'] / 2**30:g} GiB, largest "
          f"{b['largest_memory_bytes'] / 2**30:g} GiB: memory only {b['memory_bound_seconds']:.2f} s, "
          f"with preparation {b['migration_bound_seconds']:.2f} s, pod grace {b['pod_grace_seconds']:g} s, "
          f"bound {b['bound_seconds']:.2f} s.")
    w("")
    w("## How each figure is measured")
    w("")
    w("- **vacate's drain time**: `testbed bench-drain NODE --label vacate.io/maintenance=true --until "
      "vacate.io/drained=true`, one process: it opens a watch on the node, then starts the clock, sends "
      "the label patch and stops the clock when the watch shows the drained label.")
    w("- **kubectl drain's time**: `testbed bench-drain NODE -- kubectl drain …`, the same process: the "
      "clock starts just before it spawns kubectl and stops when kubectl exits 0 (kubectl waits until "
      "every pod it evicted is gone). kubectl's own start-up (tens of milliseconds) is in its figure.")
    w("- **request → cordon**: `testbed bench-cordon`, one process with a watch on the three idle nodes "
      f"of `tests/scenarios/idle-3.yaml`, with one vacate running: {cordon['requests']} times, one node "
      "after another, it starts the clock, sends the `vacate.io/maintenance=true` label patch and stops the "
      "clock when the watch shows `spec.unschedulable`; then removes the label and waits until vacate has "
      "uncordoned the node and cleared its state. Percentiles are nearest-rank. "
      f"Nodes used: {', '.join(cordon['nodes'])}.")
    w("- **API requests per migrated VMI**: the API server's audit log (level Metadata, only user "
      "`vacate`: the bench runs vacate with a client certificate of its own, CN `vacate` in "
      "`system:masters`, from `<state>/vacate.kubeconfig`). A request counts for a drain when the API "
      "server received it between the label patch and vacate's stop right after the drain (vacate's "
      "start-up lists and watches come before). Reads are get, list and watch; writes are create, "
      "update, patch and delete. Lease requests (the leader election's renewals, a cost per second and "
      "not per VMI) are counted apart. Migrated VMIs: the node's VMIs before the drain less those left "
      "on it after.")
    w("")
    w("## Rounds")
    w("")
    w("\"Stalls\" counts the drain's migrations that stayed 4 s or more in phase Scheduling although "
      "their target pod ran at once. Earlier simulators sometimes missed the target pod turning Ready "
      "(their pod watch lost its wake-up when an event's pod had already left the cache) and moved on "
      "only at the 5 s re-check, adding up to 5 s per wave of migrations to either tool's time. The "
      "simulator now enqueues a migration on every change of its target pod, as KubeVirt's "
      "migration.go does, so this column should read 0; a round with stalls measures the simulator "
      "more than the tool.")
    w("")
    w("| scenario | round | tool | seconds | bound (s) | ratio | ratio to memory only | cordon (s) | VMIs moved | stalls |")
    w("|---|---|---|---|---|---|---|---|---|---|")
    for r in sorted(results, key=lambda r: (r["requested_scale"] == 1 and r in scale1_runs, r["scenario"], r["round"], r["tool"] != "vacate")):
        label = r["scenario"] + (" (time scale 1)" if r in scale1_runs else "")
        c = r["timing"].get("cordon_seconds")
        w(f"| {label} | {r['round']} | {'vacate' if r['tool'] == 'vacate' else 'kubectl drain'} | "
          f"{r['seconds']:.2f} | {r['bound_s']:.2f} | {r['ratio']:.3f} | {r['mem_ratio']:.3f} | "
          f"{'%.3f' % c if c is not None else '–'} | {r['migrated']} of {r['bound']['vmis']} | "
          f"{'–' if r['stalls'] is None else r['stalls']} |")
    w("")
    w("## vacate's API requests by verb and resource")
    w("")
    w("Summed over the vacate drains of the rounds at the main time scale (lease requests included here).")
    w("")
    for s in scenarios:
        by = collections.Counter()
        for r in per_scenario[s]["v"]:
            by.update(r["api"]["by"])
        m = per_scenario[s]["migrated"]
        w(f"{s} ({m} VMIs migrated):")
        w("")
        w("| verb resource | requests | per migrated VMI |")
        w("|---|---|---|")
        for key, n in sorted(by.items()):
            w(f"| {key} | {n} | {n / m:.2f} |" if m else f"| {key} | {n} | – |")
        w("")
    w("## Commands")
    w("")
    w("Every command the run used, in order (`$WORK` is the run's temporary folder with the measurements "
      "in `$WORK/out`, `$STATE` = `$WORK/testbed` the testbed's state folder, "
      "`$BIN` the release build folder, `$KUBE_BIN` the folder of the Kubernetes binaries that "
      "tests/testbed/build.sh prints):")
    w("")
    w("```sh")
    L.extend(commands)
    w("```")
    w("")
    path = os.path.join(args.docs, "benchmarks.md")
    # Sections this report does not write are kept, in their order, after its own: "Scale"
    # (`make bench-scale`), the rolling upgrade (`make bench-rollout`) and the measurements
    # made once and written by hand.
    own = {line for line in L if line.startswith("## ")}
    kept = []
    if os.path.exists(path):
        text = open(path).read()
        for part in text.split("\n## ")[1:]:
            if "## " + part.split("\n", 1)[0] not in own:
                kept.append("## " + part.rstrip("\n"))
    with open(path, "w") as f:
        f.write("\n\n".join(["\n".join(L).rstrip("\n")] + kept) + "\n")


def print_summary(summary):
    widths = [max(len(r[i]) for r in summary) for i in range(4)]
    print()
    for r in [("figure", "measured", "target", "met?")] + summary:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)))
    print()


if __name__ == "__main__":
    sys.exit(main())
