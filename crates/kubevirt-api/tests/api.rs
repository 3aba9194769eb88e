//! Deserialises KubeVirt-shaped JSON (written after types.go, with fields this crate does not
//! model), checks round-trips, the helpers and the generated CRDs.

use kubevirt_api::common::{ConditionStatus, condition_reason, condition_type};
use kubevirt_api::*;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Paths are relative to the package: cargo runs tests in its directory, while a path compiled
/// in names the checkout the test binary was built from.
fn sample<T: DeserializeOwned>(name: &str) -> T {
    let path = format!("tests/samples/{name}");
    let text = std::fs::read_to_string(&path).unwrap();
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// Serialising and parsing again gives the same value, and serialising is stable.
fn round_trip<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(value: &T) {
    let json = serde_json::to_value(value).unwrap();
    let again: T = serde_json::from_value(json.clone()).unwrap();
    assert_eq!(&again, value);
    assert_eq!(serde_json::to_value(&again).unwrap(), json);
}

#[test]
fn running_vmi_after_migration() {
    let vmi: VirtualMachineInstance = sample("vmi-running-migrated.json");
    assert_eq!(vmi.phase(), Some(VmiPhase::Running));
    assert_eq!(vmi.node_name(), Some("node-b"));
    assert!(vmi.is_running());
    assert!(!vmi.is_final());
    assert!(vmi.is_migratable());
    assert!(!vmi.is_migrating());
    assert!(!vmi.is_marked_for_eviction());
    assert_eq!(vmi.guest_memory_bytes(), Some(4 << 30));
    assert_eq!(
        vmi.spec.eviction_strategy,
        Some(EvictionStrategy::LiveMigrate)
    );
    assert_eq!(vmi.claim_names(), vec!["vm-fedora-rootdisk"]);
    assert!(vmi.spec.domain.devices.interfaces[0].masquerade.is_some());
    assert!(vmi.spec.networks[0].pod.is_some());
    assert!(vmi.spec.affinity.as_ref().unwrap().node_affinity.is_some());
    let state = vmi.migration_state().unwrap();
    assert!(state.completed);
    assert_eq!(state.source_node.as_deref(), Some("node-a"));
    assert_eq!(state.target_node.as_deref(), Some("node-b"));
    assert!(state.end_timestamp.is_some());
    let status = vmi.status.as_ref().unwrap();
    assert_eq!(status.active_pods.len(), 1);
    assert_eq!(status.phase_transition_timestamps.len(), 4);
    assert_eq!(
        status.interfaces[0].ip_address.as_deref(),
        Some("10.244.1.17")
    );
    round_trip(&vmi);
}

#[test]
fn vmi_that_cannot_migrate() {
    let vmi: VirtualMachineInstance = sample("vmi-not-migratable.json");
    let m = vmi.live_migratable().unwrap();
    assert!(!m.migratable);
    assert_eq!(m.reason, condition_reason::DISKS_NOT_LIVE_MIGRATABLE);
    assert!(m.message.contains("ReadWriteMany"));
    assert!(vmi.is_marked_for_eviction());
    assert_eq!(vmi.guest_memory_bytes(), Some(8 << 30));
    let devices = &vmi.spec.domain.devices;
    assert!(devices.interfaces[0].bridge.is_some());
    assert_eq!(
        devices.host_devices[0].device_name,
        "devices.example.com/nvme"
    );
    assert_eq!(devices.gpus.len(), 1);
    assert_eq!(vmi.claim_names(), vec!["db-1-data"]);
    assert!(vmi.spec.volumes[1].empty_disk.is_some());
    assert!(vmi.spec.volumes[2].container_disk.is_some());
    round_trip(&vmi);
}

#[test]
fn eviction_strategy_resolution() {
    let mut vmi: VirtualMachineInstance = sample("vmi-not-migratable.json");
    assert_eq!(
        vmi.effective_eviction_strategy(Some(EvictionStrategy::None)),
        Some(EvictionStrategy::LiveMigrateIfPossible)
    );
    vmi.spec.eviction_strategy = None;
    assert_eq!(
        vmi.effective_eviction_strategy(Some(EvictionStrategy::External)),
        Some(EvictionStrategy::External)
    );
    assert_eq!(vmi.effective_eviction_strategy(None), None);
}

#[test]
fn migration_in_flight() {
    let vmim: VirtualMachineInstanceMigration = sample("vmim-running.json");
    assert_eq!(vmim.spec.vmi_name, "vm-fedora");
    assert_eq!(vmim.phase(), Some(MigrationPhase::Running));
    assert!(!vmim.is_final());
    assert!(vmim.is_running());
    assert_eq!(vmim.source_node(), Some("node-a"));
    assert_eq!(vmim.target_node(), Some("node-b"));
    assert!(vmim.phase_entered_at(MigrationPhase::TargetReady).is_some());
    assert!(vmim.phase_entered_at(MigrationPhase::Succeeded).is_none());
    round_trip(&vmim);
}

#[test]
fn migration_phases() {
    let mut vmim: VirtualMachineInstanceMigration = sample("vmim-running.json");
    for (phase, fin, running) in [
        (MigrationPhase::Pending, false, false),
        (MigrationPhase::Scheduling, false, true),
        (MigrationPhase::PreparingTarget, false, true),
        (MigrationPhase::Succeeded, true, false),
        (MigrationPhase::Failed, true, false),
    ] {
        vmim.status.as_mut().unwrap().phase = Some(phase);
        assert_eq!(vmim.is_final(), fin, "{phase}");
        assert_eq!(vmim.is_running(), running, "{phase}");
    }
    vmim.status = None;
    assert!(!vmim.is_final());
    assert!(vmim.is_unfinished());
    // An unknown (future) phase does not break parsing.
    let parsed: VirtualMachineInstanceMigration = serde_json::from_value(serde_json::json!({
        "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstanceMigration",
        "metadata": {"name": "m"}, "spec": {"vmiName": "x"}, "status": {"phase": "WaitingForSync"}
    }))
    .unwrap();
    assert_eq!(parsed.phase(), Some(MigrationPhase::Unknown));
}

#[test]
fn virtual_machine_run_strategy() {
    let mut vm: VirtualMachine = sample("vm-always.json");
    assert_eq!(vm.effective_run_strategy(), RunStrategy::Always);
    let template = vm.spec.template.metadata.as_ref().unwrap();
    assert_eq!(template.labels.as_ref().unwrap()["app"], "web");
    assert_eq!(
        vm.spec.template.spec.as_ref().unwrap().guest_memory(),
        Some(4 << 30)
    );
    assert!(vm.status.as_ref().unwrap().ready);
    round_trip(&vm);
    vm.spec.run_strategy = None;
    vm.spec.running = Some(true);
    assert_eq!(vm.effective_run_strategy(), RunStrategy::Always);
    vm.spec.running = Some(false);
    assert_eq!(vm.effective_run_strategy(), RunStrategy::Halted);
    vm.spec.running = None;
    assert_eq!(vm.effective_run_strategy(), RunStrategy::Halted);
}

#[test]
fn kubevirt_configuration() {
    let kv: KubeVirt = sample("kubevirt.json");
    let migrations = kv.migration_configuration();
    assert_eq!(migrations.parallel_migrations_per_cluster(), 10);
    assert_eq!(migrations.parallel_outbound_migrations_per_node(), 3);
    assert_eq!(
        migrations.bandwidth_bytes_per_second(),
        Some(64.0 * 1024.0 * 1024.0)
    );
    assert_eq!(migrations.completion_timeout_per_gib(), 800);
    assert_eq!(kv.eviction_strategy(), Some(EvictionStrategy::LiveMigrate));
    assert_eq!(
        kv.status.as_ref().unwrap().phase.as_deref(),
        Some("Deployed")
    );
    round_trip(&kv);

    let defaults = MigrationConfiguration::default();
    assert_eq!(defaults.parallel_migrations_per_cluster(), 5);
    assert_eq!(defaults.parallel_outbound_migrations_per_node(), 2);
    assert_eq!(defaults.bandwidth_bytes_per_second(), None);
    assert_eq!(defaults.progress_timeout(), 150);
}

#[test]
fn conditions_keep_transition_time_when_status_is_unchanged() {
    use kubevirt_api::common::{Condition, set_condition};
    let mut conditions = vec![];
    assert!(set_condition(
        &mut conditions,
        Condition::new(
            condition_type::LIVE_MIGRATABLE,
            ConditionStatus::True,
            "",
            ""
        )
    ));
    let first = conditions[0].last_transition_time.clone();
    assert!(!set_condition(
        &mut conditions,
        Condition::new(
            condition_type::LIVE_MIGRATABLE,
            ConditionStatus::True,
            "",
            ""
        )
    ));
    assert!(set_condition(
        &mut conditions,
        Condition::new(
            condition_type::LIVE_MIGRATABLE,
            ConditionStatus::True,
            "Other",
            ""
        )
    ));
    assert_eq!(conditions[0].last_transition_time, first);
    assert_eq!(conditions.len(), 1);
}

#[test]
fn minimal_objects_serialise_without_empty_fields() {
    let vmi = VirtualMachineInstance::new("small", VirtualMachineInstanceSpec::default());
    let json = serde_json::to_value(&vmi).unwrap();
    assert_eq!(json["apiVersion"], "kubevirt.io/v1");
    assert_eq!(json["kind"], "VirtualMachineInstance");
    assert!(json.get("status").is_none());
    assert_eq!(json["spec"], serde_json::json!({"domain": {"devices": {}}}));
}

fn version(crd: &k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition)
-> &k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinitionVersion{
    assert_eq!(crd.spec.versions.len(), 1);
    &crd.spec.versions[0]
}

#[test]
fn crds_look_like_kubevirts() {
    let all = crds();
    let names: Vec<_> = all
        .iter()
        .map(|c| c.metadata.name.clone().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "virtualmachineinstances.kubevirt.io",
            "virtualmachines.kubevirt.io",
            "virtualmachineinstancemigrations.kubevirt.io",
            "kubevirts.kubevirt.io"
        ]
    );
    for (crd, short) in all.iter().zip(["vmi", "vm", "vmim", "kv"]) {
        assert_eq!(crd.spec.scope, "Namespaced");
        let names = &crd.spec.names;
        assert_eq!(names.short_names.as_ref().unwrap()[0], short);
        assert_eq!(names.categories.as_deref(), Some(&["all".to_string()][..]));
        let v = version(crd);
        assert!(v.served && v.storage);
        assert!(
            v.additional_printer_columns
                .as_ref()
                .is_some_and(|c| !c.is_empty())
        );
    }
    // The VMI has no status subresource; the others do.
    assert!(version(&all[0]).subresources.is_none());
    for crd in &all[1..] {
        assert!(version(crd).subresources.as_ref().unwrap().status.is_some());
    }
    let vmi_columns: Vec<_> = version(&all[0])
        .additional_printer_columns
        .as_ref()
        .unwrap()
        .iter()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(
        vmi_columns,
        [
            "Age",
            "Phase",
            "IP",
            "NodeName",
            "Ready",
            "Live-Migratable",
            "Paused"
        ]
    );

    // Unmodelled fields survive the API server's pruning, and no enums restrict values.
    let schema = serde_json::to_value(&version(&all[0]).schema).unwrap();
    let spec = &schema["openAPIV3Schema"]["properties"]["spec"];
    assert_eq!(spec["x-kubernetes-preserve-unknown-fields"], true);
    assert_eq!(
        spec["properties"]["domain"]["x-kubernetes-preserve-unknown-fields"],
        true
    );
    assert!(spec["properties"]["evictionStrategy"].get("enum").is_none());
    let status = &schema["openAPIV3Schema"]["properties"]["status"];
    assert_eq!(
        status["properties"]["migrationState"]["x-kubernetes-preserve-unknown-fields"],
        true
    );
}

#[test]
fn a_list_with_an_eviction_strategy_from_a_newer_kubevirt_still_reads() {
    let list: serde_json::Value = serde_json::json!({
        "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstanceList",
        "metadata": {}, "items": [
            {"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
             "metadata": {"name": "future", "namespace": "vms"},
             "spec": {"domain": {"devices": {}}, "evictionStrategy": "MoveToTheMoon"}},
            {"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
             "metadata": {"name": "today", "namespace": "vms"},
             "spec": {"domain": {"devices": {}}, "evictionStrategy": "LiveMigrate"}}
        ]
    });
    let items: Vec<VirtualMachineInstance> =
        serde_json::from_value(list["items"].clone()).expect("the list reads");
    assert_eq!(
        items[0].spec.eviction_strategy,
        Some(EvictionStrategy::Unrecognized)
    );
    assert_eq!(
        items[1].spec.eviction_strategy,
        Some(EvictionStrategy::LiveMigrate)
    );
}
