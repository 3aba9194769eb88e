//! The `LiveMigratable` condition, computed from the VMI spec the way virt-controller does
//! (`pkg/virt-controller/watch/vmi` → `calculateLiveMigrationCondition` and
//! `pkg/network/migration` / `pkg/storage/types` helpers): shared storage, pod network
//! binding, passed-through devices.

use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use kubevirt_api::common::{Condition, condition_reason, condition_type};
use kubevirt_api::{ConditionStatus, VirtualMachineInstance};

use crate::settings::KubeVirtRelease;

/// VMI annotation that allows live migration with bridge binding on the pod network.
pub const ALLOW_POD_BRIDGE_MIGRATION_ANNOTATION: &str =
    "kubevirt.io/allow-pod-bridge-network-live-migration";

/// Computes the `LiveMigratable` condition. `lookup_pvc` finds a PVC of the VMI's namespace.
///
/// The reasons are looked at in virt-handler's order (`calculateLiveMigrationCondition`,
/// `pkg/virt-handler/vm.go`, v1.7.4 and v1.9.0): interfaces, host devices and GPUs, then disks;
/// the first that applies is reported.
pub fn live_migratable_condition(
    vmi: &VirtualMachineInstance,
    lookup_pvc: impl Fn(&str) -> Option<PersistentVolumeClaim>,
    release: KubeVirtRelease,
) -> Condition {
    match not_migratable_reason(vmi, lookup_pvc, release) {
        Some((reason, message)) => Condition::new(
            condition_type::LIVE_MIGRATABLE,
            ConditionStatus::False,
            reason,
            &message,
        ),
        None => Condition::new(
            condition_type::LIVE_MIGRATABLE,
            ConditionStatus::True,
            "",
            "",
        ),
    }
}

