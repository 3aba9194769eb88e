//! The vacate testbed: a real Kubernetes control plane (etcd, kube-apiserver,
//! kube-controller-manager, kube-scheduler) built from upstream Go modules, kwok playing
//! the kubelets, and the KubeVirt simulator, all on loopback. See docs/testbed.md.
//!
//! The `testbed` binary starts and stops it for people; [`TestCluster`] gives integration
//! tests a cluster, isolated namespaces and node sets, and [`TestEnv`] one test's share of it.

pub mod bench;
pub mod control_plane;
pub mod https;
pub mod kubeconfig;
pub mod monitoring_crds;
pub mod nodes;
pub mod paths;
pub mod pki;
pub mod process;
pub mod scenario;
pub mod seed;
pub mod test_support;
pub mod wait;

pub use control_plane::{ControlPlane, KUBE_VERSION, Options};
pub use nodes::NodeTemplate;
pub use scenario::Scenario;
pub use seed::{SeedOptions, SeedReport};
pub use test_support::{NodeSet, Seeded, TestCluster, TestEnv, TestNamespace};
pub use wait::{WaitError, wait_for, wait_until};
