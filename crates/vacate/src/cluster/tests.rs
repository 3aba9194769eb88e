//! The shell against a scripted API server: what `reconcile` writes, in which order, and what
//! it does when the API answers otherwise than expected. Between the planner's unit tests and
//! the end-to-end tests on the testbed: the watch caches are filled by hand, and a fake API
//! (kube's client over a tower-test mock service) answers and records every request.

use std::sync::{Arc, Mutex};

use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use kube::client::Body;
use kube::runtime::reflector::{self, store::Writer};
use kube::runtime::watcher;
use serde_json::{Value, json};

use super::*;
use crate::planner::{DrainState, VmiOutcome};

const NODE: &str = "worker-1";

/// One request the fake API server saw.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    body: String,
}

impl Seen {
    fn is_node_patch(&self) -> bool {
        self.method == "PATCH" && self.path.starts_with(&format!("/api/v1/nodes/{NODE}"))
    }
    fn writes_state(&self) -> bool {
        self.is_node_patch() && self.body.contains("vacate.io/state")
    }
    fn cordons(&self) -> bool {
        self.is_node_patch() && self.body.contains("\"unschedulable\":true")
    }
    fn creates_migration(&self) -> bool {
        self.method == "POST" && self.path.contains("/virtualmachineinstancemigrations")
    }
}

/// Something done in the cluster as a request arrives.
type RequestHook = Box<dyn FnMut(&Seen) + Send>;

/// How the fake API answers.
#[derive(Default)]
struct Script {
    /// Answer the next conditional state write (one with a resourceVersion) with 409.
    conflict_on_state_write: bool,
    /// The pods on the node.
    pods: Vec<Value>,
    /// Evictions answered with this status code and message, by pod name.
    eviction_errors: HashMap<String, (u16, String)>,
    /// Pods whose evictions API priority and fairness turns away (429 in plain text).
    throttled_evictions: Vec<String>,
    /// Called with each request before it is answered: what else happens in the cluster
    /// meanwhile (another replica taking the lease, ...).
    on_request: Option<RequestHook>,
}

struct Fake {
    ctx: Arc<Context>,
    seen: Arc<Mutex<Vec<Seen>>>,
    script: Arc<Mutex<Script>>,
    nodes: Writer<CachedNode>,
    vmis: Writer<CachedVmi>,
    migrations: Writer<VirtualMachineInstanceMigration>,
    _rx: mpsc::UnboundedReceiver<Wake>,
}

fn json_response(status: StatusCode, body: &Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Body::from(serde_json::to_vec(body).expect("JSON")))
        .expect("response")
}

fn status(code: u16, reason: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code,
           "reason": reason, "message": reason, "metadata": {}})
}

fn node(labels: Value, annotations: Value, unschedulable: bool) -> Node {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": NODE, "resourceVersion": "10", "labels": labels,
                     "annotations": annotations, "uid": "node-uid"},
        "spec": {"unschedulable": unschedulable},
        "status": {"conditions": [{"type": "Ready", "status": "True"}],
                   "nodeInfo": {"kubeletVersion": "v1.37.2", "machineID": "", "systemUUID": "",
                                "bootID": "", "kernelVersion": "", "osImage": "",
                                "containerRuntimeVersion": "", "kubeProxyVersion": "",
                                "operatingSystem": "linux", "architecture": "amd64"}}
    }))
    .expect("node")
}

fn vmi(name: &str) -> VirtualMachineInstance {
    serde_json::from_value(json!({
        "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
        "metadata": {"name": name, "namespace": "vms", "uid": format!("uid-{name}")},
        "spec": {"domain": {"devices": {}, "memory": {"guest": "1Gi"}},
                 "evictionStrategy": "LiveMigrate"},
        "status": {"phase": "Running", "nodeName": NODE,
                   "conditions": [{"type": "LiveMigratable", "status": "True"}]}
    }))
    .expect("vmi")
}

use kubevirt_api::{KubeVirt, VirtualMachineInstance, VirtualMachineInstanceMigration};

use super::cached::{CachedNode, CachedVmi};

/// A node as the node cache holds it.
fn cached(node: Node) -> CachedNode {
    CachedNode::of(node, &config().node.state_annotation)
}

