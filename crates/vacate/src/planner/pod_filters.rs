//! Which pods a drain evicts, as `kubectl drain` decides it: a chain of small filters, each
//! of which may settle a pod's fate with a reason shown to the user.

use crate::config::{PodConfig, PodPolicy};

use super::model::PodView;
use super::state::BlockReason;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PodVerdict {
    Evict,
    /// Left on the node; does not hold up the drain.
    Skip(&'static str),
    /// Holds up the drain until the policy or the pod changes.
    Block(BlockReason, String),
}

type Filter = fn(&PodView, &PodConfig) -> Option<PodVerdict>;

const FILTERS: &[Filter] = &[
    mirror_pods,
    finished_pods,
    daemonset_pods,
    virt_launcher_pods,
    unmanaged_pods,
    emptydir_pods,
];

pub fn classify(pod: &PodView, config: &PodConfig) -> PodVerdict {
    FILTERS
        .iter()
        .find_map(|filter| filter(pod, config))
        .unwrap_or(PodVerdict::Evict)
}

fn mirror_pods(pod: &PodView, _: &PodConfig) -> Option<PodVerdict> {
    pod.mirror
        .then_some(PodVerdict::Skip("mirror pod, managed by the kubelet"))
}

fn finished_pods(pod: &PodView, _: &PodConfig) -> Option<PodVerdict> {
    pod.finished.then_some(PodVerdict::Skip("pod has finished"))
}

fn daemonset_pods(pod: &PodView, _: &PodConfig) -> Option<PodVerdict> {
    (pod.controller_kind.as_deref() == Some("DaemonSet")).then_some(PodVerdict::Skip(
        "DaemonSet pod, ignored as by kubectl drain",
    ))
}

fn virt_launcher_pods(pod: &PodView, _: &PodConfig) -> Option<PodVerdict> {
    pod.virt_launcher
        .then_some(PodVerdict::Skip("virt-launcher pod, moved with its VMI"))
}

fn unmanaged_pods(pod: &PodView, config: &PodConfig) -> Option<PodVerdict> {
    if pod.controller_kind.is_some() || config.unmanaged == PodPolicy::Evict {
        return None;
    }
    Some(PodVerdict::Block(
        BlockReason::UnmanagedPod,
        format!(
            "pod {} has no controller and would not come back; set pods.unmanaged = \"evict\" to evict it anyway",
            pod.key()
        ),
    ))
}

fn emptydir_pods(pod: &PodView, config: &PodConfig) -> Option<PodVerdict> {
    if !pod.has_emptydir || config.emptydir == PodPolicy::Evict {
        return None;
    }
    Some(PodVerdict::Block(
        BlockReason::EmptyDirPod,
        format!(
            "pod {} has emptyDir data that eviction deletes; set pods.emptydir = \"evict\" to evict it anyway",
            pod.key()
        ),
    ))
}
