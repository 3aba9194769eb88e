#!/usr/bin/env python3
"""Report of `make bench-scale`: reads OUT (meta.json, sizes.jsonl, phases.jsonl,
samples-<size>.jsonl, audit-<size>.log, cordon-<size>.json, apiserver-*-seed-<size>.jsonl,
commands.txt, written by scripts/bench-scale.sh) and writes the section "Scale" of
DOCS/benchmarks.md (replaced if there, appended if not; the rest of the file is kept) and
DOCS/benchmarks-scale.png (gnuplot). Writes only figures found in OUT."""

import argparse
import collections
import datetime
import json
import os
import platform
import subprocess
import sys

# The targets of the scale work (RSS at 5,000 nodes, idle CPU, cordon p99 at 5,000 nodes).
# The RSS target is 50 MB (10^6 bytes); RSS is reported in MiB (2^20 bytes).
TARGET_RSS_MB = 50
TARGET_RSS_MIB = TARGET_RSS_MB * 1e6 / 2**20
TARGET_IDLE_CPU = 1.0
TARGET_CORDON_P99 = 0.5


def jsonl(path):
    if not os.path.exists(path):
        return []
    return [json.loads(l) for l in open(path) if l.strip()]


def parse_time(ts):
    return datetime.datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()


def audit_requests(path):
    """(received unix time, verb, resource) of each request of the audit log, once each."""
    seen = {}
    if not os.path.exists(path):
        return []
    for line in open(path):
        try:
            e = json.loads(line)
        except ValueError:
            continue
        if e.get("auditID") in seen or "requestReceivedTimestamp" not in e:
            continue
        ref = e.get("objectRef") or {}
        seen[e["auditID"]] = (parse_time(e["requestReceivedTimestamp"]), e.get("verb", ""),
                              ref.get("resource", e.get("requestURI", "")))
    return list(seen.values())


def window(samples, start, end):
    inside = [s for s in samples if start <= s["t"] <= end and "rss" in s and "cpu" in s]
    if len(inside) < 2:
        return None
    first, last = inside[0], inside[-1]
    span = last["t"] - first["t"]
    return dict(
        rss_mb=last["rss"] / 2**20,
        rss_peak_mb=max(s["rss"] for s in inside) / 2**20,
        # The most RSS since vacate started, at the window's start (VmHWM): for the idle
        # window, the peak of start-up, while the first lists were decoded.
        hwm_mb=first["VmHWM"] / 2**20 if "VmHWM" in first else None,
        # ... and at its end: the highest RSS up to then, spikes between two samples included.
        hwm_end_mb=last["VmHWM"] / 2**20 if "VmHWM" in last else None,
        anon_mb=last["RssAnon"] / 2**20 if "RssAnon" in last else None,
        file_mb=last["RssFile"] / 2**20 if "RssFile" in last else None,
        cpu_pct=100 * (last["cpu"] - first["cpu"]) / span if span > 0 else None,
    )


def requests_in(requests, start, end):
    inside = [r for r in requests if start <= r[0] <= end]
    minutes = (end - start) / 60
    by = collections.Counter(f"{v} {res}" for _, v, res in inside)
    return dict(per_min=len(inside) / minutes if minutes else None,
                lease_per_min=sum(n for k, n in by.items() if k.endswith(" leases")) / minutes if minutes else None,
                by={k: round(n / minutes, 1) for k, n in by.most_common()})


def vmi_conflicts(out, size):
    """PATCH requests on virtualmachineinstances answered 409 (all clients) during the seed."""
    def total(path, code):
        return sum(r["value"] for r in jsonl(path)
                   if r.get("resource") == "virtualmachineinstances" and r.get("verb") == "PATCH"
                   and (code is None or r.get("code") == code))
    before = os.path.join(out, f"apiserver-before-seed-{size}.jsonl")
    after = os.path.join(out, f"apiserver-after-seed-{size}.jsonl")
    if not os.path.exists(after):
        return None
    return dict(conflicts=total(after, "409") - total(before, "409"),
                patches=total(after, None) - total(before, None))


