//! Well-known labels, annotations and finalizers, as KubeVirt defines them in
//! `staging/src/kubevirt.io/api/core/v1/types.go`.

/// `kubevirt.io`: on virt-launcher pods its value is [`VIRT_LAUNCHER`] (`AppLabel`).
pub const APP_LABEL: &str = "kubevirt.io";
/// Value of [`APP_LABEL`] on every virt-launcher pod.
pub const VIRT_LAUNCHER: &str = "virt-launcher";
/// Label on virt-launcher pods: the UID of the VMI the pod was created for (`CreatedByLabel`).
pub const CREATED_BY_LABEL: &str = "kubevirt.io/created-by";
/// Label on VMIs and virt-launcher pods: the node the VMI runs on (`NodeNameLabel`).
pub const NODE_NAME_LABEL: &str = "kubevirt.io/nodeName";
/// Annotation on virt-launcher pods: the name of the VMI (`DomainAnnotation`).
pub const DOMAIN_ANNOTATION: &str = "kubevirt.io/domain";
/// Label on migrations: the name of the migrated VMI (`MigrationSelectorLabel`).
pub const MIGRATION_SELECTOR_LABEL: &str = "kubevirt.io/vmi-name";
/// Label on migration target pods: the UID of the migration (`MigrationJobLabel`).
pub const MIGRATION_JOB_LABEL: &str = "kubevirt.io/migrationJobUID";
/// Annotation on migration target pods: the migration's name (`MigrationJobNameAnnotation`).
pub const MIGRATION_JOB_NAME_ANNOTATION: &str = "kubevirt.io/migrationJobName";
/// Label on a VMI during a migration: the target node (`MigrationTargetNodeNameLabel`).
pub const MIGRATION_TARGET_NODE_NAME_LABEL: &str = "kubevirt.io/migrationTargetNodeName";
/// Annotation on migrations created by the evacuation controller: the node being evacuated
/// (`EvacuationMigrationAnnotation`).
pub const EVACUATION_MIGRATION_ANNOTATION: &str = "kubevirt.io/evacuationMigration";
/// VMI annotation naming who asked for the eviction (`EvictionSourceAnnotation`); with the
/// value `descheduler` KubeVirt v1.9 gives the evacuation migration `system-maintenance`
/// priority instead of `system-critical`.
pub const EVICTION_SOURCE_ANNOTATION: &str = "kubevirt.io/eviction-source";
/// The service account of virt-controller, the only user allowed to set a migration's
/// `spec.priority` (`hasRequestOriginatedFromVirtController`, migration-create-admitter.go).
pub const VIRT_CONTROLLER_USER: &str = "system:serviceaccount:kubevirt:kubevirt-controller";
/// Finalizer that KubeVirt's mutating webhook adds to every migration (`VirtualMachineInstanceMigrationFinalizer`).
pub const MIGRATION_FINALIZER: &str = "kubevirt.io/migrationJobFinalize";
/// Finalizer KubeVirt puts on VMIs (`VirtualMachineInstanceFinalizer`).
pub const VMI_FINALIZER: &str = "foregroundDeleteVirtualMachine";
/// `generateName` of the migrations created by KubeVirt's evacuation controller
/// (`pkg/virt-controller/watch/drain/evacuation/evacuation.go`).
pub const EVACUATION_MIGRATION_NAME_PREFIX: &str = "kubevirt-evacuation-";
/// The namespace a default KubeVirt install lives in.
pub const KUBEVIRT_NAMESPACE: &str = "kubevirt";
/// The name of the KubeVirt CR of a default install.
pub const KUBEVIRT_NAME: &str = "kubevirt";
/// Taint KubeVirt uses by default to find nodes to drain (`NodeDrainTaintDefaultKey`).
pub const NODE_DRAIN_TAINT_DEFAULT_KEY: &str = "kubevirt.io/drain";

/// Node label virt-handler sets to `"true"` on the nodes it serves; virt-launcher pods select
/// it (`NodeSchedulable`, types.go).
pub const NODE_SCHEDULABLE_LABEL: &str = "kubevirt.io/schedulable";
/// virt-launcher pod label: the VMI's host name (`DeprecatedVirtualMachineNameLabel`).
pub const VM_NAME_LABEL: &str = "vm.kubevirt.io/name";
/// virt-launcher pod label: the VMI's name, truncated and hashed beyond 63 characters
/// (`VirtualMachineInstanceIDLabel`, `CalculateVirtualMachineInstanceID`).
pub const VMI_ID_LABEL: &str = "vmi.kubevirt.io/id";
/// The readiness gate of virt-launcher pods (`VirtualMachineUnpaused`, types.go).
pub const VIRTUAL_MACHINE_UNPAUSED: &str = "kubevirt.io/virtual-machine-unpaused";
/// Annotation virt-controller puts on launcher pods naming their main container.
pub const DEFAULT_CONTAINER_ANNOTATION: &str = "kubectl.kubernetes.io/default-container";
/// Annotation on launcher pods: migrations use unix sockets (`MigrationTransportUnixAnnotation`).
pub const MIGRATION_TRANSPORT_UNIX_ANNOTATION: &str = "kubevirt.io/migrationTransportUnix";
/// The descheduler's annotation asking that the pod be evicted, never deleted
/// (`descheduler.EvictOnlyAnnotation`), on every launcher pod.
pub const EVICT_ONLY_ANNOTATION: &str = "descheduler.alpha.kubernetes.io/request-evict-only";
