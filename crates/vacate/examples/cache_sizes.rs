//! How much memory vacate's watch caches take per object: the objects as earlier versions
//! kept them (decoded whole, less a few fields), and the projections of
//! `vacate::cluster::cached` (for the pods of a node's pod watch, `DrainPod`; for
//! VirtualMachines, the set of UIDs of `vacate::cluster::restarts`). It reads the
//! lists a cluster gives from a directory: nodes.json, vmis.json, vms.json and pods.json,
//! as `kubectl get nodes -o json` (and `vmi -A`, `vm -A`, `pods -A`) print them. For each
//! variant it fills a kube-runtime store and counts the bytes allocated and still live
//! once the store is filled, per object. A second table gives the bytes live at the peak
//! of decoding each list at once, as a watch decodes a page of its first list, whole and
//! in the lean shapes of `vacate::cluster::lean`.
//!
//!     cargo run --example cache_sizes -- DIR
//!
//! docs/benchmarks.md, "Cache memory per object", has its figures.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::runtime::reflector::{self, Lookup};
use kube::runtime::watcher::Event;
use kubevirt_api::{VirtualMachine, VirtualMachineInstance};
use vacate::cluster::cached::{CachedNode, CachedVmi};
use vacate::cluster::lean::{DrainPod, LeanNode, LeanPod, LeanVm, LeanVmi};
use vacate::cluster::restarts::restarts;

/// The system allocator, counting the bytes live.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);
/// The most bytes live since it was last set.
static PEAK: AtomicIsize = AtomicIsize::new(0);

fn grew(by: isize) {
    let live = LIVE.fetch_add(by, Ordering::Relaxed) + by;
    PEAK.fetch_max(live, Ordering::Relaxed);
}