def seed_cpu(row):
    """CPU seconds each testbed program used during the seed, most first."""
    before, after = row.get("cpu_before") or {}, row.get("cpu_after") or {}
    used = {name: after[name] - before.get(name, 0) for name in after}
    return sorted(((n, c) for n, c in used.items() if c >= 0.5), key=lambda nc: -nc[1])


def fmt(v, spec=".1f", none="—"):
    return none if v is None else format(v, spec)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("docs")
    args = ap.parse_args()
    meta = json.load(open(os.path.join(args.out, "meta.json")))
    sizes = jsonl(os.path.join(args.out, "sizes.jsonl"))
    phases = jsonl(os.path.join(args.out, "phases.jsonl"))
    commands = open(os.path.join(args.out, "commands.txt")).read().strip().splitlines()
    rows = []
    for s in sizes:
        n = s["size"]
        row = dict(s)
        if s["reached"]:
            samples = jsonl(os.path.join(args.out, f"samples-{n}.jsonl"))
            requests = audit_requests(os.path.join(args.out, f"audit-{n}.log"))
            for p in (p for p in phases if p["size"] == n):
                row[p["phase"]] = dict(p, **(window(samples, p["start"], p["end"]) or {}),
                                       **requests_in(requests, p["start"], p["end"]))
            # The highest RSS of the whole run at this size: the last sample's VmHWM.
            marks = [x["VmHWM"] for x in samples if "VmHWM" in x]
            row["hwm_run_mb"] = marks[-1] / 2**20 if marks else None
            cordon = os.path.join(args.out, f"cordon-{n}.json")
            if os.path.exists(cordon):
                row["cordon"] = json.load(open(cordon))
        row["seed_conflicts"] = vmi_conflicts(args.out, n)
        rows.append(row)
    json.dump(rows, open(os.path.join(args.out, "report.json"), "w"), indent=1)
    reached = [r for r in rows if r["reached"]]
    if reached:
        plot(args, reached)
    write_section(args, meta, rows, commands)
    for r in rows:
        print(json.dumps({k: r.get(k) for k in ("size", "reached", "seed_seconds")}), file=sys.stderr)


def get(row, phase, key):
    return (row.get(phase) or {}).get(key)


def plot(args, rows):
    data = os.path.join(args.out, "scale.dat")
    with open(data, "w") as f:
        f.write("# size rss_idle rss_rollout_peak cpu_idle cpu_rollout req_idle req_pending cordon_p99 seed_s\n")
        for r in rows:
            vals = [r["size"], get(r, "idle", "rss_mb"), get(r, "rollout", "rss_peak_mb"),
                    get(r, "idle", "cpu_pct"), get(r, "rollout", "cpu_pct"),
                    get(r, "idle", "per_min"), get(r, "pending", "per_min"),
                    (r.get("cordon") or {}).get("p99_seconds"), r.get("seed_seconds")]
            f.write(" ".join("NaN" if v is None else str(v) for v in vals) + "\n")
    png = os.path.join(args.docs, "benchmarks-scale.png")
    cairo = "pngcairo" in subprocess.run(["gnuplot", "-e", "set terminal"], capture_output=True,
                                         text=True).stdout
    lp = "with linespoints pt 7 lw 2"
    script = [
        "set terminal pngcairo size 1200,800 font 'sans,10'" if cairo else "set terminal png size 1200,800",
        f"set output '{png}'",
        "set multiplot layout 2,3 title 'One vacate replica against the fleet size (10 pods, 2 VMIs per node)'",
        "set xlabel 'nodes'", "set grid", "set key top left", "set yrange [0:*]",
        f"set xrange [0:{max(r['size'] for r in rows) * 1.1}]",
        "set title 'vacate RSS'", "set ylabel 'MiB'",
        f"plot '{data}' using 1:2 {lp} title 'idle', '' using 1:3 {lp} title 'rollout (peak)', "
        f"{TARGET_RSS_MIB:.2f} dt 2 lc rgb 'black' title 'target (50 MB)'",
        "set title 'vacate CPU'", "set ylabel '% of one core'",
        f"plot '{data}' using 1:4 {lp} title 'idle', '' using 1:5 {lp} title 'rollout'",
        "set title 'vacate API requests'", "set ylabel 'per minute'",
        f"plot '{data}' using 1:6 {lp} title 'idle', '' using 1:7 {lp} title 'nodes Pending'",
        "set title 'request to cordon p99'", "set ylabel 'seconds'",
        f"plot '{data}' using 1:8 {lp} title 'p99', {TARGET_CORDON_P99} dt 2 lc rgb 'black' title 'target'",
        "set title 'testbed seed time'", "set ylabel 'seconds'",
        f"plot '{data}' using 1:9 {lp} title 'seed (created and Running)'",
        "unset multiplot",
    ]
    subprocess.run(["gnuplot"], input="\n".join(script), text=True, check=True)


