//! The controllers, driven by watches of the API server through kube-runtime, and the
//! informer caches (reflector stores) they share, as virt-controller shares its informers.

pub mod evacuation;
pub mod migration;
pub mod nodes;
pub mod vm;
pub mod vmi;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Client, Resource};
use kubevirt_api::labels::{
    APP_LABEL, CREATED_BY_LABEL, KUBEVIRT_NAME, KUBEVIRT_NAMESPACE, VIRT_LAUNCHER,
};
use kubevirt_api::{
    KubeVirt, MigrationPhase, VirtualMachineInstance, VirtualMachineInstanceMigration,
};
use serde::de::DeserializeOwned;

use crate::error::{Error, Result};
use crate::settings::{CliDefaults, ClusterConfig};

/// Shared state of all controllers and webhooks.
pub struct Context {
    pub client: Client,
    /// The same cluster as virt-controller's service account (see
    /// `labels::VIRT_CONTROLLER_USER`): for migrations with a priority.
    pub virt_controller_client: Client,
    cli: CliDefaults,
    pub vmis: Store<VirtualMachineInstance>,
    /// Pods labelled `kubevirt.io=virt-launcher`.
    pub launcher_pods: Store<Pod>,
    /// Those pods by the UID of their VMI (label `kubevirt.io/created-by`), so that finding
    /// a VMI's pods costs the same whatever the number of pods in the cluster.
    pub pods_by_vmi: PodIndex,
    pub migrations: Store<VirtualMachineInstanceMigration>,
    pub kubevirt: Store<KubeVirt>,
    pub pvcs: Store<PersistentVolumeClaim>,
    /// Pods created but maybe not yet in the cache, by owner key (KubeVirt's expectations).
    pub pod_expectations: Expectations,
    /// Migrations created by the evacuation controller and maybe not yet in the cache, by VMI key.
    pub migration_expectations: Expectations,
    /// Launcher pods seen terminating gracefully (deletion timestamp set), by UID: once such a
    /// pod is gone its guest was shut down, not crashed. Recorded when the event is
    /// reported by the watch, so a later read of a cache without the pod still knows.
    pub terminating_pods: Arc<Mutex<HashSet<String>>>,
    /// Migrations this simulator moved past Pending and has not yet seen finish, with their
    /// source node: counts against the limits even before the cache shows the new phase.
    pub started_migrations: tokio::sync::Mutex<HashMap<String, String>>,
    /// When this simulator moved each unfinished migration into each phase, on a clock of
    /// its own: the API's timestamps have whole seconds only.
    pub phase_clocks: PhaseClocks,
    /// When this process wrote `abortRequested` into the VMI's migration state, by migration
    /// UID: the abort resolves a fixed (simulated) time later.
    pub abort_requests: Mutex<HashMap<String, Instant>>,
    /// The versions of VMIs this process has written over (see [`WrittenVersions`]).
    pub vmi_writes: WrittenVersions,
    /// Consecutive failed reconciles per object, for the back-off of [`retry_after_error`].
    pub retries: Retries,
}

/// The launcher pods of each VMI (by UID), as object references into the pod cache.
///
/// Filled from the pod watch's events; a reference whose pod the cache no longer holds (or
/// holds for another VMI) is dropped when read.
#[derive(Clone, Default)]
pub struct PodIndex(Arc<Mutex<HashMap<String, HashSet<ObjectRef<Pod>>>>>);

