#!/usr/bin/env python3
"""Static checks of vacate's shipping artifacts, called by tests/artifacts/check.sh.

Subcommands (each prints what it checked and exits non-zero on a failure):
  metrics                 every metric named in the dashboard and the alert rules is one vacate exports
  dashboard               dashboard conventions (uid, datasource variable, $__rate_interval)
  dashboard-rules FILE    writes the dashboard's queries as a rule file, for `promtool check rules`
  alerts                  every alert has severity, summary, description, a runbook section and unit tests
  rbac RENDERED           the rendered manifests grant exactly the permissions vacate uses
  deployment RENDERED     the Deployment and its neighbours keep the required settings
  crds                    the testing CRDs match the checksums in their README
"""

import hashlib
import json
import re
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
METRICS_RS = ROOT / "crates/vacate/src/metrics.rs"
DASHBOARD = ROOT / "dashboards/vacate.json"
RULES = ROOT / "alerts/vacate.rules.yaml"
RULE_TESTS = ROOT / "alerts/vacate.rules.test.yaml"
RUNBOOK = ROOT / "docs/runbook.md"
CRDS = ROOT / "deploy/crds-for-testing"

# The permissions vacate's code uses (crates/vacate/src/cluster): (apiGroup, resource) -> verbs.
# Anything granted beyond this fails the check; so does anything missing.
EXPECTED_CLUSTER_RULES = {
    ("", "nodes"): {"get", "list", "watch", "patch"},
    ("", "pods"): {"list", "watch"},
    ("", "pods/eviction"): {"create"},
    ("kubevirt.io", "virtualmachineinstances"): {"get", "list", "watch", "delete"},
    ("kubevirt.io", "virtualmachines"): {"list", "watch"},
    ("kubevirt.io", "virtualmachineinstancemigrations"): {"get", "list", "watch", "create", "delete"},
    ("kubevirt.io", "kubevirts"): {"list", "watch"},
    ("events.k8s.io", "events"): {"create", "patch"},
}
# Leader election (a Lease) and the schedules' record (a ConfigMap, reached by name once it
# exists) in vacate's namespace.
EXPECTED_NAMESPACED_RULES = {
    ("coordination.k8s.io", "leases"): {"get", "list", "watch", "create", "patch"},
    ("", "configmaps"): {"create"},
    ("", "configmaps:vacate-schedules"): {"get", "patch"},
}
NAMESPACE = "vacate-system"
SERVICE_ACCOUNT = "vacate"

# Metric names that appear in queries but are not vacate's. Keep empty unless a forthcoming
# metric is shown on purpose (and say so next to it).
ALLOWED_OTHER_METRICS: set[str] = set()

failures: list[str] = []


def fail(message: str) -> None:
    failures.append(message)
    print(f"  FAIL {message}")


def ok(message: str) -> None:
    print(f"  ok   {message}")


def finish() -> None:
    if failures:
        print(f"{len(failures)} failed")
        sys.exit(1)


# ---------------------------------------------------------------------------------------
# metrics


def exported_metrics() -> set[str]:
    """Names vacate exports, read from metrics.rs: every `vacate_` string literal, and for
    histograms the _bucket, _sum and _count series Prometheus sees."""
    source = METRICS_RS.read_text()
    names = set(re.findall(r'"(vacate_[a-z0-9_]+)"', source))
    histograms = set(re.findall(r'HistogramOpts::new\(\s*"(vacate_[a-z0-9_]+)"', source))
    if not names:
        fail(f"no metric names found in {METRICS_RS.relative_to(ROOT)}")
    exported = names - histograms
    for h in histograms:
        exported |= {f"{h}_bucket", f"{h}_sum", f"{h}_count"}
    return exported


def dashboard_queries() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    queries = []

    def walk(panels):
        for p in panels:
            for t in p.get("targets", []):
                if "expr" in t:
                    queries.append((f"panel '{p.get('title')}' {t.get('refId')}", t["expr"]))
            walk(p.get("panels", []))

    walk(dashboard.get("panels", []))
    return queries


def rule_queries() -> list[tuple[str, str]]:
    rules = yaml.safe_load(RULES.read_text())
    return [
        (f"alert {r.get('alert') or r.get('record')}", r["expr"])
        for g in rules["groups"]
        for r in g["rules"]
    ]