/// Answers every request from the script, recording it. Watches are held open unanswered.
async fn serve(
    mut handle: tower_test::mock::Handle<Request<Body>, Response<Body>>,
    seen: Arc<Mutex<Vec<Seen>>>,
    script: Arc<Mutex<Script>>,
    node_now: Arc<Mutex<Node>>,
) {
    let mut held = Vec::new();
    while let Some((request, respond)) = handle.next_request().await {
        let (parts, body) = request.into_parts();
        let body = body
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let body = String::from_utf8_lossy(&body).to_string();
        let path = parts
            .uri
            .path_and_query()
            .map(|p| p.to_string())
            .unwrap_or_default();
        let method = parts.method.to_string();
        let entry = Seen {
            method: method.clone(),
            path: path.clone(),
            body: body.clone(),
        };
        seen.lock().unwrap().push(entry.clone());
        if let Some(hook) = script.lock().unwrap().on_request.as_mut() {
            hook(&entry);
        }
        let response = if path.contains("watch=true") {
            held.push(respond);
            continue;
        } else if method == "GET" && path.starts_with("/api/v1/pods") {
            let pods = script.lock().unwrap().pods.clone();
            json_response(
                StatusCode::OK,
                &json!({"apiVersion": "v1", "kind": "PodList",
                        "metadata": {"resourceVersion": "5"}, "items": pods}),
            )
        } else if method == "POST" && parts.uri.path().ends_with("/eviction") {
            let pod = parts
                .uri
                .path()
                .trim_end_matches("/eviction")
                .rsplit('/')
                .next()
                .unwrap_or("");
            let script = script.lock().unwrap();
            if script.throttled_evictions.iter().any(|p| p == pod) {
                // As filters/priority-and-fairness.go answers, with http.Error.
                let response = Response::builder()
                    .status(StatusCode::TOO_MANY_REQUESTS)
                    .header("content-type", "text/plain; charset=utf-8")
                    .header("retry-after", "1")
                    .body(Body::from(
                        b"Too many requests, please try again later.\n".to_vec(),
                    ))
                    .expect("response");
                respond.send_response(response);
                continue;
            }
            match script.eviction_errors.get(pod) {
                Some((code, message)) => {
                    let mut body = status(*code, "InternalError");
                    body["message"] = json!(message);
                    json_response(StatusCode::from_u16(*code).unwrap(), &body)
                }
                None => json_response(StatusCode::CREATED, &status(201, "Created")),
            }
        } else if method == "GET" && path.starts_with("/api/v1/nodes") {
            let node = node_now.lock().unwrap().clone();
            json_response(
                StatusCode::OK,
                &json!({"apiVersion": "v1", "kind": "NodeList",
                        "metadata": {"resourceVersion": "10"}, "items": [node]}),
            )
        } else if entry.is_node_patch() {
            let conditional = body.contains("resourceVersion");
            let mut script = script.lock().unwrap();
            if entry.writes_state() && conditional && script.conflict_on_state_write {
                script.conflict_on_state_write = false;
                json_response(StatusCode::CONFLICT, &status(409, "Conflict"))
            } else {
                // Older than what the cache holds: the shell does not wait for the cache.
                let mut node = serde_json::to_value(&*node_now.lock().unwrap()).unwrap();
                node["metadata"]["resourceVersion"] = json!("1");
                json_response(StatusCode::OK, &node)
            }
        } else if method == "POST" {
            let mut object: Value = serde_json::from_str(&body).unwrap_or(json!({}));
            object["metadata"]["resourceVersion"] = json!("1");
            json_response(StatusCode::CREATED, &object)
        } else {
            json_response(StatusCode::NOT_FOUND, &status(404, "NotFound"))
        };
        respond.send_response(response);
    }
}

impl Fake {
    fn new(config: Config, node: Node, vmis: Vec<VirtualMachineInstance>) -> Fake {
        Fake::fenced(config, node, vmis, None)
    }