impl PodIndex {
    fn observe(&self, pod: &Pod, deleted: bool) {
        let Some(vmi_uid) = pod
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(CREATED_BY_LABEL))
        else {
            return;
        };
        let Ok(mut map) = self.0.lock() else {
            return;
        };
        let pod_ref = ObjectRef::from_obj(pod);
        if deleted {
            if let Some(set) = map.get_mut(vmi_uid) {
                set.remove(&pod_ref);
                if set.is_empty() {
                    map.remove(vmi_uid);
                }
            }
        } else {
            map.entry(vmi_uid.clone()).or_default().insert(pod_ref);
        }
    }

    /// The pods of the VMI with this UID that `store` holds.
    fn pods(&self, store: &Store<Pod>, vmi_uid: &str) -> Vec<Arc<Pod>> {
        let Ok(mut map) = self.0.lock() else {
            return Vec::new();
        };
        let Some(refs) = map.get_mut(vmi_uid) else {
            return Vec::new();
        };
        let mut pods = Vec::with_capacity(refs.len());
        refs.retain(|r| match store.get(r) {
            Some(pod)
                if pod
                    .metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(CREATED_BY_LABEL))
                    .map(String::as_str)
                    == Some(vmi_uid) =>
            {
                pods.push(pod);
                true
            }
            _ => false,
        });
        if refs.is_empty() {
            map.remove(vmi_uid);
        }
        pods
    }
}

/// The resourceVersions of VMIs this process wrote over: a write conditional on version V
/// that succeeded means the cache will show something newer than V. Until it does, a
/// decision taken on V is taken on a stale cache and its write would be refused (409): such
/// writes are not sent at all ([`Error::StaleCache`]), and the watch event of the newer
/// version wakes the controller again. Without this, every event of a lagging watch made each
/// controller send a write bound to fail, hundreds per second at a few thousand VMIs.
#[derive(Default)]
pub struct WrittenVersions(Mutex<HashMap<String, String>>);

impl WrittenVersions {
    /// Bound on the entries kept (VMIs deleted right after a write leave theirs behind).
    const MAX: usize = 100_000;

    fn wrote_over(&self, key: &str, read: &str, written: Option<&str>) {
        if written == Some(read) {
            // Nothing changed (a no-op patch): the version read stays current.
            return;
        }
        if let Ok(mut map) = self.0.lock() {
            if map.len() >= Self::MAX {
                map.clear();
            }
            map.insert(key.to_string(), read.to_string());
        }
    }

    /// Whether version `rv` of the VMI `key` is known to be superseded by a write of ours.
    pub fn superseded(&self, key: &str, rv: &str) -> bool {
        let Ok(mut map) = self.0.lock() else {
            return false;
        };
        match map.get(key) {
            Some(old) if old == rv => true,
            Some(_) => {
                // The cache moved past the version written over.
                map.remove(key);
                false
            }
            None => false,
        }
    }
}

/// Consecutive failed reconciles per object: the retry delay doubles with each (as
/// client-go's per-item exponential rate limiter), and starts over once an object has not
/// failed for a while.
#[derive(Default)]
pub struct Retries(Mutex<HashMap<String, (u32, Instant)>>);

impl Retries {
    /// First retry delay.
    const BASE: Duration = Duration::from_millis(200);
    /// Longest retry delay.
    const MAX_DELAY: Duration = Duration::from_secs(10);
    /// A failure this long after the previous one counts as a first failure again.
    const FORGET: Duration = Duration::from_secs(30);

    /// The delay before retrying `key` after one more failure.
    pub fn next_delay(&self, key: &str) -> Duration {
        let Ok(mut map) = self.0.lock() else {
            return Self::BASE;
        };
        if map.len() >= 100_000 {
            map.retain(|_, (_, at)| at.elapsed() < Self::FORGET);
        }
        let now = Instant::now();
        let entry = map.entry(key.to_string()).or_insert((0, now));
        if now.duration_since(entry.1) > Self::FORGET {
            entry.0 = 0;
        }
        entry.1 = now;
        let delay = Self::BASE.saturating_mul(2u32.saturating_pow(entry.0.min(16)));
        entry.0 += 1;
        let delay = delay.min(Self::MAX_DELAY);
        // Up to a quarter more, so that objects that failed together do not retry together.
        let jitter = rand::random::<f64>() * 0.25;
        delay.mul_f64(1.0 + jitter)
    }
}

