//! The VirtualMachines that start their VMI again once it is stopped, kept as a set of UIDs.
//! vacate reads one thing of a VirtualMachine: whether a VMI it controls comes back after an
//! eviction (the planner restarts such a VMI instead of failing the drain). A VMI names its
//! VirtualMachine by UID in its owner reference, and a UID is unique in the cluster, so the
//! UIDs of the VirtualMachines that restart are all the cache needs: 32 bytes per
//! VirtualMachine at most, where a kube-runtime store of projections keyed by namespace and
//! name took 248 (docs/benchmarks.md, "Cache memory per object").

use std::collections::HashSet;
use std::sync::{Arc, RwLock};

use futures::StreamExt;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use kubevirt_api::{RunStrategy, VirtualMachine};
use tokio::sync::watch as tokio_watch;
use tokio::task::JoinHandle;

use super::cached::Uid;
use super::lean::LeanVm;
use super::watch::{fleet_watch, map_event};

/// The UID of `vm`, and whether KubeVirt starts its VMI again once it is stopped: its run
/// strategy resolves to Always (vm.go, v1.7.4 and v1.9.0: RerunOnFailure restarts only a
/// failed VMI; Manual, Halted, Once and WaitAsReceiver leave a deleted VMI stopped).
pub fn restarts(vm: &VirtualMachine) -> (Uid, bool) {
    (
        Uid::of(&vm.uid().unwrap_or_default()),
        vm.effective_run_strategy() == RunStrategy::Always,
    )
}

/// The set and the relist under way (a watch restarted), which replaces it when complete.
#[derive(Default)]
struct Set {
    current: HashSet<Uid>,
    relist: Option<HashSet<Uid>>,
}

impl Set {
    /// Applies a watch event of `(uid, restarts)`; true when a list completed.
    fn apply(&mut self, event: watcher::Event<(Uid, bool)>) -> bool {
        match event {
            watcher::Event::Init => {
                self.relist = Some(HashSet::new());
                false
            }
            watcher::Event::InitApply((uid, restarts)) => {
                if let Some(relist) = self.relist.as_mut()
                    && restarts
                {
                    relist.insert(uid);
                }
                false
            }
            watcher::Event::InitDone => {
                if let Some(mut relist) = self.relist.take() {
                    relist.shrink_to_fit();
                    self.current = relist;
                }
                true
            }
            watcher::Event::Apply((uid, true)) => {
                self.current.insert(uid);
                false
            }
            watcher::Event::Apply((uid, false)) | watcher::Event::Delete((uid, _)) => {
                self.current.remove(&uid);
                false
            }
        }
    }
}

/// The VirtualMachines that restart their VMI (see the module's documentation).
#[derive(Clone)]
pub struct RestartingVms {
    set: Arc<RwLock<Set>>,
    ready: tokio_watch::Receiver<bool>,
}

impl RestartingVms {
    /// Starts the watch of every VirtualMachine.
    pub fn start(client: &Client) -> (RestartingVms, JoinHandle<()>) {
        let set = Arc::new(RwLock::new(Set::default()));
        let (ready_tx, ready) = tokio_watch::channel(false);
        let stream = watcher(Api::<LeanVm>::all(client.clone()), fleet_watch()).default_backoff();
        let writer = Arc::clone(&set);
        let task = tokio::spawn(async move {
            futures::pin_mut!(stream);
            while let Some(event) = stream.next().await {
                match event {
                    Ok(event) => {
                        let event = map_event(event, |vm| restarts(&VirtualMachine::from(vm)));
                        if writer.write().expect("VM set lock").apply(event) {
                            ready_tx.send_replace(true);
                        }
                    }
                    Err(error) => {
                        tracing::warn!(%error, "watching virtualmachines failed; retrying with backoff");
                    }
                }
            }
        });
        (RestartingVms { set, ready }, task)
    }

    /// The set of `vms`, complete from the start (for tests of the shell).
    #[cfg(test)]
    pub fn filled<'a>(vms: impl IntoIterator<Item = &'a VirtualMachine>) -> RestartingVms {
        let mut set = Set::default();
        set.apply(watcher::Event::Init);
        for vm in vms {
            set.apply(watcher::Event::InitApply(restarts(vm)));
        }
        set.apply(watcher::Event::InitDone);
        RestartingVms {
            set: Arc::new(RwLock::new(set)),
            ready: tokio_watch::channel(true).1,
        }
    }

    /// Whether the VirtualMachine with UID `uid` restarts its VMI.
    pub fn contains(&self, uid: &Uid) -> bool {
        self.set.read().expect("VM set lock").current.contains(uid)
    }

    /// Whether the first list is complete.
    pub fn is_ready(&self) -> bool {
        *self.ready.borrow()
    }

    pub async fn wait_until_ready(&self) {
        let mut ready = self.ready.clone();
        let _ = ready.wait_for(|r| *r).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn vm(uid: &str, run: serde_json::Value) -> VirtualMachine {
        let mut spec = json!({"template": {"spec": {"domain": {"devices": {}}}}});
        for (key, value) in run.as_object().unwrap() {
            spec[key] = value.clone();
        }
        serde_json::from_value(json!({
            "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
            "metadata": {"name": "db", "namespace": "vms", "uid": uid},
            "spec": spec
        }))
        .unwrap()
    }

    #[test]
    fn only_a_vm_that_runs_always_restarts() {
        let cases = [
            (json!({"runStrategy": "Always"}), true),
            (json!({"running": true}), true),
            (json!({"runStrategy": "RerunOnFailure"}), false),
            (json!({"runStrategy": "Manual"}), false),
            (json!({"runStrategy": "Halted"}), false),
            (json!({"runStrategy": "Once"}), false),
            (json!({"runStrategy": "SomethingNewer"}), false),
        ];
        for (run, expected) in cases {
            let (uid, restarts) = restarts(&vm("vm-uid", run.clone()));
            assert_eq!(uid, Uid::of("vm-uid"));
            assert_eq!(restarts, expected, "{run}");
        }
    }

    #[test]
    fn the_set_follows_vms_through_a_relist() {
        let always = json!({"runStrategy": "Always"});
        let halted = json!({"runStrategy": "Halted"});
        let mut set = Set::default();
        let event = |e: watcher::Event<VirtualMachine>| map_event(e, |vm| restarts(&vm));
        assert!(!set.apply(event(watcher::Event::Init)));
        set.apply(event(watcher::Event::InitApply(vm("a", always.clone()))));
        set.apply(event(watcher::Event::InitApply(vm("b", halted.clone()))));
        assert!(set.current.is_empty(), "a list counts only once complete");
        assert!(set.apply(event(watcher::Event::InitDone)));
        assert_eq!(set.current, HashSet::from([Uid::of("a")]));

        // Started, stopped for good, deleted.
        set.apply(event(watcher::Event::Apply(vm("b", always.clone()))));
        set.apply(event(watcher::Event::Apply(vm("a", halted.clone()))));
        assert_eq!(set.current, HashSet::from([Uid::of("b")]));
        set.apply(event(watcher::Event::Delete(vm("b", always.clone()))));
        assert!(set.current.is_empty());

        // A restarted watch replaces everything once complete.
        set.apply(event(watcher::Event::Apply(vm("c", always.clone()))));
        set.apply(event(watcher::Event::Init));
        set.apply(event(watcher::Event::InitApply(vm("d", always.clone()))));
        assert_eq!(set.current, HashSet::from([Uid::of("c")]));
        set.apply(event(watcher::Event::InitDone));
        assert_eq!(set.current, HashSet::from([Uid::of("d")]));
    }
}