def metric_names_in(expr: str) -> set[str]:
    # Drop label matchers and strings so label values such as "vacate_x" are not read as names.
    stripped = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    return set(re.findall(r"\b(vacate_[a-zA-Z0-9_:]+)", stripped))


def check_metrics() -> None:
    print("metric names in dashboards/vacate.json and alerts/vacate.rules.yaml against crates/vacate/src/metrics.rs")
    exported = exported_metrics() | ALLOWED_OTHER_METRICS
    used: set[str] = set()
    for where, expr in dashboard_queries() + rule_queries():
        names = metric_names_in(expr)
        if not names:
            fail(f"{where}: names no vacate metric: {expr}")
        for name in sorted(names):
            if name not in exported:
                fail(f"{where}: unknown metric {name}")
        used |= names
    ok(f"{len(used)} metric names used, all exported ({len(exported)} series names exported)")
    bases = {re.sub(r"_(bucket|sum|count)$", "", n) for n in exported}
    unused = sorted(b for b in bases if not any(u.startswith(b) for u in used))
    if unused:
        print(f"  note exported but not shown anywhere: {', '.join(unused)}")


# ---------------------------------------------------------------------------------------
# dashboard


def check_dashboard() -> None:
    print("dashboard conventions in dashboards/vacate.json")
    d = json.loads(DASHBOARD.read_text())
    if d.get("uid") != "vacate-overview":
        fail(f"uid is {d.get('uid')!r}, want 'vacate-overview'")
    if not 36 <= int(d.get("schemaVersion", 0)) <= 41:
        fail(f"schemaVersion {d.get('schemaVersion')} is not a current one")
    variables = {v["name"]: v for v in d.get("templating", {}).get("list", [])}
    ds = variables.get("datasource")
    if not ds or ds.get("type") != "datasource" or ds.get("query") != "prometheus":
        fail("no `datasource` variable of type datasource/prometheus")
    ids = []

    def walk(panels):
        for p in panels:
            ids.append(p.get("id"))
            if p.get("type") != "row":
                if p.get("datasource", {}).get("uid") != "${datasource}":
                    fail(f"panel '{p.get('title')}' does not use ${{datasource}}")
                if not p.get("description"):
                    fail(f"panel '{p.get('title')}' has no description")
            for t in p.get("targets", []):
                if t.get("datasource", {}).get("uid") != "${datasource}":
                    fail(f"panel '{p.get('title')}' {t.get('refId')} does not use ${{datasource}}")
                for window in re.findall(r"\b(?:rate|irate|increase)\([^\[]*\[([^\]]+)\]", t.get("expr", "")):
                    if window != "$__rate_interval":
                        fail(f"panel '{p.get('title')}' uses [{window}] instead of [$__rate_interval]")
            walk(p.get("panels", []))

    walk(d.get("panels", []))
    if len(ids) != len(set(ids)):
        fail("panel ids are not unique")
    ok(f"{len(ids)} panels, uid vacate-overview, schemaVersion {d.get('schemaVersion')}, datasource variable, $__rate_interval")


def write_dashboard_rules(path: str) -> None:
    """The dashboard's queries as recording rules, so the real Prometheus parser checks them."""
    rules = []
    for i, (where, expr) in enumerate(dashboard_queries()):
        expr = expr.replace("$__rate_interval", "1m").replace("$__range", "1h")
        rules.append({"record": f"dashboard:query_{i}", "expr": expr})
    Path(path).write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    print(f"  wrote {len(rules)} dashboard queries to a rule file for promtool")


# ---------------------------------------------------------------------------------------
# alerts


def anchors(markdown: str) -> set[str]:
    """GitHub-style anchors of the headings of a Markdown file."""
    result = set()
    for line in markdown.splitlines():
        m = re.match(r"#{1,6}\s+(.*)", line)
        if m:
            text = m.group(1).strip().lower()
            text = re.sub(r"[^\w\- ]", "", text).replace(" ", "-")
            result.add(text)
    return result