/// The instant at which this process moved a migration (by UID) into a phase. Timers that
/// simulate work (target preparation, the memory copy) run from these, to the fraction of a
/// second; the API's timestamps, which Kubernetes serializes in whole seconds, only serve
/// when the simulator restarted in between and so has no clock for the migration.
#[derive(Default)]
pub struct PhaseClocks(Mutex<HashMap<String, HashMap<MigrationPhase, Instant>>>);

impl PhaseClocks {
    /// Records that the migration entered `phase` now, unless an earlier entry is recorded
    /// (a retried reconcile enters the same phase again).
    pub fn entered(&self, uid: &str, phase: MigrationPhase) {
        if let Ok(mut map) = self.0.lock() {
            map.entry(uid.to_string())
                .or_default()
                .entry(phase)
                .or_insert_with(Instant::now);
        }
    }

    /// Time since the migration entered `phase`, if this process saw it do so.
    pub fn in_phase_for(&self, uid: &str, phase: MigrationPhase) -> Option<Duration> {
        let map = self.0.lock().ok()?;
        map.get(uid)?.get(&phase).map(Instant::elapsed)
    }

    /// Drops the clocks of a finished migration.
    pub fn forget(&self, uid: &str) {
        if let Ok(mut map) = self.0.lock() {
            map.remove(uid);
        }
    }
}

/// Things created recently whose creation the cache may not show yet.
#[derive(Default)]
pub struct Expectations(Mutex<HashMap<String, Instant>>);

impl Expectations {
    /// How long an unobserved creation is waited for before it is assumed lost.
    const TTL: Duration = Duration::from_secs(30);

    pub fn expect(&self, key: &str) {
        if let Ok(mut map) = self.0.lock() {
            map.insert(key.to_string(), Instant::now());
        }
    }

    pub fn observed(&self, key: &str) {
        if let Ok(mut map) = self.0.lock() {
            map.remove(key);
        }
    }

    /// Whether a creation for `key` is still expected to show up.
    pub fn pending(&self, key: &str) -> bool {
        let Ok(mut map) = self.0.lock() else {
            return false;
        };
        match map.get(key) {
            Some(at) if at.elapsed() < Self::TTL => true,
            Some(_) => {
                map.remove(key);
                false
            }
            None => false,
        }
    }
}

/// A subscriber's stream of an informer's events: every object its watch reported (added,
/// changed or deleted), as of that event, sent once the cache holds the event's state.
pub type Subscription<K> = futures::channel::mpsc::UnboundedReceiver<Arc<K>>;

/// A shared informer: one watch whose cache is updated before any subscriber hears of a
/// change, so controllers triggered by it never read an older cache than the event that
/// woke them (as with client-go's shared informers).
fn shared_informer<K>(
    api: Api<K>,
    config: watcher::Config,
    subscribers: usize,
) -> (Store<K>, Vec<Subscription<K>>)
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone + Send + Sync,
{
    shared_informer_with(api, config, subscribers, |_: &K, _| {})
}

