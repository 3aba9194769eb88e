//! VMI and VM lifecycle.

use anyhow::Result;
use kube::api::{DeleteParams, PostParams};
use kubevirt_api::labels::{CREATED_BY_LABEL, DOMAIN_ANNOTATION, NODE_NAME_LABEL};
use kubevirt_api::{VirtualMachine, VmiPhase};
use serde_json::json;

use crate::support::{Env, labels, live_migratable};

#[tokio::test]
async fn vmi_gets_a_launcher_pod_and_runs() -> Result<()> {
    let env = Env::new("sim-lifecycle", 2).await?;
    env.create_vmi(&env.vmi("web", "2Gi", Some("LiveMigrate"), |_| {}))
        .await?;
    let vmi = env.wait_running("web").await?;
    let node = vmi.node_name().expect("a node").to_string();
    assert!(
        env.nodes.names().contains(&node),
        "{node} is not one of the test's nodes"
    );
    assert_eq!(labels(&vmi).get(NODE_NAME_LABEL), Some(&node));
    assert_eq!(live_migratable(&vmi), Some((true, String::new())));
    let status = vmi.status.clone().unwrap_or_default();
    assert_eq!(status.active_pods.len(), 1);
    let phases: Vec<_> = status
        .phase_transition_timestamps
        .iter()
        .filter_map(|t| t.phase)
        .collect();
    assert_eq!(
        phases,
        [VmiPhase::Scheduling, VmiPhase::Scheduled, VmiPhase::Running]
    );

    let pods = env.launcher_pods(&vmi).await?;
    assert_eq!(pods.len(), 1);
    let pod = &pods[0];
    assert!(
        pod.metadata
            .name
            .as_deref()
            .unwrap()
            .starts_with("virt-launcher-web-")
    );
    let pod_labels = pod.metadata.labels.clone().unwrap_or_default();
    assert_eq!(pod_labels["kubevirt.io"], "virt-launcher");
    assert_eq!(pod_labels.get(CREATED_BY_LABEL), vmi.metadata.uid.as_ref());
    assert_eq!(pod_labels["app"], "web");
    assert_eq!(
        pod.metadata.annotations.as_ref().unwrap()[DOMAIN_ANNOTATION],
        "web"
    );
    let owner = &pod.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.controller),
        ("VirtualMachineInstance", Some(true))
    );
    assert_eq!(
        pod.spec.as_ref().unwrap().node_name.as_deref(),
        Some(node.as_str())
    );
    // As template.go renders it: KubeVirt's labels, the node selector on the label
    // virt-handler puts on its nodes, the readiness gate and its condition.
    assert_eq!(pod_labels["vm.kubevirt.io/name"], "web");
    assert_eq!(pod_labels["vmi.kubevirt.io/id"], "web");
    let annotations = pod.metadata.annotations.clone().unwrap_or_default();
    assert_eq!(
        annotations["kubectl.kubernetes.io/default-container"],
        "compute"
    );
    assert_eq!(annotations["testbed.vacate.io/termination-delay"], "1s");
    let spec = pod.spec.as_ref().unwrap();
    assert_eq!(
        spec.node_selector.as_ref().unwrap()["kubevirt.io/schedulable"],
        "true"
    );
    assert_eq!(
        spec.readiness_gates.as_ref().unwrap()[0].condition_type,
        "kubevirt.io/virtual-machine-unpaused"
    );
    assert!(
        pod.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c
                .iter()
                .any(|c| c.type_ == "kubevirt.io/virtual-machine-unpaused" && c.status == "True")),
        "{:?}",
        pod.status
    );
    assert_eq!(
        status.launcher_container_image_version.as_deref(),
        spec.containers[0].image.as_deref()
    );
    // Every node virt-handler serves carries kubevirt.io/schedulable=true.
    let nodes: kube::Api<k8s_openapi::api::core::v1::Node> = kube::Api::all(env.client.clone());
    for n in env.nodes.names() {
        let labels = nodes.get(n).await?.metadata.labels.unwrap_or_default();
        assert_eq!(
            labels.get("kubevirt.io/schedulable").map(String::as_str),
            Some("true"),
            "{n}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn live_migratable_condition_for_each_reason() -> Result<()> {
    let env = Env::new("sim-migratable", 2).await?;
    env.bound_pvc("rwo", "ReadWriteOnce").await?;
    env.bound_pvc("rwx", "ReadWriteMany").await?;
    let cases = [
        (
            "rwo-disk",
            "DisksNotLiveMigratable",
            json!({"volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "rwo"}}]}),
        ),
        (
            "rwx-disk",
            "",
            json!({"volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "rwx"}}]}),
        ),
        (
            "bridge",
            "InterfaceNotLiveMigratable",
            json!({"interfaces": [{"name": "default", "bridge": {}}]}),
        ),
        (
            "hostdev",
            "HostDeviceNotLiveMigratable",
            json!({"hostDevices": [{"name": "nic", "deviceName": ""}]}),
        ),
        (
            "gpu",
            "HostDeviceNotLiveMigratable",
            json!({"gpus": [{"name": "gpu", "deviceName": ""}]}),
        ),
    ];
    for (name, _, extra) in &cases {
        let vmi = env.vmi(name, "1Gi", None, |v| {
            if let Some(volumes) = extra.get("volumes") {
                v["spec"]["volumes"] = volumes.clone();
                v["spec"]["domain"]["devices"]["disks"] = json!([{"name": "data", "disk": {}}]);
            }
            for key in ["interfaces", "hostDevices", "gpus"] {
                if let Some(x) = extra.get(key) {
                    v["spec"]["domain"]["devices"][key] = x.clone();
                }
            }
        });
        env.create_vmi(&vmi).await?;
    }
    for (name, reason, _) in &cases {
        let vmi = env.wait_running(name).await?;
        let expected = (reason.is_empty(), reason.to_string());
        assert_eq!(live_migratable(&vmi), Some(expected), "VMI {name}");
    }
    // The launcher pod references the PVC, so drain tools and schedulers see it.
    let rwo = env.vmis().get("rwo-disk").await?;
    let pod = env.launcher_pods(&rwo).await?.remove(0);
    let claims: Vec<_> = pod
        .spec
        .unwrap()
        .volumes
        .unwrap_or_default()
        .into_iter()
        .filter_map(|v| v.persistent_volume_claim.map(|c| c.claim_name))
        .collect();
    assert_eq!(claims, ["rwo"]);
    Ok(())
}

#[tokio::test]
async fn deleting_the_launcher_pod_ends_the_vmi() -> Result<()> {
    let env = Env::new("sim-podloss", 1).await?;
    env.create_vmi(&env.vmi("lost", "1Gi", None, |_| {}))
        .await?;
    let vmi = env.wait_running("lost").await?;
    let pod = env.launcher_pods(&vmi).await?.remove(0);
    env.pods()
        .delete(
            pod.metadata.name.as_deref().unwrap(),
            &DeleteParams::default(),
        )
        .await?;
    let done = env.wait_vmi("lost", "final", |v| v.is_final()).await?;
    assert_eq!(
        done.phase(),
        Some(VmiPhase::Succeeded),
        "a gracefully deleted pod shuts the guest down"
    );
    Ok(())
}

#[tokio::test]
async fn vm_with_run_strategy_always_recreates_its_vmi() -> Result<()> {
    let env = Env::new("sim-vm", 2).await?;
    let template = env.vmi("db", "2Gi", Some("None"), |_| {});
    let vm: VirtualMachine = serde_json::from_value(json!({
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachine",
        "metadata": {"name": "db", "namespace": env.ns.name()},
        "spec": {
            "runStrategy": "Always",
            "template": {"metadata": {"labels": {"app": "db"}, "annotations": template.metadata.annotations}, "spec": template.spec}
        }
    }))?;
    let vms: kube::Api<VirtualMachine> = kube::Api::namespaced(env.client.clone(), env.ns.name());
    vms.create(&PostParams::default(), &vm).await?;
    let first = env.wait_running("db").await?;
    let owner = &first.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str()),
        ("VirtualMachine", "db")
    );
    assert_eq!(labels(&first)["app"], "db");

    // Deleted VMI: the VM starts a new one.
    env.vmis().delete("db", &DeleteParams::default()).await?;
    let first_uid = first.metadata.uid.clone();
    let second = env
        .wait_vmi("db", "a new running VMI", |v| {
            v.metadata.uid != first_uid && v.is_running()
        })
        .await?;

    // Evicted launcher pod (eviction strategy None): the VMI shuts down, the VM restarts it.
    let pod = env.launcher_pods(&second).await?.remove(0);
    env.pods()
        .evict(pod.metadata.name.as_deref().unwrap(), &Default::default())
        .await?;
    let second_uid = second.metadata.uid.clone();
    env.wait_vmi("db", "restarted after eviction", |v| {
        v.metadata.uid != second_uid && v.metadata.uid != first_uid && v.is_running()
    })
    .await?;
    let vm = vms.get("db").await?;
    let status = vm.status.unwrap_or_default();
    assert!(status.created);

    // Halted: the VMI goes away.
    vms.patch(
        "db",
        &Default::default(),
        &kube::api::Patch::Merge(json!({"spec": {"runStrategy": "Halted"}})),
    )
    .await?;
    testbed::wait_for(
        "the VMI of a halted VM to be deleted",
        crate::support::TIMEOUT,
        || async { Ok(env.vmis().get_opt("db").await?.is_none()) },
    )
    .await?;
    Ok(())
}
