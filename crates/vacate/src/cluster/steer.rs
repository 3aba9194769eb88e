//! Steering migrations during a rollout: what the planner needs to send each migration to a
//! node that is not waiting for its own drain ([`planner::Steering`]). The room on the nodes
//! is read from the API server's watch cache at most every few seconds, whatever the number
//! of draining nodes; what vacate steered since that read is reserved on top of it.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use super::cached::CachedNode;
use kube::ResourceExt;

use super::Context;
use super::gate::rooms;
use super::snapshot::HOSTNAME_LABEL;
use crate::planner::capacity::{Resources, Target};
use crate::planner::{SteerTarget, Steering};

/// How long a read of the nodes' room serves.
const ROOM_TTL: Duration = Duration::from_secs(5);

/// The room on the nodes migrations may be steered to, as last read, and what was steered to
/// them since.
#[derive(Default)]
pub struct Rooms {
    read_at: Option<Instant>,
    /// Ready, schedulable, untainted nodes with a hostname label: (room, hostname).
    targets: Vec<(Target, String)>,
    /// What was steered to each node (by name) since the read.
    reserved: HashMap<String, Reserved>,
}

/// The migrations steered to one node since the room was read.
#[derive(Clone, Default)]
struct Reserved {
    /// Their requests, taken from the room read before them.
    requests: Resources,
    /// Their namespaces and names: counted as coming in until the migration cache shows
    /// them, which then counts them itself for as long as they run.
    migrations: Vec<(String, String)>,
}

/// The first KubeVirt release whose migrations take `spec.addedNodeSelector`.
const ADDED_NODE_SELECTOR_SINCE: (u64, u64) = (1, 6);