/// [`shared_informer`] that also shows every object, as of its watch event, to `observe`
/// (with `true` when the event is its deletion).
///
/// Subscribers get the event's object itself, through a channel of their own, as
/// client-go's event handlers do (KubeVirt's controllers enqueue from `addPod`,
/// `updatePod`, `deletePod`, ...). Not kube-runtime's `ReflectHandle`: it looks each event's
/// object up in the cache when the subscriber polls, and when the object is gone by then
/// (a pod deleted right after a change) it returns `Pending` without a wake-up, so that
/// subscriber hears of no further event (a target pod turning Ready) until something else
/// wakes the controller, such as a periodic re-check.
fn shared_informer_with<K>(
    api: Api<K>,
    config: watcher::Config,
    subscribers: usize,
    observe: impl Fn(&K, bool) + Send + Sync + 'static,
) -> (Store<K>, Vec<Subscription<K>>)
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone + Send + Sync,
{
    let (reader, writer) = reflector::store();
    let (senders, receivers): (Vec<_>, Vec<_>) = (0..subscribers)
        .map(|_| futures::channel::mpsc::unbounded())
        .unzip();
    let stream = reflector::reflector(writer, watcher(api, config)).default_backoff();
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        // Objects of a (re)list: the cache holds them only once the list is complete.
        let mut listed: Vec<Arc<K>> = Vec::new();
        while let Some(event) = stream.next().await {
            let ready: Vec<Arc<K>> = match event {
                Ok(watcher::Event::Apply(obj)) => {
                    observe(&obj, false);
                    vec![Arc::new(obj)]
                }
                Ok(watcher::Event::Delete(obj)) => {
                    observe(&obj, true);
                    vec![Arc::new(obj)]
                }
                Ok(watcher::Event::Init) => {
                    listed.clear();
                    Vec::new()
                }
                Ok(watcher::Event::InitApply(obj)) => {
                    observe(&obj, false);
                    listed.push(Arc::new(obj));
                    Vec::new()
                }
                Ok(watcher::Event::InitDone) => std::mem::take(&mut listed),
                Err(e) => {
                    tracing::debug!("watch error (retrying): {e}");
                    Vec::new()
                }
            };
            for obj in ready {
                for tx in &senders {
                    // A subscriber that is gone has stopped its controller; nothing to do.
                    let _ = tx.unbounded_send(obj.clone());
                }
            }
        }
    });
    (reader, receivers)
}

/// The trigger streams of the controllers, one per (informer, controller) pair.
pub struct Subscriptions {
    pub vmis_for_vmi: Subscription<VirtualMachineInstance>,
    pub vmis_for_vm: Subscription<VirtualMachineInstance>,
    pub vmis_for_migration: Subscription<VirtualMachineInstance>,
    pub vmis_for_evacuation: Subscription<VirtualMachineInstance>,
    pub pods_for_vmi: Subscription<Pod>,
    pub pods_for_migration: Subscription<Pod>,
    pub migrations_for_migration: Subscription<VirtualMachineInstanceMigration>,
    pub migrations_for_evacuation: Subscription<VirtualMachineInstanceMigration>,
    pub kubevirt_for_status: Subscription<KubeVirt>,
}