    fn fenced(
        config: Config,
        node: Node,
        vmis: Vec<VirtualMachineInstance>,
        fence: Option<fence::Fence>,
    ) -> Fake {
        let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let client = Client::new(service, "default");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let script = Arc::new(Mutex::new(Script::default()));
        let node_now = Arc::new(Mutex::new(node.clone()));
        tokio::spawn(serve(handle, seen.clone(), script.clone(), node_now));

        let (nodes, mut node_writer) = reflector::store::<CachedNode>();
        node_writer.apply_watcher_event(&watcher::Event::Apply(cached(node)));
        let (vmi_store, mut vmi_writer) = reflector::store::<CachedVmi>();
        for v in vmis {
            vmi_writer.apply_watcher_event(&watcher::Event::Apply(v.into()));
        }
        let (migrations, migration_writer) = reflector::store::<VirtualMachineInstanceMigration>();
        let (kubevirt, _) = reflector::store::<KubeVirt>();
        let vms = super::restarts::RestartingVms::filled([]);
        let (trigger, rx) = mpsc::unbounded_channel();
        let (report_tx, _) = tokio_watch::channel(HashMap::new());
        let ctx = Arc::new(Context {
            recorder: Recorder::new(
                client.clone(),
                Reporter {
                    controller: "vacate".into(),
                    instance: None,
                },
            ),
            client,
            config: Arc::new(config),
            metrics: Metrics::new(),
            stores: Stores {
                nodes,
                vms,
                vmis: vmi_store,
                migrations,
                kubevirt,
                pod_usage: super::usage::PodUsage::filled(&[]),
            },
            node_cache: watch::NodeFilter::default().cache(),
            pods: PodWatches::default(),
            trigger,
            ledger: Mutex::new(Ledger::default()),
            kept: Mutex::new(Kept::default()),
            report_tx,
            last_start: Mutex::new(None),
            prometheus: None,
            fence,
            rooms: Mutex::default(),
        });
        Fake {
            ctx,
            seen,
            script,
            nodes: node_writer,
            vmis: vmi_writer,
            migrations: migration_writer,
            _rx: rx,
        }
    }

    /// Requests seen so far, watches left out.
    fn seen(&self) -> Vec<Seen> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|s| !s.path.contains("watch=true"))
            .cloned()
            .collect()
    }

    /// The state annotation of the last state write.
    fn last_state(&self) -> DrainState {
        let seen = self.seen();
        let write = seen
            .iter()
            .rev()
            .find(|s| s.writes_state())
            .expect("a state write");
        let patch: Value = serde_json::from_str(&write.body).unwrap();
        let text = patch["metadata"]["annotations"]["vacate.io/state"]
            .as_str()
            .expect("state text");
        serde_json::from_str(text).expect("state JSON")
    }
}

fn config() -> Config {
    let mut config = Config::default();
    config.fleet.capacity_check = false;
    config
}

fn requested() -> Node {
    node(json!({"vacate.io/maintenance": "true"}), json!({}), false)
}

/// The requested node, cordoned, holding `state`.
fn draining(state: &DrainState) -> Node {
    node(
        json!({"vacate.io/maintenance": "true"}),
        json!({"vacate.io/state": state.to_json()}),
        true,
    )
}

#[tokio::test]
async fn the_intent_is_written_before_anything_is_done() {
    let fake = Fake::new(config(), requested(), vec![vmi("vm-0"), vmi("vm-1")]);
    let next = fake.ctx.reconcile(NODE).await.expect("reconcile");
    assert!(next.is_some());
    let seen = fake.seen();
    let first_write = seen
        .iter()
        .position(|s| s.method != "GET")
        .expect("a write");
    assert!(
        seen[first_write].writes_state()
            && seen[first_write]
                .body
                .contains("\"resourceVersion\":\"10\""),
        "the first write is the state, conditional on the snapshot's version: {seen:#?}"
    );
    // The cordon goes out in the same request: state and cordon together or neither.
    assert!(seen[first_write].cordons(), "{seen:#?}");
    assert_eq!(seen.iter().filter(|s| s.cordons()).count(), 1, "{seen:#?}");
    let create = seen
        .iter()
        .position(Seen::creates_migration)
        .expect("a migration");
    assert!(first_write < create, "{seen:#?}");
    assert_eq!(seen.iter().filter(|s| s.creates_migration()).count(), 2);
    assert_eq!(fake.last_state().phase, Phase::Migrating);
}