fn not_migratable_reason(
    vmi: &VirtualMachineInstance,
    lookup_pvc: impl Fn(&str) -> Option<PersistentVolumeClaim>,
    release: KubeVirtRelease,
) -> Option<(&'static str, String)> {
    let spec = &vmi.spec;
    // Network: bridge binding on the pod network keeps the pod IP inside the guest, which
    // cannot move to another pod.
    let bridge_allowed = vmi
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ALLOW_POD_BRIDGE_MIGRATION_ANNOTATION))
        .is_some_and(|v| v == "true");
    let pod_network = spec
        .networks
        .iter()
        .find(|n| n.pod.is_some())
        .map(|n| n.name.as_str());
    if let Some(pod_network) = pod_network
        && !bridge_allowed
        && spec
            .domain
            .devices
            .interfaces
            .iter()
            .any(|i| i.name == pod_network && i.bridge.is_some())
    {
        return Some((
            condition_reason::INTERFACE_NOT_LIVE_MIGRATABLE,
            "cannot migrate VMI which does not use masquerade, bridge with kubevirt.io/allow-pod-bridge-network-live-migration VM annotation or a migratable plugin to connect to the pod network".into(),
        ));
    }
    if spec
        .domain
        .devices
        .interfaces
        .iter()
        .any(|i| i.sriov.is_some())
    {
        return Some((
            condition_reason::INTERFACE_NOT_LIVE_MIGRATABLE,
            "cannot migrate VMI with SR-IOV interfaces".into(),
        ));
    }
    // Passed-through devices are bound to the host (`vmiContainsNonMigratablePCIHostDevices`
    // in v1.9.0; v1.7.4's `vmiContainsPCIHostDevice` has one message for both).
    let devices = &spec.domain.devices;
    if release == KubeVirtRelease::V1_7 {
        if !devices.host_devices.is_empty() || !devices.gpus.is_empty() {
            return Some((
                condition_reason::HOST_DEVICE_NOT_LIVE_MIGRATABLE,
                "VMI uses a PCI host devices".into(),
            ));
        }
    } else if !devices.host_devices.is_empty() {
        return Some((
            condition_reason::HOST_DEVICE_NOT_LIVE_MIGRATABLE,
            "VMI specifies non-migratable generic PCI host device".into(),
        ));
    } else if devices.gpus.len() > 1 {
        return Some((
            condition_reason::HOST_DEVICE_NOT_LIVE_MIGRATABLE,
            "VMI specifies too many GPUs".into(),
        ));
    } else if devices.gpus.len() == 1 {
        // The VGPULiveMigration feature gate is off in a default install.
        return Some((
            condition_reason::HOST_DEVICE_NOT_LIVE_MIGRATABLE,
            "VMI specifies a GPU but feature gate VGPULiveMigration is not enabled".into(),
        ));
    }
    // Storage last (the `blockErr` check comes after all others): every PVC (directly, through a DataVolume or an ephemeral volume) must be
    // ReadWriteMany; hostDisks must be marked shared.
    for volume in &spec.volumes {
        if let Some(claim) = volume.claim_name() {
            let shared = lookup_pvc(claim)
                .and_then(|pvc| pvc.spec)
                .and_then(|s| s.access_modes)
                .is_some_and(|modes| modes.iter().any(|m| m == "ReadWriteMany"));
            if !shared {
                return Some((
                    condition_reason::DISKS_NOT_LIVE_MIGRATABLE,
                    format!(
                        "cannot migrate VMI: PVC {claim} is not shared, live migration requires that all PVCs must be shared (using ReadWriteMany access mode)"
                    ),
                ));
            }
        }
        if let Some(host_disk) = &volume.host_disk
            && host_disk.shared != Some(true)
        {
            return Some((
                condition_reason::DISKS_NOT_LIVE_MIGRATABLE,
                format!(
                    "cannot migrate VMI with non-shared HostDisk {}",
                    volume.name
                ),
            ));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn vmi(spec: serde_json::Value) -> VirtualMachineInstance {
        serde_json::from_value(json!({
            "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
            "metadata": {"name": "v", "namespace": "ns"}, "spec": spec
        }))
        .unwrap()
    }

    fn pvc(mode: &str) -> Option<PersistentVolumeClaim> {
        Some(
            serde_json::from_value(
                json!({"metadata": {"name": "p"}, "spec": {"accessModes": [mode]}}),
            )
            .unwrap(),
        )
    }

    fn reason(c: &Condition) -> (&ConditionStatus, &str) {
        (&c.status, c.reason.as_deref().unwrap_or(""))
    }

    #[test]
    fn masquerade_and_container_disk_migrate() {
        let v = vmi(json!({
            "domain": {"devices": {"interfaces": [{"name": "default", "masquerade": {}}]}},
            "networks": [{"name": "default", "pod": {}}],
            "volumes": [{"name": "root", "containerDisk": {"image": "x"}}]
        }));
        assert_eq!(
            reason(&live_migratable_condition(
                &v,
                |_| None,
                KubeVirtRelease::V1_9
            )),
            (&ConditionStatus::True, "")
        );
    }

    #[test]
    fn each_reason() {
        let rwo =
            vmi(json!({"volumes": [{"name": "d", "persistentVolumeClaim": {"claimName": "p"}}]}));
        let c = live_migratable_condition(&rwo, |_| pvc("ReadWriteOnce"), KubeVirtRelease::V1_9);
        assert_eq!(
            reason(&c),
            (&ConditionStatus::False, "DisksNotLiveMigratable")
        );
        assert!(c.message.unwrap().contains("PVC p is not shared"));
        assert_eq!(
            reason(&live_migratable_condition(
                &rwo,
                |_| pvc("ReadWriteMany"),
                KubeVirtRelease::V1_9
            )),
            (&ConditionStatus::True, "")
        );
        assert_eq!(
            reason(&live_migratable_condition(
                &rwo,
                |_| None,
                KubeVirtRelease::V1_9
            ))
            .1,
            "DisksNotLiveMigratable"
        );

        let bridge = vmi(json!({
            "domain": {"devices": {"interfaces": [{"name": "default", "bridge": {}}]}},
            "networks": [{"name": "default", "pod": {}}]
        }));
        assert_eq!(
            reason(&live_migratable_condition(
                &bridge,
                |_| None,
                KubeVirtRelease::V1_9
            ))
            .1,
            "InterfaceNotLiveMigratable"
        );

        let host = vmi(
            json!({"domain": {"devices": {"hostDevices": [{"name": "h", "deviceName": "x/y"}]}}}),
        );
        assert_eq!(
            reason(&live_migratable_condition(
                &host,
                |_| None,
                KubeVirtRelease::V1_9
            ))
            .1,
            "HostDeviceNotLiveMigratable"
        );
        let gpu =
            vmi(json!({"domain": {"devices": {"gpus": [{"name": "g", "deviceName": "x/y"}]}}}));
        let c = live_migratable_condition(&gpu, |_| None, KubeVirtRelease::V1_9);
        assert_eq!(reason(&c).1, "HostDeviceNotLiveMigratable");
        assert_eq!(
            c.message.as_deref(),
            Some("VMI specifies a GPU but feature gate VGPULiveMigration is not enabled")
        );
        let c = live_migratable_condition(&gpu, |_| None, KubeVirtRelease::V1_7);
        assert_eq!(c.message.as_deref(), Some("VMI uses a PCI host devices"));
    }

    #[test]
    fn interfaces_come_before_devices_and_disks_last() {
        let all = vmi(json!({
            "domain": {"devices": {"interfaces": [{"name": "default", "bridge": {}}],
                                   "gpus": [{"name": "g", "deviceName": "x/y"}]}},
            "networks": [{"name": "default", "pod": {}}],
            "volumes": [{"name": "d", "persistentVolumeClaim": {"claimName": "p"}}]
        }));
        let rwo = |_: &str| pvc("ReadWriteOnce");
        assert_eq!(
            reason(&live_migratable_condition(&all, rwo, KubeVirtRelease::V1_9)).1,
            "InterfaceNotLiveMigratable"
        );
        let gpu_and_disk = vmi(json!({
            "domain": {"devices": {"gpus": [{"name": "g", "deviceName": "x/y"}]}},
            "volumes": [{"name": "d", "persistentVolumeClaim": {"claimName": "p"}}]
        }));
        assert_eq!(
            reason(&live_migratable_condition(
                &gpu_and_disk,
                rwo,
                KubeVirtRelease::V1_7
            ))
            .1,
            "HostDeviceNotLiveMigratable"
        );
    }

    #[test]
    fn bridge_on_a_secondary_network_is_fine() {
        let v = vmi(json!({
            "domain": {"devices": {"interfaces": [{"name": "default", "masquerade": {}}, {"name": "lan", "bridge": {}}]}},
            "networks": [{"name": "default", "pod": {}}, {"name": "lan", "multus": {"networkName": "lan"}}]
        }));
        assert_eq!(
            reason(&live_migratable_condition(
                &v,
                |_| None,
                KubeVirtRelease::V1_9
            )),
            (&ConditionStatus::True, "")
        );
    }
}