impl Context {
    /// Starts the shared informers and waits until they have listed everything once.
    pub async fn start(
        client: Client,
        virt_controller_client: Client,
        cli: CliDefaults,
    ) -> Result<(Context, Subscriptions)> {
        let launcher_selector = format!("{APP_LABEL}={VIRT_LAUNCHER}");
        let (vmis, mut vmi_subs) =
            shared_informer(Api::all(client.clone()), watcher::Config::default(), 4);
        // Graceful terminations are recorded as the watch reports them: kwok may remove the
        // pod before a controller reads the cache.
        let terminating_pods: Arc<Mutex<HashSet<String>>> = Arc::default();
        let seen = terminating_pods.clone();
        let pods_by_vmi = PodIndex::default();
        let index = pods_by_vmi.clone();
        let (launcher_pods, mut pod_subs) = shared_informer_with(
            Api::all(client.clone()),
            watcher::Config::default().labels(&launcher_selector),
            2,
            move |pod: &Pod, deleted| {
                index.observe(pod, deleted);
                if pod.metadata.deletion_timestamp.is_some()
                    && let (Some(uid), Ok(mut seen)) = (pod.metadata.uid.clone(), seen.lock())
                {
                    // Entries are taken when the VMI is final; bound what is never taken.
                    if seen.len() >= 10_000 {
                        seen.clear();
                    }
                    seen.insert(uid);
                }
            },
        );
        let (migrations, mut migration_subs) =
            shared_informer(Api::all(client.clone()), watcher::Config::default(), 2);
        let (kubevirt, mut kubevirt_subs) =
            shared_informer(Api::all(client.clone()), watcher::Config::default(), 1);
        let (pvcs, _) = shared_informer(Api::all(client.clone()), watcher::Config::default(), 0);
        let missing = || Error::Task("an informer refused a subscriber".into());
        let subscriptions = Subscriptions {
            vmis_for_evacuation: vmi_subs.pop().ok_or_else(missing)?,
            vmis_for_migration: vmi_subs.pop().ok_or_else(missing)?,
            vmis_for_vmi: vmi_subs.pop().ok_or_else(missing)?,
            vmis_for_vm: vmi_subs.pop().ok_or_else(missing)?,
            pods_for_migration: pod_subs.pop().ok_or_else(missing)?,
            pods_for_vmi: pod_subs.pop().ok_or_else(missing)?,
            migrations_for_evacuation: migration_subs.pop().ok_or_else(missing)?,
            migrations_for_migration: migration_subs.pop().ok_or_else(missing)?,
            kubevirt_for_status: kubevirt_subs.pop().ok_or_else(missing)?,
        };
        let ctx = Context {
            vmis,
            launcher_pods,
            pods_by_vmi,
            migrations,
            kubevirt,
            pvcs,
            client,
            virt_controller_client,
            cli,
            pod_expectations: Expectations::default(),
            terminating_pods,
            migration_expectations: Expectations::default(),
            started_migrations: tokio::sync::Mutex::new(HashMap::new()),
            phase_clocks: PhaseClocks::default(),
            abort_requests: Mutex::new(HashMap::new()),
            vmi_writes: WrittenVersions::default(),
            retries: Retries::default(),
        };
        let ready = async {
            ctx.vmis.wait_until_ready().await?;
            ctx.launcher_pods.wait_until_ready().await?;
            ctx.migrations.wait_until_ready().await?;
            ctx.kubevirt.wait_until_ready().await?;
            ctx.pvcs.wait_until_ready().await
        };
        tokio::time::timeout(Duration::from_secs(60), ready)
            .await
            .map_err(|_| Error::Timeout("the informer caches".into()))?
            .map_err(|e| Error::Task(e.to_string()))?;
        Ok((ctx, subscriptions))
    }

    /// The cluster configuration as of now (KubeVirt CR `kubevirt/kubevirt`, else any).
    pub fn config(&self) -> ClusterConfig {
        let all = self.kubevirt.state();
        let kv = all
            .iter()
            .find(|kv| {
                kv.metadata.name.as_deref() == Some(KUBEVIRT_NAME)
                    && kv.metadata.namespace.as_deref() == Some(KUBEVIRT_NAMESPACE)
            })
            .or_else(|| all.first());
        ClusterConfig::from_kubevirt(kv.map(|k| k.as_ref()), &self.cli)
    }

    pub fn vmi(&self, namespace: &str, name: &str) -> Option<Arc<VirtualMachineInstance>> {
        self.vmis.get(&ObjectRef::new(name).within(namespace))
    }

    pub fn pvc(&self, namespace: &str, name: &str) -> Option<PersistentVolumeClaim> {
        self.pvcs
            .get(&ObjectRef::new(name).within(namespace))
            .map(|p| (*p).clone())
    }

    /// Every virt-launcher pod of the VMI with this UID (source and target pods).
    /// `VMIActivePodsCount` (`pkg/controller/controller.go`): the VMI's pods that have not
    /// finished (phase neither `Succeeded` nor `Failed`).
    pub fn unfinished_pods_of_vmi(&self, vmi: &VirtualMachineInstance) -> usize {
        self.pods_of_vmi(vmi.metadata.uid.as_deref().unwrap_or_default())
            .iter()
            .filter(|p| !pod_finished(p))
            .count()
    }