#[tokio::test]
async fn a_conflicting_state_write_plans_again_and_does_nothing() {
    let fake = Fake::new(config(), requested(), vec![vmi("vm-0")]);
    fake.script.lock().unwrap().conflict_on_state_write = true;
    let next = fake.ctx.reconcile(NODE).await.expect("reconcile");
    assert_eq!(next, Some(Duration::from_millis(200)));
    let seen = fake.seen();
    let writes: Vec<&Seen> = seen.iter().filter(|s| s.method != "GET").collect();
    assert_eq!(writes.len(), 1, "only the refused state write: {seen:#?}");
    assert!(writes[0].writes_state());
    assert!(fake.ctx.report_tx.borrow().get(NODE).is_none());

    // The next look (fresh data) goes ahead.
    fake.ctx.reconcile(NODE).await.expect("reconcile");
    assert!(fake.seen().iter().any(Seen::creates_migration));
}

#[tokio::test]
async fn migrations_not_yet_in_the_cache_hold_their_slots() {
    let mut fake = Fake::new(
        config(),
        requested(),
        vec![vmi("vm-0"), vmi("vm-1"), vmi("vm-2")],
    );
    fake.ctx.reconcile(NODE).await.expect("reconcile");
    assert_eq!(
        fake.seen().iter().filter(|s| s.creates_migration()).count(),
        2,
        "two slots on the node"
    );
    // The node as written (cordoned, with the state), but no migration in the watch cache yet.
    let state = fake.last_state();
    let written = draining(&state);
    fake.nodes
        .apply_watcher_event(&watcher::Event::Apply(cached(written)));
    fake.seen.lock().unwrap().clear();
    fake.ctx.reconcile(NODE).await.expect("reconcile");
    let seen = fake.seen();
    assert!(
        !seen.iter().any(Seen::creates_migration),
        "the migrations created a moment ago still count: {seen:#?}"
    );
    let report = fake.ctx.report_tx.borrow()[NODE].clone();
    assert_eq!(report.phase, Phase::Migrating);
}

/// A migration that finished while others still run changes only what the next look finds
/// again: the shell keeps the new state instead of writing it, and the next look starts
/// from the kept state (the migration is counted once, not at every look).
#[tokio::test]
async fn finished_migrations_are_kept_until_the_next_write() {
    let mut fake = Fake::new(config(), requested(), vec![vmi("vm-0"), vmi("vm-1")]);
    fake.ctx.reconcile(NODE).await.expect("reconcile");
    let state = fake.last_state();
    let written = draining(&state);
    fake.nodes
        .apply_watcher_event(&watcher::Event::Apply(cached(written)));
    // The migrations as created; vm-0's has succeeded and the VMI runs elsewhere now.
    for created in fake.seen().iter().filter(|s| s.creates_migration()) {
        let mut m: VirtualMachineInstanceMigration = serde_json::from_str(&created.body).unwrap();
        m.metadata.namespace = Some("vms".into());
        if m.spec.vmi_name == "vm-0" {
            m.status = Some(serde_json::from_value(json!({"phase": "Succeeded"})).unwrap());
        }
        fake.migrations
            .apply_watcher_event(&watcher::Event::Apply(m));
    }
    fake.vmis
        .apply_watcher_event(&watcher::Event::Delete(vmi("vm-0").into()));
    fake.seen.lock().unwrap().clear();
    for _ in 0..3 {
        fake.ctx.reconcile(NODE).await.expect("reconcile");
    }
    let seen = fake.seen();
    assert!(
        !seen.iter().any(Seen::is_node_patch),
        "nothing another reader needs changed: {seen:#?}"
    );
    let report = fake.ctx.report_tx.borrow()[NODE].clone();
    let kept = report.state.expect("a state");
    assert_eq!(kept.vmis["vms/vm-0"].outcome, VmiOutcome::Migrated);
    assert!(
        fake.ctx
            .metrics
            .render()
            .contains("vacate_migrations_total{result=\"succeeded\"} 1\n"),
        "counted once"
    );

    // Someone else writes the annotation (another replica): the kept state is void and the
    // next look starts from what the node holds.
    let mut theirs = state.clone();
    theirs.waiting_for = Some("written by another replica".into());
    let rewritten = draining(&theirs);
    fake.nodes
        .apply_watcher_event(&watcher::Event::Apply(cached(rewritten)));
    fake.ctx.reconcile(NODE).await.expect("reconcile");
    assert!(
        fake.ctx
            .metrics
            .render()
            .contains("vacate_migrations_total{result=\"succeeded\"} 2\n"),
        "found again from the annotation"
    );
}

