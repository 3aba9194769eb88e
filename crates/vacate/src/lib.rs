//! vacate: node-drain orchestration for Kubernetes clusters that run KubeVirt VMs.
//!
//! - [`planner`]: the rules, a pure function from a node snapshot to the next actions;
//! - [`cluster`]: the Kubernetes I/O that watches, builds snapshots and carries out actions;
//! - [`config`]: the configuration file and its validation;
//! - [`metrics`] and [`server`]: what vacate shows to Prometheus and probes;
//! - [`commands`]: the command-line subcommands.

pub mod cluster;
pub mod commands;
pub mod config;
pub mod error;
pub mod labels;
pub mod memory;
pub mod metrics;
pub mod planner;
pub mod server;

#[cfg(test)]
mod fuzz_tests;