    /// `CurrentVMIPod` (`pkg/controller/controller.go`): the most recently created pod of the
    /// VMI on its node (any pod of it while it has no node). Among pods created in the same
    /// second, one that has not finished.
    pub fn current_vmi_pod(&self, vmi: &VirtualMachineInstance) -> Option<Arc<Pod>> {
        let node = vmi.node_name();
        self.pods_of_vmi(vmi.metadata.uid.as_deref().unwrap_or_default())
            .into_iter()
            .filter(|p| node.is_none() || pod_node(p) == node)
            .max_by_key(|p| {
                (
                    p.metadata.creation_timestamp.as_ref().map(|t| t.0),
                    !pod_finished(p),
                )
            })
    }

    pub fn pods_of_vmi(&self, vmi_uid: &str) -> Vec<Arc<Pod>> {
        self.pods_by_vmi.pods(&self.launcher_pods, vmi_uid)
    }

    /// Migrations of a VMI (by namespace and VMI name).
    pub fn migrations_of_vmi(
        &self,
        namespace: &str,
        vmi_name: &str,
    ) -> Vec<Arc<VirtualMachineInstanceMigration>> {
        self.migrations
            .state()
            .into_iter()
            .filter(|m| {
                m.metadata.namespace.as_deref() == Some(namespace) && m.spec.vmi_name == vmi_name
            })
            .collect()
    }

    /// JSON merge patch of a VMI (the VMI has no status subresource: status goes in the same
    /// request). With `resource_version` the patch only applies to that version (409 otherwise).
    pub async fn patch_vmi(
        &self,
        namespace: &str,
        name: &str,
        resource_version: Option<&str>,
        mut patch: serde_json::Value,
    ) -> Result<VirtualMachineInstance> {
        let key = format!("{namespace}/{name}");
        if let Some(rv) = resource_version {
            if self.vmi_writes.superseded(&key, rv) {
                return Err(Error::StaleCache(key));
            }
            patch["metadata"]["resourceVersion"] = rv.into();
        }
        let api: Api<VirtualMachineInstance> = Api::namespaced(self.client.clone(), namespace);
        let written = api
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        if let Some(rv) = resource_version {
            self.vmi_writes
                .wrote_over(&key, rv, written.metadata.resource_version.as_deref());
        }
        Ok(written)
    }
}

/// A JSON merge patch value that replaces `old` by `new` as a whole (as KubeVirt's JSON
/// patches `replace` do): a merge patch only changes the fields it names, so every field of
/// `old` that `new` lacks (including those skipped when serialized, as `completed: false`)
/// is set to null, in nested objects too. Without this a new value keeps the old one's
/// leftovers.
pub fn replacing<T: serde::Serialize>(old: Option<&T>, new: &T) -> Result<serde_json::Value> {
    let new = serde_json::to_value(new)?;
    Ok(match old {
        Some(old) => null_removed(&serde_json::to_value(old)?, new),
        None => new,
    })
}

fn null_removed(old: &serde_json::Value, new: serde_json::Value) -> serde_json::Value {
    match (old, new) {
        (serde_json::Value::Object(old), serde_json::Value::Object(mut new)) => {
            for (key, value) in old {
                match new.remove(key) {
                    None => {
                        new.insert(key.clone(), serde_json::Value::Null);
                    }
                    Some(v) => {
                        new.insert(key.clone(), null_removed(value, v));
                    }
                }
            }
            serde_json::Value::Object(new)
        }
        (_, new) => new,
    }
}

/// What every controller does with a failed reconcile: log it and retry, after a delay that
/// doubles with each consecutive failure of the object (200 ms up to 10 s, with jitter), so
/// that an overloaded API server or a lagging watch is not met with a retry storm. Conflicts,
/// stale caches and vanished objects are routine (another writer was faster) and logged
/// quietly.
pub fn retry_after_error<K: Resource>(obj: Arc<K>, error: &Error, ctx: Arc<Context>) -> Action {
    let key = format!("{}:{}", std::any::type_name::<K>(), key_of(obj.as_ref()));
    let delay = ctx.retries.next_delay(&key);
    if error.is_conflict() || error.is_not_found() || matches!(error, Error::StaleCache(_)) {
        tracing::debug!("retrying in {delay:?} after: {error}");
    } else {
        tracing::warn!("reconcile failed, retrying in {delay:?}: {error}");
    }
    Action::requeue(delay)
}