/// The node's own changes of a plan go out with its state in one request: whoever sees the
/// Drained phase sees the drained label too.
#[tokio::test]
async fn the_drained_phase_and_label_are_one_request() {
    let fake = Fake::new(config(), requested(), vec![vmi("vm-0")]);
    fake.ctx.reconcile(NODE).await.expect("reconcile");
    let mut state = fake.last_state();
    state.vmis.get_mut("vms/vm-0").unwrap().outcome = VmiOutcome::Migrated;
    let written = draining(&state);
    let fake = Fake::new(config(), written, vec![]);
    fake.ctx.reconcile(NODE).await.expect("reconcile");
    let seen = fake.seen();
    let patches: Vec<&Seen> = seen.iter().filter(|s| s.is_node_patch()).collect();
    assert_eq!(patches.len(), 1, "{patches:#?}");
    assert!(patches[0].writes_state() && patches[0].body.contains("vacate.io/drained"));
    assert_eq!(fake.last_state().phase, Phase::Drained);
}

/// A replica whose lease, as its watch last saw it, has run out (it was frozen past it, or
/// another replica took over) writes nothing, and says why.
#[tokio::test]
async fn a_replica_whose_lease_ran_out_writes_nothing() {
    use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
    let lease = |renewed: chrono::DateTime<Utc>| Lease {
        metadata: kube::api::ObjectMeta {
            name: Some("vacate".into()),
            namespace: Some("vacate-system".into()),
            ..Default::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some("me".into()),
            renew_time: Some(fence::tests::micro_time(renewed)),
            lease_duration_seconds: Some(15),
            ..Default::default()
        }),
    };
    let (store, mut writer) = reflector::store::<Lease>();
    writer.apply_watcher_event(&watcher::Event::Apply(lease(
        Utc::now() - chrono::Duration::seconds(20),
    )));
    let fence = fence::Fence::with_store(store, "vacate-system", "vacate", "me");
    let fake = Fake::fenced(config(), requested(), vec![vmi("vm-0")], Some(fence));
    let error = fake.ctx.reconcile(NODE).await.expect_err("fenced");
    assert!(
        matches!(error, Error::Fenced(ref why) if why.contains("expired")),
        "{error}"
    );
    let seen = fake.seen();
    assert!(
        seen.iter().all(|s| s.method == "GET"),
        "nothing written: {seen:#?}"
    );

    // Renewed: the same replica acts.
    writer.apply_watcher_event(&watcher::Event::Apply(lease(Utc::now())));
    fake.ctx.reconcile(NODE).await.expect("reconcile");
    assert!(fake.seen().iter().any(Seen::writes_state));
}

/// A plan takes a while to carry out, and the lease may be lost in the middle of it (another
/// replica took it while this one was frozen, or a renewal failed): the rest of the plan is
/// not sent, the Event announcing the pods evicted included.
#[tokio::test]
async fn a_lease_lost_in_the_middle_of_a_plan_stops_its_remaining_writes() {
    use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
    let lease = |holder: &str| Lease {
        metadata: kube::api::ObjectMeta {
            name: Some("vacate".into()),
            namespace: Some("vacate-system".into()),
            ..Default::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(holder.into()),
            renew_time: Some(fence::tests::micro_time(Utc::now())),
            lease_duration_seconds: Some(15),
            ..Default::default()
        }),
    };
    let (store, mut writer) = reflector::store::<Lease>();
    writer.apply_watcher_event(&watcher::Event::Apply(lease("me")));
    let fence = fence::Fence::with_store(store, "vacate-system", "vacate", "me");
    let fake = Fake::fenced(config(), requested(), vec![], Some(fence));
    {
        let mut script = fake.script.lock().unwrap();
        script.pods = vec![pod("a"), pod("b")];
        // The other replica takes the lease while the first eviction is on its way.
        script.on_request = Some(Box::new(move |seen: &Seen| {
            if seen.method == "POST" && seen.path.contains("/pods/a/eviction") {
                writer.apply_watcher_event(&watcher::Event::Apply(lease("other")));
            }
        }));
    }
    let error = fake.ctx.reconcile(NODE).await.expect_err("fenced");
    assert!(matches!(error, Error::Fenced(_)), "{error}");
    let seen = fake.seen();
    let lost = seen
        .iter()
        .position(|s| s.method == "POST" && s.path.contains("/pods/a/eviction"))
        .expect("the first eviction was sent");
    let after: Vec<&Seen> = seen[lost + 1..]
        .iter()
        .filter(|s| s.method != "GET")
        .collect();
    assert!(
        after.is_empty(),
        "written after the lease was lost: {after:#?}"
    );
}

