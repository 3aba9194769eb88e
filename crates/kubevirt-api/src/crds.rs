//! The CustomResourceDefinitions of the four KubeVirt objects, shaped like the ones KubeVirt's
//! operator installs (`pkg/virt-operator/resource/generate/components/crds.go`): same names,
//! short names, categories, printer columns and subresources.
//!
//! The schemas are generated from the Rust types, with two adjustments so they behave like
//! KubeVirt's for clients that send fields this crate does not model:
//! * every object under `spec` and `status` preserves unknown fields (the API server would
//!   otherwise prune them), and
//! * no `enum` restrictions (KubeVirt's schemas have none; phases and strategies are free strings).

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;
use serde_json::Value;

use crate::{KubeVirt, VirtualMachine, VirtualMachineInstance, VirtualMachineInstanceMigration};

/// All four CRDs: VirtualMachineInstance, VirtualMachine, VirtualMachineInstanceMigration, KubeVirt.
pub fn crds() -> Vec<CustomResourceDefinition> {
    vec![vmi_crd(), vm_crd(), vmim_crd(), kubevirt_crd()]
}

/// `virtualmachineinstances.kubevirt.io`: no status subresource, as in KubeVirt.
pub fn vmi_crd() -> CustomResourceDefinition {
    let mut crd = relax(VirtualMachineInstance::crd());
    for version in &mut crd.spec.versions {
        // KubeVirt's VMI CRD has no subresources: virt-handler and virt-controller write status
        // with ordinary updates, and so does everyone else (e.g. the eviction webhook's JSON patch
        // of /status/evacuationNodeName on the main resource).
        version.subresources = None;
    }
    crd
}

/// `virtualmachines.kubevirt.io`, with a status subresource.
pub fn vm_crd() -> CustomResourceDefinition {
    relax(VirtualMachine::crd())
}

/// `virtualmachineinstancemigrations.kubevirt.io`, with a status subresource.
pub fn vmim_crd() -> CustomResourceDefinition {
    relax(VirtualMachineInstanceMigration::crd())
}

/// `kubevirts.kubevirt.io`, with a status subresource.
pub fn kubevirt_crd() -> CustomResourceDefinition {
    relax(KubeVirt::crd())
}

/// Schema for fields kept as free-form objects (e.g. a template's `metadata`), as KubeVirt does.
pub fn preserve_unknown_object(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true
    })
}

fn relax(crd: CustomResourceDefinition) -> CustomResourceDefinition {
    let Ok(mut value) = serde_json::to_value(&crd) else {
        return crd;
    };
    if let Some(versions) = value
        .pointer_mut("/spec/versions")
        .and_then(Value::as_array_mut)
    {
        for version in versions {
            for part in ["spec", "status"] {
                let pointer = format!("/schema/openAPIV3Schema/properties/{part}");
                if let Some(schema) = version.pointer_mut(&pointer) {
                    open_objects(schema);
                }
            }
        }
    }
    serde_json::from_value(value).unwrap_or(crd)
}

fn open_objects(schema: &mut Value) {
    let Some(map) = schema.as_object_mut() else {
        return;
    };
    map.remove("enum");
    if map.contains_key("properties") {
        map.insert(
            "x-kubernetes-preserve-unknown-fields".into(),
            Value::Bool(true),
        );
    }
    for (key, child) in map.iter_mut() {
        match key.as_str() {
            "properties" => {
                if let Some(props) = child.as_object_mut() {
                    props.values_mut().for_each(open_objects);
                }
            }
            "items" | "additionalProperties" => open_objects(child),
            "allOf" | "anyOf" | "oneOf" => {
                if let Some(list) = child.as_array_mut() {
                    list.iter_mut().for_each(open_objects);
                }
            }
            _ => {}
        }
    }
}