/// Runs every controller until one of them stops.
pub async fn run_all(ctx: Arc<Context>, subs: Subscriptions) {
    tokio::select! {
        _ = vmi::run(ctx.clone(), subs.vmis_for_vmi, subs.pods_for_vmi) => tracing::error!("the VMI controller stopped"),
        _ = vm::run(ctx.clone(), subs.vmis_for_vm) => tracing::error!("the VM controller stopped"),
        _ = nodes::run(ctx.clone()) => tracing::error!("the node labeller stopped"),
        _ = migration::run(ctx.clone(), subs.migrations_for_migration, subs.pods_for_migration, subs.vmis_for_migration) => {
            tracing::error!("the migration controller stopped")
        }
        _ = evacuation::run(ctx.clone(), subs.vmis_for_evacuation, subs.migrations_for_evacuation) => {
            tracing::error!("the evacuation controller stopped")
        }
        _ = kubevirt_status(ctx.clone(), subs.kubevirt_for_status) => {
            tracing::error!("the KubeVirt CR status controller stopped")
        }
    }
}

/// Keeps the KubeVirt CR's `status.observedKubeVirtVersion` (and `targetKubeVirtVersion`) at
/// the release the simulator follows, which its annotation may change at run time.
async fn kubevirt_status(ctx: Arc<Context>, mut events: Subscription<KubeVirt>) {
    while let Some(kv) = events.next().await {
        if kv.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let release = ClusterConfig::from_kubevirt(Some(kv.as_ref()), &ctx.cli).release;
        let version = release.version();
        let status = kv.status.as_ref();
        if status.and_then(|s| s.observed_kube_virt_version.as_deref()) == Some(version)
            && status.and_then(|s| s.target_kube_virt_version.as_deref()) == Some(version)
        {
            continue;
        }
        let (Some(name), Some(namespace)) = (
            kv.metadata.name.as_deref(),
            kv.metadata.namespace.as_deref(),
        ) else {
            continue;
        };
        let api: Api<KubeVirt> = Api::namespaced(ctx.client.clone(), namespace);
        let patch = serde_json::json!({"status": {
            "observedKubeVirtVersion": version,
            "targetKubeVirtVersion": version,
        }});
        match api
            .patch_status(name, &PatchParams::default(), &Patch::Merge(patch))
            .await
        {
            Ok(_) => tracing::info!(release = %release, "KubeVirt CR reports {version}"),
            Err(e) => tracing::warn!("updating the KubeVirt CR's version failed: {e}"),
        }
    }
}

/// `namespace/name` of an object.
pub fn key_of<K: Resource>(obj: &K) -> String {
    format!(
        "{}/{}",
        obj.meta().namespace.as_deref().unwrap_or_default(),
        obj.meta().name.as_deref().unwrap_or_default()
    )
}

/// Whether a pod is being deleted or has terminated.
pub fn pod_is_down(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_some()
        || matches!(
            pod.status.as_ref().and_then(|s| s.phase.as_deref()),
            Some("Succeeded" | "Failed")
        )
}