fn pod(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "namespace": "apps", "uid": format!("uid-{name}"),
                        "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                                             "name": "web", "uid": "rs", "controller": true}]},
           "spec": {"nodeName": NODE, "containers": []},
           "status": {"phase": "Running"}})
}

fn evictions(seen: &[Seen]) -> Vec<String> {
    seen.iter()
        .map(|s| s.path.split('?').next().unwrap_or_default())
        .filter(|path| path.ends_with("/eviction"))
        .map(|path| {
            path.trim_end_matches("/eviction")
                .rsplit('/')
                .next()
                .unwrap()
                .to_string()
        })
        .collect()
}

#[tokio::test]
async fn one_failing_action_does_not_hold_up_the_others() {
    let fake = Fake::new(config(), requested(), vec![]);
    {
        let mut script = fake.script.lock().unwrap();
        script.pods = vec![pod("a"), pod("b")];
        script
            .eviction_errors
            .insert("a".into(), (500, "etcdserver: request timed out".into()));
    }
    let result = fake.ctx.reconcile(NODE).await;
    assert!(result.is_err(), "the failure is reported: {result:?}");
    assert_eq!(evictions(&fake.seen()), vec!["a", "b"]);
    let report = fake.ctx.report_tx.borrow()[NODE].clone();
    assert_eq!(report.phase, Phase::Evicting);
}

#[tokio::test]
async fn a_pod_under_two_disruption_budgets_is_a_rejection_shown_to_the_user() {
    let fake = Fake::new(config(), requested(), vec![]);
    {
        let mut script = fake.script.lock().unwrap();
        script.pods = vec![pod("a")];
        script.eviction_errors.insert(
            "a".into(),
            (
                500,
                "This pod has more than one PodDisruptionBudget, which the eviction subresource does not support.".into(),
            ),
        );
    }
    fake.ctx
        .reconcile(NODE)
        .await
        .expect("not an error: a rejection");
    let state = fake.last_state();
    let blocked = state.blocked.expect("the drain says what blocks it");
    assert_eq!(blocked.reason, BlockReason::EvictionRejected);
    assert!(
        blocked
            .message
            .contains("more than one PodDisruptionBudget")
    );
}