def check_alerts() -> None:
    print("alerts in alerts/vacate.rules.yaml: labels, annotations, runbook sections, unit tests")
    rules = yaml.safe_load(RULES.read_text())
    alerts = [r for g in rules["groups"] for r in g["rules"] if "alert" in r]
    runbook_anchors = anchors(RUNBOOK.read_text())
    tests = yaml.safe_load(RULE_TESTS.read_text())
    firing: dict[str, int] = {}
    quiet: dict[str, int] = {}
    for t in tests.get("tests", []):
        for case in t.get("alert_rule_test", []):
            bucket = firing if case.get("exp_alerts") else quiet
            bucket[case["alertname"]] = bucket.get(case["alertname"], 0) + 1
    required = {"VacateDrainStuck", "VacateDrainFailed", "VacateMigrationsFailing", "VacateNoLeader", "VacateNodeCordonedTooLong"}
    missing = required - {a["alert"] for a in alerts}
    if missing:
        fail(f"alerts missing: {sorted(missing)}")
    for a in alerts:
        name = a["alert"]
        if a.get("labels", {}).get("severity") not in {"critical", "warning", "info"}:
            fail(f"{name}: severity label missing or not critical/warning/info")
        ann = a.get("annotations", {})
        for key in ("summary", "description", "runbook_url"):
            if not ann.get(key):
                fail(f"{name}: annotation {key} missing")
        url = ann.get("runbook_url", "")
        m = re.search(r"docs/runbook\.md#([\w-]+)$", url)
        if not m:
            fail(f"{name}: runbook_url {url!r} does not point into docs/runbook.md")
        elif m.group(1) not in runbook_anchors:
            fail(f"{name}: docs/runbook.md has no section #{m.group(1)}")
        if not firing.get(name):
            fail(f"{name}: no unit test where it fires")
        if not quiet.get(name):
            fail(f"{name}: no unit test where it must not fire")
    ok(f"{len(alerts)} alerts, each with severity, summary, description, a runbook section and firing/not-firing tests")


# ---------------------------------------------------------------------------------------
# rendered manifests


def load_rendered(path: str) -> list[dict]:
    return [d for d in yaml.safe_load_all(Path(path).read_text()) if d]


def granted(rules: list[dict], where: str) -> dict[tuple[str, str], set[str]]:
    result: dict[tuple[str, str], set[str]] = {}
    for rule in rules:
        if rule.get("nonResourceURLs"):
            fail(f"{where}: grants nonResourceURLs {rule['nonResourceURLs']}")
        names = rule.get("resourceNames") or [None]
        for group in rule.get("apiGroups", []):
            for resource in rule.get("resources", []):
                for verb in rule.get("verbs", []):
                    if "*" in (group, resource, verb):
                        fail(f"{where}: wildcard in {group!r}/{resource!r}/{verb!r}")
                    for name in names:
                        key = resource if name is None else f"{resource}:{name}"
                        result.setdefault((group, key), set()).add(verb)
    return result


def compare(have: dict, want: dict, where: str) -> None:
    for key in sorted(set(have) | set(want)):
        group, resource = key
        name = f"{group or 'core'}/{resource}"
        extra = have.get(key, set()) - want.get(key, set())
        lacking = want.get(key, set()) - have.get(key, set())
        if key not in want:
            fail(f"{where}: grants {name} {sorted(extra)}, which vacate does not use")
        elif extra:
            fail(f"{where}: grants {name} {sorted(extra)} beyond {sorted(want[key])}")
        if lacking:
            fail(f"{where}: lacks {name} {sorted(lacking)}, which vacate uses")