/// `major.minor` of a KubeVirt version such as `v1.9.0` or `v1.6.1-rc.0`.
pub fn minor_version(version: &str) -> Option<(u64, u64)> {
    let mut parts = version
        .trim()
        .trim_start_matches('v')
        .split(['.', '-', '+']);
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// Whether a node waits for a drain of its own: the maintenance or upgrade label is set.
fn in_rollout(node: &CachedNode, config: &crate::config::Config) -> bool {
    let labels = node.labels();
    labels.contains_key(&config.node.request_label)
        || labels.contains_key(&config.upgrade.request_label)
}

impl Context {
    /// Where the migrations of `node` may be steered now.
    pub(super) async fn steering(&self, node: &str) -> Steering {
        let config = &self.config;
        if !config.migration.steer_rollouts {
            return Steering::Off;
        }
        let fleet = self.stores.nodes.state();
        let waiting: HashSet<String> = fleet
            .iter()
            .filter(|n| config.node.selector.matches(n.labels()) && in_rollout(n, config))
            .map(|n| n.name_any())
            .collect();
        if !waiting.iter().any(|n| n != node) {
            return Steering::Off;
        }
        let kubevirt = self.stores.kubevirt.state().first().cloned();
        match kubevirt.as_ref().and_then(|kv| kv.observed_version()) {
            None => {
                return Steering::Unavailable(
                    "KubeVirt's version is not known yet (status.observedKubeVirtVersion)".into(),
                );
            }
            Some(version) => {
                if minor_version(version).is_none_or(|v| v < ADDED_NODE_SELECTOR_SINCE) {
                    return Steering::Unavailable(format!(
                        "KubeVirt {version} does not take spec.addedNodeSelector on migrations \
                         (1.6 and later do)"
                    ));
                }
            }
        }
        let rooms = match self.rooms().await {
            Ok(rooms) => rooms,
            Err(error) => {
                return Steering::Unavailable(format!(
                    "the room on the other nodes could not be read: {error}"
                ));
            }
        };
        // Unfinished migrations vacate steered, by the hostname they select.
        let mut inbound: HashMap<String, u32> = HashMap::new();
        for m in self.stores.migrations.state() {
            if m.is_final() {
                continue;
            }
            if let Some(host) = m.spec.added_node_selector.get(HOSTNAME_LABEL) {
                *inbound.entry(host.clone()).or_default() += 1;
            }
        }
        let targets = rooms
            .targets
            .iter()
            .filter(|(t, _)| !waiting.contains(&t.name))
            .map(|(t, host)| {
                let mut room = t.clone();
                let mut coming = inbound.get(host).copied().unwrap_or(0);
                if let Some(reserved) = rooms.reserved.get(&t.name) {
                    room.free.cpu_millis -= reserved.requests.cpu_millis;
                    room.free.memory_bytes -= reserved.requests.memory_bytes;
                    room.pods_free -= reserved.migrations.len() as i64;
                    // Created but not in the migration cache yet: coming in all the same.
                    // (Once there, the cache counts them while they run, and not after:
                    // a finished migration frees its slot before the room is read again.)
                    coming += reserved
                        .migrations
                        .iter()
                        .filter(|(ns, name)| !self.in_migration_cache(ns, name))
                        .count() as u32;
                }
                SteerTarget {
                    room,
                    hostname: host.clone(),
                    inbound: coming,
                }
            })
            .collect();
        Steering::On {
            targets,
            max_inbound: config.migration.max_inbound_per_node.get(),
        }
    }

    /// The room on every node migrations could be steered to, read again when older than
    /// [`ROOM_TTL`].
    async fn rooms(&self) -> crate::error::Result<RoomsView> {
        {
            let rooms = self.rooms.lock().expect("rooms lock");
            if rooms.read_at.is_some_and(|at| at.elapsed() < ROOM_TTL) {
                return Ok(RoomsView {
                    targets: rooms.targets.clone(),
                    reserved: rooms.reserved.clone(),
                });
            }
        }
        let nodes = self.all_nodes().await?;
        // Filled before the shell acts (`Stores::wait_until_ready`).
        let used = self.stores.pod_usage.by_node().unwrap_or_default();
        let targets = rooms(&used, nodes.iter().map(|n| &**n));
        let by_name: HashMap<String, &CachedNode> =
            nodes.iter().map(|n| (n.name_any(), &**n)).collect();
        let targets: Vec<(Target, String)> = targets
            .into_iter()
            .filter_map(|t| {
                let node = by_name.get(&t.name)?;
                if node.repels_pods {
                    return None;
                }
                let host = node.labels().get(HOSTNAME_LABEL)?.to_string();
                Some((t, host))
            })
            .collect();
        let mut rooms = self.rooms.lock().expect("rooms lock");
        rooms.read_at = Some(Instant::now());
        rooms.targets = targets.clone();
        rooms.reserved.clear();
        Ok(RoomsView {
            targets,
            reserved: HashMap::new(),
        })
    }

    /// Notes migration `namespace/name` steered to the node whose hostname label is `host`,
    /// until the next read of the room shows its target pod.
    pub(super) fn reserve(&self, host: &str, requests: Resources, namespace: &str, name: &str) {
        let mut rooms = self.rooms.lock().expect("rooms lock");
        let Some(target) = rooms
            .targets
            .iter()
            .find(|(_, h)| h == host)
            .map(|(t, _)| t.name.clone())
        else {
            return;
        };
        let entry = rooms.reserved.entry(target).or_default();
        entry.requests.add(requests);
        entry
            .migrations
            .push((namespace.to_string(), name.to_string()));
    }
}

struct RoomsView {
    targets: Vec<(Target, String)>,
    reserved: HashMap<String, Reserved>,
}

#[cfg(test)]
mod tests {
    use super::minor_version;

    #[test]
    fn kubevirt_versions_are_read_to_the_minor() {
        assert_eq!(minor_version("v1.9.0"), Some((1, 9)));
        assert_eq!(minor_version("1.6.1-rc.0"), Some((1, 6)));
        assert_eq!(minor_version("v1.10"), Some((1, 10)));
        assert_eq!(minor_version("devel"), None);
        assert_eq!(minor_version(""), None);
    }
}