/// A draining node's pod watch starts when its wake-up is queued, before its turn in the
/// serial reconciliation; a node without a drain under way gets none there.
#[tokio::test]
async fn a_draining_nodes_pod_watch_starts_before_its_reconciliation() {
    let idle = Fake::new(config(), node(json!({}), json!({}), false), vec![]);
    assert_eq!(
        idle.ctx.nodes_to_wake(Wake::Node(NODE.into())).len(),
        1,
        "the node is still queued"
    );
    assert!(!idle.ctx.pods.watching(NODE));
    let pending = Fake::new(config(), requested(), vec![]);
    assert_eq!(pending.ctx.nodes_to_wake(Wake::Node(NODE.into())).len(), 1);
    assert!(!pending.ctx.pods.watching(NODE), "not draining yet");

    let mut state = DrainState::new(Utc::now(), true, 1);
    state.set_phase(Phase::Migrating, Utc::now());
    let fake = Fake::new(config(), draining(&state), vec![]);
    assert_eq!(fake.ctx.nodes_to_wake(Wake::Node(NODE.into())).len(), 1);
    assert!(fake.ctx.pods.watching(NODE));
    let listed = || {
        fake.seen().iter().any(|s| {
            s.method == "GET"
                && s.path.starts_with("/api/v1/pods")
                && s.path.contains("spec.nodeName%3Dworker-1")
        })
    };
    for _ in 0..100 {
        if listed() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(listed(), "{:?}", fake.seen());
    assert!(
        !fake.seen().iter().any(Seen::is_node_patch),
        "no reconciliation ran"
    );
}

/// A node whose drain waits for the fleet's limits reads no pods and holds no pod watch,
/// however many such nodes there are; a node that may start reads them.
#[tokio::test]
async fn a_node_held_back_by_the_fleet_limits_holds_no_pod_watch() {
    let lists_pods = |fake: &Fake| {
        fake.seen()
            .iter()
            .any(|s| s.method == "GET" && s.path.starts_with("/api/v1/pods"))
    };
    // `fleet.max_draining` is 1 and worker-2 drains.
    let mut state = DrainState::new(Utc::now(), true, 1);
    state.set_phase(Phase::Migrating, Utc::now());
    let mut other = draining(&state);
    other.metadata.name = Some("worker-2".into());
    let mut fake = Fake::new(config(), requested(), vec![]);
    fake.nodes
        .apply_watcher_event(&watcher::Event::Apply(cached(other)));
    fake.ctx.reconcile(NODE).await.expect("reconcile");
    assert_eq!(fake.last_state().phase, Phase::Pending);
    assert!(!lists_pods(&fake), "{:?}", fake.seen());
    assert!(!fake.ctx.pods.watching(NODE));

    let free = Fake::new(config(), requested(), vec![]);
    free.ctx.reconcile(NODE).await.expect("reconcile");
    assert_ne!(free.last_state().phase, Phase::Pending);
    assert!(lists_pods(&free), "{:?}", free.seen());
}

/// The virt-launcher pod of VMI `vmi()` named `name`.
fn launcher_pod(vmi: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": format!("virt-launcher-{vmi}-abcde"), "namespace": "vms",
                        "uid": format!("uid-launcher-{vmi}"),
                        "labels": {"kubevirt.io": "virt-launcher",
                                   "kubevirt.io/created-by": format!("uid-{vmi}")},
                        "ownerReferences": [{"apiVersion": "kubevirt.io/v1",
                                             "kind": "VirtualMachineInstance", "name": vmi,
                                             "uid": format!("uid-{vmi}"), "controller": true}]},
           "spec": {"nodeName": NODE, "containers": []},
           "status": {"phase": "Running"}})
}

/// KubeVirt registers its eviction webhook with failurePolicy Fail; a cluster where it was
/// changed to Ignore (or removed) lets the eviction of a virt-launcher pod through while
/// virt-api is down, which deletes the pod and kills the VM. The scripted API lets every
/// eviction through, as then: vacate asks with a dry run, sees it let through, and does not
/// evict.
#[tokio::test]
async fn a_launcher_pod_is_not_evicted_while_kubevirts_webhook_lets_evictions_through() {
    let mut external = vmi("vm-0");
    external.spec.eviction_strategy = Some(kubevirt_api::EvictionStrategy::External);
    let fake = Fake::new(config(), requested(), vec![external]);
    fake.script.lock().unwrap().pods = vec![launcher_pod("vm-0")];
    let result = fake.ctx.reconcile(NODE).await;
    let error = result.expect_err("the webhook's absence is an error retried later");
    assert!(
        error
            .to_string()
            .contains("did not answer a dry-run eviction"),
        "{error}"
    );
    let seen = fake.seen();
    let evictions: Vec<&Seen> = seen
        .iter()
        .filter(|s| {
            s.path
                .split('?')
                .next()
                .unwrap_or("")
                .ends_with("/eviction")
        })
        .collect();
    assert_eq!(evictions.len(), 1, "{evictions:#?}");
    assert!(
        evictions[0].path.contains("dryRun=All"),
        "only a dry run: {evictions:#?}"
    );
}

