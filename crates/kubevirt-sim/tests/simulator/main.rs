//! Integration tests of the KubeVirt simulator against the testbed's real control plane
//! (etcd, kube-apiserver, controller-manager, scheduler, kwok). One test binary, so one
//! cluster serves every test; each test works in its own namespace and node set.

mod drain;
mod eviction;
mod lifecycle;
mod migration;
mod releases;
mod support;
mod timing;