/// Whether a pod has finished: phase `Succeeded` or `Failed`.
pub fn pod_finished(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

/// virt-launcher exited on its own (its guest migrated away, or a migration target whose
/// migration failed): the kubelet reports the pod `Succeeded`, its containers terminated with
/// exit code 0 (`Completed`), not ready. Nothing deletes the pod; it stays until its VMI goes
/// (garbage collector) or, with KubeVirt v1.9, until its migration is garbage-collected. A pod
/// already finished, terminating or gone is left alone.
pub async fn finish_launcher_pod(client: &Client, namespace: &str, name: &str) -> Result<()> {
    let api: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let Some(pod) = api.get_opt(name).await? else {
        return Ok(());
    };
    if pod_is_down(&pod) {
        return Ok(());
    }
    let now = kubevirt_api::common::now();
    let started = pod
        .status
        .as_ref()
        .and_then(|s| s.start_time.clone())
        .unwrap_or_else(|| now.clone());
    let statuses: Vec<serde_json::Value> = pod
        .spec
        .iter()
        .flat_map(|s| s.containers.iter())
        .map(|c| {
            serde_json::json!({
                "name": c.name,
                "image": c.image,
                "imageID": "",
                "ready": false,
                "restartCount": 0,
                "started": false,
                "state": {"terminated": {
                    "exitCode": 0, "reason": "Completed",
                    "startedAt": started, "finishedAt": now,
                }},
            })
        })
        .collect();
    let condition = |type_: &str| {
        serde_json::json!({
            "type": type_, "status": "False", "reason": "PodCompleted",
            "lastTransitionTime": now, "lastProbeTime": null,
        })
    };
    let patch = serde_json::json!({
        "status": {
            "phase": "Succeeded",
            "conditions": [condition("Ready"), condition("ContainersReady")],
            "containerStatuses": statuses,
        }
    });
    match api
        .patch_status(name, &PatchParams::default(), &Patch::Strategic(&patch))
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if crate::error::kube_not_found(&e) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Whether a pod runs and is ready (kwok reports the Ready condition).
pub fn pod_is_ready(pod: &Pod) -> bool {
    let Some(status) = pod.status.as_ref() else {
        return false;
    };
    status.phase.as_deref() == Some("Running")
        && status
            .conditions
            .iter()
            .flatten()
            .any(|c| c.type_ == "Ready" && c.status == "True")
}

/// `Some(message)` when the scheduler reported the pod unschedulable.
pub fn pod_unschedulable(pod: &Pod) -> Option<String> {
    pod.status
        .as_ref()?
        .conditions
        .iter()
        .flatten()
        .find_map(|c| {
            (c.type_ == "PodScheduled"
                && c.status == "False"
                && c.reason.as_deref() == Some("Unschedulable"))
            .then(|| c.message.clone().unwrap_or_default())
        })
}

/// The node a pod is bound to.
pub fn pod_node(pod: &Pod) -> Option<&str> {
    pod.spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .filter(|n| !n.is_empty())
}

/// Seconds since an object was created (0 when unknown).
pub fn age(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> Duration {
    meta.creation_timestamp
        .as_ref()
        .map(|t| since(&t.0))
        .unwrap_or_default()
}

/// Real time elapsed since a timestamp (0 if it lies in the future).
pub fn since(t: &k8s_openapi::jiff::Timestamp) -> Duration {
    let now = k8s_openapi::jiff::Timestamp::now();
    let span = now.duration_since(*t);
    Duration::try_from(span).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use kubevirt_api::VirtualMachineInstanceMigrationState;
    use serde_json::json;

    #[test]
    fn replacing_nulls_what_the_new_value_lacks() {
        let old = VirtualMachineInstanceMigrationState {
            migration_uid: Some("a".into()),
            target_node: Some("n0".into()),
            completed: true,
            mode: Some("PreCopy".into()),
            ..Default::default()
        };
        let new = VirtualMachineInstanceMigrationState {
            migration_uid: Some("b".into()),
            target_node: Some("n4".into()),
            ..Default::default()
        };
        assert_eq!(
            replacing(Some(&old), &new).unwrap(),
            json!({"migrationUid": "b", "targetNode": "n4", "completed": null, "mode": null})
        );
        assert_eq!(
            replacing(None, &new).unwrap(),
            json!({"migrationUid": "b", "targetNode": "n4"})
        );
        assert_eq!(
            null_removed(
                &json!({"a": {"x": 1, "y": 2}, "b": 1}),
                json!({"a": {"x": 3}})
            ),
            json!({"a": {"x": 3, "y": null}, "b": null})
        );
    }
}