/// While virt-api is down, the API server refuses a virt-launcher eviction because KubeVirt's
/// webhook (failurePolicy Fail) cannot be called: KubeVirt is unavailable, the eviction is
/// tried again later, and nothing is taken as a refusal (no VM restarted for it).
#[tokio::test]
async fn a_launcher_eviction_kubevirts_webhook_could_not_answer_is_tried_again() {
    let mut external = vmi("vm-0");
    external.spec.eviction_strategy = Some(kubevirt_api::EvictionStrategy::External);
    let fake = Fake::new(config(), requested(), vec![external]);
    {
        let mut script = fake.script.lock().unwrap();
        script.pods = vec![launcher_pod("vm-0")];
        script.eviction_errors.insert(
            "virt-launcher-vm-0-abcde".into(),
            (
                500,
                "Internal error occurred: failed calling webhook \
                 \"virt-launcher-eviction-interceptor.kubevirt.io\": failed to call webhook: \
                 Post \"https://virt-api.kubevirt.svc:443/pod-eviction-validate\": dial tcp: \
                 connect: connection refused"
                    .into(),
            ),
        );
    }
    let error = fake
        .ctx
        .reconcile(NODE)
        .await
        .expect_err("KubeVirt being unavailable is an error retried later");
    assert_eq!(error.metric_label(), "kubevirt_unavailable", "{error}");
    let state = fake.last_state();
    let record = &state.vmis["vms/vm-0"];
    assert!(!record.eviction_refused, "{record:?}");
}

#[tokio::test]
async fn a_request_throttled_by_the_api_server_is_tried_again_not_taken_as_a_refusal() {
    let fake = Fake::new(config(), requested(), vec![]);
    {
        let mut script = fake.script.lock().unwrap();
        script.pods = vec![pod("a"), pod("b")];
        script.throttled_evictions.push("a".into());
    }
    let result = fake.ctx.reconcile(NODE).await;
    let error = result.expect_err("a throttled request is an error, retried after the back-off");
    assert_eq!(error.metric_label(), "throttled");
    assert!(error.to_string().contains("throttled"), "{error}");
    // The other eviction went on; no PodDisruptionBudget is blamed for the 429.
    assert_eq!(evictions(&fake.seen()), vec!["a", "b"]);
    let state = fake.last_state();
    assert_eq!(state.blocked, None, "{state:#?}");
    assert_eq!(
        state.pods.get("apps/a").map(|r| r.retries),
        Some(0),
        "{state:#?}"
    );
    let metrics = fake.ctx.metrics.render();
    assert!(
        metrics.contains("\nvacate_eviction_retries_total{reason=\"pdb\"} 0\n"),
        "{metrics}"
    );
}

#[test]
fn retries_after_an_error_are_spread_out() {
    let waits: Vec<Duration> = (0..20).map(|_| error_backoff()).collect();
    for wait in &waits {
        assert!(
            *wait >= ERROR_BACKOFF / 2 && *wait < ERROR_BACKOFF * 3 / 2,
            "{wait:?}"
        );
    }
    assert!(waits.iter().any(|w| *w != waits[0]), "{waits:?}");
}

/// The fleet's limits get a node's request label and the labels the pools' selectors read,
/// and no others (the start gate copies every node of the fleet), and a pool selects the
/// node all the same.
#[test]
fn a_fleet_node_keeps_the_labels_the_limits_read() {
    let config = Config::from_toml_and_env(
        "[[fleet.pools]]\nname = \"gpu\"\nselector = \"pool=gpu,!frozen\"\nmax_draining = 1\n",
        Vec::<(String, String)>::new(),
    )
    .expect("config");
    let labels = json!({"vacate.io/maintenance": "true", "pool": "gpu", "zone": "a",
                        "kubernetes.io/hostname": NODE});
    let full = cached(node(labels, json!({}), false));
    let fleet = gate::fleet_node(&full, &config);
    assert_eq!(
        fleet.labels,
        std::collections::BTreeMap::from([
            ("pool".to_string(), "gpu".to_string()),
            ("vacate.io/maintenance".to_string(), "true".to_string()),
        ])
    );
    assert_eq!(fleet.request_value.as_deref(), Some("true"));
    let pool = &config.fleet.pools[0].selector;
    assert!(pool.matches(&fleet.labels) && pool.matches(full.labels()));
    // Without pools only the request label is kept.
    let fleet = gate::fleet_node(&full, &self::config());
    assert_eq!(
        fleet.labels.keys().collect::<Vec<_>>(),
        ["vacate.io/maintenance"]
    );
}