// SAFETY: every call goes to the system allocator unchanged; only a counter is added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        grew(layout.size() as isize);
        // SAFETY: as the caller's contract for `GlobalAlloc::alloc`.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: as the caller's contract for `GlobalAlloc::dealloc`.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, size: usize) -> *mut u8 {
        grew(size as isize - layout.size() as isize);
        // SAFETY: as the caller's contract for `GlobalAlloc::realloc`.
        unsafe { System.realloc(ptr, layout, size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Bytes per object of a store filled with `project` of every item of `file`, and how many.
fn per_object<K, S>(file: &std::path::Path, project: impl Fn(K) -> S) -> (isize, usize)
where
    K: serde::de::DeserializeOwned,
    S: Lookup + Clone + 'static,
    S::DynamicType: Default + Eq + std::hash::Hash + Clone,
{
    let text =
        std::fs::read_to_string(file).unwrap_or_else(|e| panic!("reading {}: {e}", file.display()));
    let list: serde_json::Value = serde_json::from_str(&text).expect("a JSON list");
    let items: Vec<String> = list["items"]
        .as_array()
        .expect("a list with items")
        .iter()
        .map(|item| item.to_string())
        .collect();
    let before = LIVE.load(Ordering::Relaxed);
    let (store, mut writer) = reflector::store::<S>();
    writer.apply_watcher_event(&Event::Init);
    for item in &items {
        let object: K = serde_json::from_str(item).expect("an object of the list's kind");
        writer.apply_watcher_event(&Event::InitApply(project(object)));
    }
    writer.apply_watcher_event(&Event::InitDone);
    let held = LIVE.load(Ordering::Relaxed) - before;
    drop(store);
    (held / items.len().max(1) as isize, items.len())
}

/// Bytes per VirtualMachine of the set of UIDs that `vacate::cluster::restarts` keeps,
/// counting every VirtualMachine of `file` as one that restarts its VMI (the most the set
/// holds), and how many.
fn per_vm_uid(file: &std::path::Path) -> (isize, usize) {
    let text =
        std::fs::read_to_string(file).unwrap_or_else(|e| panic!("reading {}: {e}", file.display()));
    let list: serde_json::Value = serde_json::from_str(&text).expect("a JSON list");
    let vms: Vec<VirtualMachine> =
        serde_json::from_value(list["items"].clone()).expect("a list of VirtualMachines");
    drop(list);
    let before = LIVE.load(Ordering::Relaxed);
    let mut set = std::collections::HashSet::new();
    for vm in &vms {
        set.insert(restarts(vm).0);
    }
    set.shrink_to_fit();
    let held = LIVE.load(Ordering::Relaxed) - before;
    drop(set);
    (held / vms.len().max(1) as isize, vms.len())
}

/// Bytes live per object at the peak of decoding every item of `file` as one list of `K`,
/// and how many.
fn decoded<K: serde::de::DeserializeOwned>(file: &std::path::Path) -> (isize, usize) {
    let text =
        std::fs::read_to_string(file).unwrap_or_else(|e| panic!("reading {}: {e}", file.display()));
    let list: serde_json::Value = serde_json::from_str(&text).expect("a JSON list");
    let items = list["items"].to_string();
    drop(list);
    let before = LIVE.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    let objects: Vec<K> = serde_json::from_str(&items).expect("objects of the list's kind");
    let peak = PEAK.load(Ordering::Relaxed) - before;
    let count = objects.len();
    drop(objects);
    (peak / count.max(1) as isize, count)
}

fn main() {
    let dir = std::path::PathBuf::from(std::env::args().nth(1).expect("usage: cache_sizes DIR"));
    let state = "vacate.io/state";
    let rows = [
        (
            "node, whole (managed fields and images dropped)",
            per_object(&dir.join("nodes.json"), |mut node: Node| {
                node.metadata.managed_fields = None;
                if let Some(status) = node.status.as_mut() {
                    status.images = None;
                }
                node
            }),
        ),
        (
            "node, CachedNode",
            per_object(&dir.join("nodes.json"), |node: Node| {
                CachedNode::of(node, state)
            }),
        ),
        (
            "VMI, whole (managed fields dropped)",
            per_object(&dir.join("vmis.json"), |mut vmi: VirtualMachineInstance| {
                vmi.metadata.managed_fields = None;
                vmi
            }),
        ),
        (
            "VMI, CachedVmi",
            per_object::<VirtualMachineInstance, _>(&dir.join("vmis.json"), CachedVmi::from),
        ),
        (
            "VirtualMachine, whole (managed fields, annotations, template and status dropped)",
            per_object(&dir.join("vms.json"), |mut vm: VirtualMachine| {
                vm.metadata.managed_fields = None;
                vm.metadata.annotations = None;
                vm.spec.template = Default::default();
                vm.status = None;
                vm
            }),
        ),
        (
            "VirtualMachine, its UID in the set of those that restart",
            per_vm_uid(&dir.join("vms.json")),
        ),
        (
            "pod of a node's pod watch, whole (managed fields dropped)",
            per_object(&dir.join("pods.json"), |mut pod: Pod| {
                pod.metadata.managed_fields = None;
                pod
            }),
        ),
        (
            "pod of a node's pod watch, DrainPod turned into a Pod",
            per_object::<DrainPod, _>(&dir.join("pods.json"), Pod::from),
        ),
        (
            "pod of a node's pod watch, DrainPod",
            per_object::<DrainPod, _>(&dir.join("pods.json"), |pod: DrainPod| pod),
        ),
    ];
    println!("| cached as | objects | bytes per object |");
    println!("|---|---:|---:|");
    for (what, (bytes, count)) in rows {
        println!("| {what} | {count} | {bytes} |");
    }

    let decodes = [
        ("node, whole", decoded::<Node>(&dir.join("nodes.json"))),
        (
            "node, LeanNode",
            decoded::<LeanNode>(&dir.join("nodes.json")),
        ),
        ("pod, whole", decoded::<Pod>(&dir.join("pods.json"))),
        ("pod, LeanPod", decoded::<LeanPod>(&dir.join("pods.json"))),
        ("pod, DrainPod", decoded::<DrainPod>(&dir.join("pods.json"))),
        (
            "VMI, whole",
            decoded::<VirtualMachineInstance>(&dir.join("vmis.json")),
        ),
        ("VMI, LeanVmi", decoded::<LeanVmi>(&dir.join("vmis.json"))),
        (
            "VirtualMachine, whole",
            decoded::<VirtualMachine>(&dir.join("vms.json")),
        ),
        (
            "VirtualMachine, LeanVm",
            decoded::<LeanVm>(&dir.join("vms.json")),
        ),
    ];
    println!();
    println!("| decoded as | objects | bytes per object at the peak |");
    println!("|---|---:|---:|");
    for (what, (bytes, count)) in decodes {
        println!("| {what} | {count} | {bytes} |");
    }
}