def check_rbac(path: str) -> None:
    print("RBAC in the rendered manifests: exactly the permissions vacate's code uses")
    docs = load_rendered(path)
    by_kind: dict[str, list[dict]] = {}
    for d in docs:
        by_kind.setdefault(d["kind"], []).append(d)
    cluster_roles = by_kind.get("ClusterRole", [])
    roles = by_kind.get("Role", [])
    if len(cluster_roles) != 1 or len(roles) != 1:
        fail(f"want one ClusterRole and one Role, found {len(cluster_roles)} and {len(roles)}")
    for cr in cluster_roles:
        if cr.get("aggregationRule"):
            fail("ClusterRole has an aggregationRule")
        compare(granted(cr.get("rules", []), "ClusterRole"), EXPECTED_CLUSTER_RULES, f"ClusterRole {cr['metadata']['name']}")
    for r in roles:
        if r["metadata"].get("namespace") != NAMESPACE:
            fail(f"Role {r['metadata']['name']} is not in {NAMESPACE}")
        compare(granted(r.get("rules", []), "Role"), EXPECTED_NAMESPACED_RULES, f"Role {r['metadata']['name']}")
    subject = {"kind": "ServiceAccount", "name": SERVICE_ACCOUNT, "namespace": NAMESPACE}
    for kind, role_kind, targets in (("ClusterRoleBinding", "ClusterRole", cluster_roles), ("RoleBinding", "Role", roles)):
        bindings = by_kind.get(kind, [])
        if len(bindings) != 1:
            fail(f"want one {kind}, found {len(bindings)}")
        for b in bindings:
            if b["subjects"] != [subject]:
                fail(f"{kind} {b['metadata']['name']} binds {b['subjects']}, want only {subject}")
            ref = b["roleRef"]
            if ref["kind"] != role_kind or ref["name"] not in {t["metadata"]["name"] for t in targets}:
                fail(f"{kind} {b['metadata']['name']} refers to {ref['kind']} {ref['name']}")
    sas = by_kind.get("ServiceAccount", [])
    if [(s["metadata"]["name"], s["metadata"].get("namespace")) for s in sas] != [(SERVICE_ACCOUNT, NAMESPACE)]:
        fail(f"want exactly ServiceAccount {NAMESPACE}/{SERVICE_ACCOUNT}")
    n = sum(len(v) for v in EXPECTED_CLUSTER_RULES.values()) + sum(len(v) for v in EXPECTED_NAMESPACED_RULES.values())
    ok(f"ClusterRole and Role grant exactly the {n} expected (resource, verb) pairs; bindings name only {NAMESPACE}/{SERVICE_ACCOUNT}")