def write_section(args, meta, rows, commands):
    L = []
    w = L.append
    w("## Scale")
    w("")
    # Runs before the split of the workload (no "nodes_per_deployment") had one Deployment.
    per = meta.get("nodes_per_deployment")
    deployments = (f"7 of the Deployments, one of {7 * per} replicas per {per} nodes" if per
                   else "7 of a Deployment")
    w(f"Written by `make bench-scale` (scripts/bench-scale.sh, scripts/bench-scale-report.py) on "
      f"{meta['date']}: commit `{meta['commit']}`{' with local changes' if meta['dirty'] else ''}, "
      f"{meta.get('cpus', os.cpu_count())} cores ({platform.machine()}), release builds, simulator time scale "
      f"{meta['time_scale']}. Every figure was measured in that run, on a machine shared with other "
      "work. One vacate replica watches a testbed fleet of N kwok nodes (each with 50 entries in "
      "`status.images`), 2 VMIs (VirtualMachines of 2Gi) and 10 pods per node (2 virt-launcher "
      f"pods, {deployments}, 1 of a DaemonSet), plus 3 empty nodes for the request-to-cordon "
      f"samples. Each seed may take {meta['seed_limit']} s. `benchmarks-scale.png` plots each "
      "figure against N.")
    w("")
    w("![scale](benchmarks-scale.png)")
    w("")
    w("| nodes | VMIs | pods | seed | RSS idle | RSS start-up (peak) | RSS rollout (peak) | CPU idle | "
      "CPU rollout | API req/min idle | API req/min, nodes Pending | request→cordon p50 / p99 | rollout |")
    w("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        if not r["reached"]:
            w(f"| {r['size']} | — | — | not reached ({fmt(r.get('seed_seconds'), '.0f')} s) "
              "| | | | | | | | | |")
            continue
        c = r.get("cordon") or {}
        ro = r.get("rollout") or {}
        pe = r.get("pending") or {}
        w(f"| {r['size']} | {r.get('vmis', '—')} | {r.get('pods', '—')} | {fmt(r['seed_seconds'], '.0f')} s "
          f"| {fmt(get(r, 'idle', 'rss_mb'))} MiB | {fmt(get(r, 'idle', 'hwm_mb'))} MiB "
          f"| {fmt(ro.get('rss_peak_mb'))} MiB "
          f"| {fmt(get(r, 'idle', 'cpu_pct'), '.2f')} % | {fmt(ro.get('cpu_pct'), '.1f')} % "
          f"| {fmt(get(r, 'idle', 'per_min'))} | {fmt(pe.get('per_min'))} ({pe.get('nodes', '—')} Pending) "
          f"| {fmt(c.get('p50_seconds'), '.3f')} / {fmt(c.get('p99_seconds'), '.3f')} s "
          f"| {ro.get('drained', '—')}/{ro.get('nodes', '—')} drained in {fmt(ro['end'] - ro['start'] if ro else None, '.0f')} s |")
    w("")
    reached = [r for r in rows if r["reached"]]
    split = [r for r in reached if get(r, "idle", "anon_mb") is not None]
    if split:
        w("Of the idle RSS, anonymous memory (vacate's heap and stacks) and file-backed pages "
          "(mostly the executable's code, shared with the page cache; `RssAnon` and `RssFile`): " +
          "; ".join(f"{r['size']} nodes: {fmt(get(r, 'idle', 'anon_mb'))} + "
                    f"{fmt(get(r, 'idle', 'file_mb'))} MiB" for r in split) + ".")
        w("")
    hwm = [r for r in reached if get(r, "rollout", "hwm_end_mb") is not None]
    if hwm:
        w("The peaks above are of RSS sampled once a second. The highest RSS since vacate "
          "started, spikes between two samples included (`VmHWM`), at the rollout's end: " +
          "; ".join(f"{r['size']} nodes: {fmt(get(r, 'rollout', 'hwm_end_mb'))} MiB" for r in hwm) + ".")
        run = [r for r in hwm if r.get("hwm_run_mb") is not None]
        if run:
            w("")
            w("And at the end of the run, after the requests of the rolled-out and Pending nodes "
              "were removed (vacate starts draining Pending nodes as places free up, and stops "
              "when their requests go) and the request-to-cordon samples: " +
              "; ".join(f"{r['size']} nodes: {fmt(r['hwm_run_mb'])} MiB" for r in run) + ".")
        w("")
    missed = [r for r in rows if not r["reached"]]
    if reached:
        top = reached[-1]
        w(f"Largest fleet reached: **{top['size']} nodes** ({top.get('vmis', '?')} VMIs, "
          f"{top.get('pods', '?')} pods), seeded in {fmt(top['seed_seconds'], '.0f')} s.")
    else:
        w("No fleet size was reached.")
    for r in missed:
        w(f"{r['size']} nodes were not reached: the seed gave up after {fmt(r.get('seed_seconds'), '.0f')} s "
          f"(limit {meta['seed_limit']} s): `{r.get('reason', '').strip()}`.")
    untried = [s for s in (500, 1000, 2000, 5000) if s not in {r["size"] for r in rows}]
    if untried:
        w(f"Not tried in this run: {', '.join(map(str, untried))} nodes.")
    w("")
    cpu_rows = [(r, seed_cpu(r)) for r in rows if seed_cpu(r)]
    if cpu_rows:
        w(f"Where each seed's time goes: CPU seconds (user and system, from /proc) each testbed "
          f"program used from the start of `testbed seed` to its end, against the "
          f"{meta['cpus']} cores' CPU seconds in that time (the `testbed seed` client itself is "
          f"not counted):")
        w("")
        for r, used in cpu_rows:
            available = meta["cpus"] * (r.get("seed_seconds") or 0)
            total = sum(c for _, c in used)
            w(f"- {r['size']} nodes ({fmt(r.get('seed_seconds'), '.0f')} s, "
              f"{'reached' if r['reached'] else 'not reached'}): "
              + ", ".join(f"{n} {c:.0f} s" for n, c in used)
              + f"; {total:.0f} of {available:.0f} CPU seconds"
              + (f" ({100 * total / available:.0f} %)" if available else ""))
        w("")
    if reached:
        top = reached[-1]
        w(f"Against the targets, at the largest size reached ({top['size']} nodes; the targets are "
          "set for 5,000):")
        w("")
        w("| figure | measured | target |")
        w("|---|---:|---:|")
        w(f"| RSS (idle; rollout peak) | {fmt(get(top, 'idle', 'rss_mb'))} MiB; "
          f"{fmt(get(top, 'rollout', 'rss_peak_mb'))} MiB | ≤ {TARGET_RSS_MB} MB ({TARGET_RSS_MIB:.1f} MiB) |")
        w(f"| RSS high-water mark (`VmHWM`) at the rollout's end; at the run's end | "
          f"{fmt(get(top, 'rollout', 'hwm_end_mb'))} MiB; {fmt(top.get('hwm_run_mb'))} MiB "
          f"| ≤ {TARGET_RSS_MB} MB ({TARGET_RSS_MIB:.1f} MiB) |")
        cpu = [fmt(get(r, "idle", "cpu_pct"), ".2f") for r in reached]
        w(f"| CPU idle, % of a core, from {reached[0]['size']} to {top['size']} nodes | "
          f"{' → '.join(cpu)} | < {TARGET_IDLE_CPU:g} % |")
        idle = [round(get(r, "idle", "per_min") or 0, 1) for r in reached]
        w(f"| API requests per minute idle, from {reached[0]['size']} to {top['size']} nodes | "
          f"{' → '.join(map(str, idle))} | independent of the fleet size |")
        w(f"| request → cordon p99 | {fmt((top.get('cordon') or {}).get('p99_seconds'), '.3f')} s "
          f"| ≤ {TARGET_CORDON_P99} s |")
        w("")
        w("vacate's API requests per minute by verb and resource (audit log), idle and with nodes "
          "Pending, at each size:")
        w("")
        for r in reached:
            for ph in ("idle", "pending"):
                by = get(r, ph, "by") or {}
                text = ", ".join(f"{k} {v}" for k, v in by.items()) or "none"
                w(f"- {r['size']} nodes, {ph}: {text}")
        w("")
        conflicts = [(r["size"], r["seed_conflicts"]) for r in rows if r.get("seed_conflicts")]
        if conflicts:
            w("The KubeVirt simulator during each seed (API server's `apiserver_request_total`, all "
              "clients): PATCH requests on virtualmachineinstances, and how many were answered 409: " +
              "; ".join(f"{n} nodes: {c['patches']:.0f} PATCH, {c['conflicts']:.0f} answered 409"
                        for n, c in conflicts) + ".")
            w("")
    w("How each figure is measured: RSS (`VmRSS`, in MiB: 2^20 bytes, so the target of 50 MB is 47.7 MiB) and CPU time (user and system) of the vacate "
      "process from /proc, sampled every second (vacate also exports them as "
      "`process_resident_memory_bytes` and `process_cpu_seconds_total`, the latter in whole "
      "seconds); CPU is the CPU time used over the window's length. Idle: "
      f"{meta['idle_window']} s once vacate's caches are filled (plus 15 s). Rollout: "
      f"{meta['rollout_nodes']} nodes labelled `vacate.io/maintenance=true` at once "
      f"(`fleet.max_draining = {meta['rollout_nodes']}`), from the labelling to the last "
      "`vacate.io/drained=true`. Pending: up to 500 more nodes labelled while the drained ones hold "
      f"every place, so they wait in Pending; measured over {meta['idle_window']} s after 15 s. API "
      "requests: vacate runs as its own user and the API server's audit log (`testbed up "
      "--audit-user vacate`) holds its requests; each request counts once, at its "
      "`requestReceivedTimestamp` (watches included, lease renewals included). Request to cordon: "
      "`testbed bench-cordon` on the 3 empty nodes, after the maintenance of every other node has "
      + ("ended and vacate has finished with it (no node cordoned, labelled drained or carrying "
         "vacate's state annotation). " if meta.get("cordon_after") == "settled" else "ended. ")
      + "The seed time is `testbed seed` from start to every node Ready, every Deployment and "
      "DaemonSet available and every VMI Running.")
    w("")
    w("Commands (`$BIN`: release builds, `$KUBE_BIN`: the testbed's Kubernetes binaries):")
    w("")
    w("```")
    L.extend(commands)
    w("```")
    w("")
    section = "\n".join(L)
    path = os.path.join(args.docs, "benchmarks.md")
    text = open(path).read() if os.path.exists(path) else "# Benchmarks\n"
    start = text.find("\n## Scale\n")
    if start < 0:
        text = text.rstrip("\n") + "\n\n" + section
    else:
        # The section ends at the next heading or at the marker of another report's section
        # (bench-rollout's `<!-- rollout:start -->`), which stays.
        ends = [i for i in (text.find("\n## ", start + 1), text.find("\n<!-- ", start + 1)) if i >= 0]
        end = min(ends) if ends else -1
        text = text[:start + 1] + section + ("" if end < 0 else text[end:])
    with open(path, "w") as f:
        f.write(text.rstrip("\n") + "\n")


if __name__ == "__main__":
    main()
