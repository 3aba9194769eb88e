//! Rust types for the `kubevirt.io/v1` API objects that matter when draining nodes:
//! [`VirtualMachineInstance`], [`VirtualMachine`], [`VirtualMachineInstanceMigration`] and
//! [`KubeVirt`].
//!
//! The field names and semantics follow KubeVirt's `staging/src/kubevirt.io/api/core/v1/types.go`.
//! Only the fields a drain controller (or a simulator of KubeVirt) needs are modelled; every other
//! field is ignored on deserialisation instead of rejected, so objects written by a real KubeVirt
//! always parse.
//!
//! Both the vacate daemon and the KubeVirt simulator of the testbed use these types, so what the
//! simulator writes is exactly what vacate reads. The testbed uses them too, and [`hash`], the
//! one stable hash of the workspace.

pub mod common;
pub mod crds;
pub mod hash;
pub mod kubevirt;
pub mod labels;
pub mod migration;
pub mod quantity;
pub mod vm;
pub mod vmi;

pub use common::{ConditionStatus, EvictionStrategy};
pub use crds::{crds, kubevirt_crd, vm_crd, vmi_crd, vmim_crd};
pub use kubevirt::{
    KubeVirt, KubeVirtConfiguration, KubeVirtSpec, KubeVirtStatus, MigrationConfiguration,
};
pub use migration::{
    MigrationAbortStatus, MigrationPhase, VirtualMachineInstanceMigration,
    VirtualMachineInstanceMigrationSpec, VirtualMachineInstanceMigrationStatus,
};
pub use vm::{RunStrategy, VirtualMachine, VirtualMachineSpec, VirtualMachineStatus};
pub use vmi::{
    LiveMigratability, VirtualMachineInstance, VirtualMachineInstanceMigrationState,
    VirtualMachineInstanceSpec, VirtualMachineInstanceStatus, VmiPhase,
};

/// The API group of every KubeVirt core object.
pub const GROUP: &str = "kubevirt.io";
/// The only served and stored version modelled here.
pub const VERSION: &str = "v1";
/// `kubevirt.io/v1`.
pub const API_VERSION: &str = "kubevirt.io/v1";