def check_deployment(path: str) -> None:
    print("Deployment, PodDisruptionBudget, Service, ServiceMonitor, ConfigMap in the rendered manifests")
    docs = load_rendered(path)
    by_kind: dict[str, list[dict]] = {}
    for d in docs:
        by_kind.setdefault(d["kind"], []).append(d)
    for kind in ("Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding", "Deployment",
                 "PodDisruptionBudget", "Service", "ServiceMonitor", "PrometheusRule", "ConfigMap"):
        if len(by_kind.get(kind, [])) != 1:
            fail(f"want one {kind}, found {len(by_kind.get(kind, []))}")
    for d in docs:
        if d["kind"] not in {"Namespace", "ClusterRole", "ClusterRoleBinding"} and d["metadata"].get("namespace") != NAMESPACE:
            fail(f"{d['kind']} {d['metadata']['name']} is not in {NAMESPACE}")
    if failures:
        return
    dep = by_kind["Deployment"][0]
    spec = dep["spec"]
    pod = spec["template"]["spec"]
    (c,) = pod["containers"]

    def expect(cond: bool, message: str) -> None:
        if not cond:
            fail(f"Deployment: {message}")

    expect(spec.get("replicas") == 2, "replicas is not 2")
    expect(pod.get("serviceAccountName") == SERVICE_ACCOUNT, f"serviceAccountName is not {SERVICE_ACCOUNT}")
    expect(c.get("args") == ["run", "--config", "/etc/vacate/vacate.toml"], f"args are {c.get('args')}")
    ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
    expect(ports == {"metrics": 9464}, f"ports are {ports}, want metrics: 9464")
    expect(c.get("livenessProbe", {}).get("httpGet") == {"path": "/healthz", "port": "metrics"}, "liveness probe is not GET /healthz on metrics")
    expect(c.get("readinessProbe", {}).get("httpGet") == {"path": "/readyz", "port": "metrics"}, "readiness probe is not GET /readyz on metrics")
    res = c.get("resources", {})
    expect(res.get("requests", {}).get("cpu") and res.get("requests", {}).get("memory"), "no cpu and memory requests")
    expect(res.get("limits", {}).get("memory"), "no memory limit")
    sc = c.get("securityContext", {})
    psc = pod.get("securityContext", {})
    expect(sc.get("allowPrivilegeEscalation") is False, "allowPrivilegeEscalation is not false")
    expect(sc.get("readOnlyRootFilesystem") is True, "readOnlyRootFilesystem is not true")
    expect(sc.get("capabilities", {}).get("drop") == ["ALL"], "capabilities are not drop [ALL]")
    expect(sc.get("runAsNonRoot") is True or psc.get("runAsNonRoot") is True, "runAsNonRoot is not true")
    expect((sc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type") == "RuntimeDefault", "seccompProfile is not RuntimeDefault")
    env = {e["name"]: e for e in c.get("env", [])}
    expect(env.get("POD_NAME", {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "metadata.name", "POD_NAME not from the downward API")
    cm = by_kind["ConfigMap"][0]
    mounts = {m["name"]: m for m in c.get("volumeMounts", [])}
    vols = {v["name"]: v for v in pod.get("volumes", [])}
    config_vol = next((v for v in vols.values() if v.get("configMap", {}).get("name") == cm["metadata"]["name"]), None)
    expect(config_vol is not None, f"no volume of ConfigMap {cm['metadata']['name']}")
    if config_vol:
        expect(mounts.get(config_vol["name"], {}).get("mountPath") == "/etc/vacate", "config not mounted at /etc/vacate")
    toml = (ROOT / "config/vacate.toml").read_text()
    expect(cm.get("data", {}).get("vacate.toml") == toml, "ConfigMap vacate.toml differs from config/vacate.toml")
    pdb = by_kind["PodDisruptionBudget"][0]["spec"]
    selector = spec["selector"]["matchLabels"]
    labels = spec["template"]["metadata"]["labels"]
    expect(all(labels.get(k) == v for k, v in selector.items()), "selector does not match the pod labels")
    if pdb.get("maxUnavailable") != 1 or pdb.get("selector", {}).get("matchLabels") != selector:
        fail("PodDisruptionBudget is not maxUnavailable 1 over the Deployment's pods")
    svc = by_kind["Service"][0]
    if svc["spec"].get("selector") != selector or [p.get("targetPort") for p in svc["spec"]["ports"]] != ["metrics"]:
        fail("Service does not select the pods' metrics port")
    sm = by_kind["ServiceMonitor"][0]["spec"]
    if not all(svc["metadata"]["labels"].get(k) == v for k, v in sm["selector"]["matchLabels"].items()):
        fail("ServiceMonitor does not select the metrics Service")
    if [e.get("port") for e in sm.get("endpoints", [])] != ["metrics"]:
        fail("ServiceMonitor does not scrape the metrics port")
    rules_spec = by_kind["PrometheusRule"][0]["spec"]
    if rules_spec != yaml.safe_load(RULES.read_text()):
        fail("PrometheusRule spec differs from alerts/vacate.rules.yaml")
    ok("2 replicas, probes on metrics (9464), requests and limits, non-root read-only container without capabilities, "
       "POD_NAME, config from config/vacate.toml, PDB maxUnavailable 1, Service, ServiceMonitor, PrometheusRule = alerts/vacate.rules.yaml")


def check_crds() -> None:
    print("testing CRDs in deploy/crds-for-testing against their recorded checksums")
    readme = (CRDS / "README.md").read_text()
    recorded = dict(re.findall(r"\| `([\w.]+\.yaml)` \|[^|]*\| `([0-9a-f]{64})` \|", readme))
    files = sorted(p.name for p in CRDS.glob("*.yaml"))
    if sorted(recorded) != files:
        fail(f"README lists {sorted(recorded)}, folder has {files}")
    for name in files:
        digest = hashlib.sha256((CRDS / name).read_bytes()).hexdigest()
        if recorded.get(name) != digest:
            fail(f"{name}: sha256 {digest} differs from the README")
    ok(f"{len(files)} CRD files unchanged from the prometheus-operator release")


def main() -> None:
    args = sys.argv[1:]
    commands = {
        "metrics": lambda: check_metrics(),
        "dashboard": lambda: check_dashboard(),
        "dashboard-rules": lambda: write_dashboard_rules(args[1]),
        "alerts": lambda: check_alerts(),
        "rbac": lambda: check_rbac(args[1]),
        "deployment": lambda: check_deployment(args[1]),
        "crds": lambda: check_crds(),
    }
    if not args or args[0] not in commands:
        print(__doc__)
        sys.exit(2)
    commands[args[0]]()
    finish()


if __name__ == "__main__":
    main()
