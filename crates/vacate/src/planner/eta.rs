//! When a drain should end: the VMIs still on the node, migrated largest first over the
//! node's migration slots at the bandwidth migrations reach in this cluster, as the planner
//! starts them. The prediction covers the migrations; pods leave alongside them.

use super::*;

/// The predicted end of the node's migrations, or `None` when the bandwidth is not known yet
/// (no migration has finished in the cluster and the KubeVirt CR sets no bandwidth).
pub(super) fn predicted_end(s: &Snapshot, config: &Config) -> Option<DateTime<Utc>> {
    let bandwidth = s.cluster.bandwidth.filter(|b| *b > 0.0)?;
    let slots = s.cluster.migration_caps(config).0.max(1) as usize;
    let seconds = |vmi: &VmiView| vmi.memory as f64 / bandwidth;
    // Migrations under way have done part of their work.
    let mut running = Vec::new();
    let mut waiting = Vec::new();
    for vmi in s.vmis.iter().filter(|v| !v.finished) {
        let migration = s.migrations.iter().find(|m| {
            m.phase == MigrationPhase::Unfinished
                && m.namespace == vmi.namespace
                && m.vmi_name == vmi.name
        });
        match migration {
            Some(m) => {
                let elapsed = m
                    .created_at
                    .and_then(|at| (s.now - at).to_std().ok())
                    .map_or(0.0, |d| d.as_secs_f64());
                running.push((seconds(vmi) - elapsed).max(0.0));
            }
            None => waiting.push(seconds(vmi)),
        }
    }
    let makespan = makespan(slots, running, waiting);
    Some(s.now + chrono::Duration::milliseconds((makespan * 1000.0).round() as i64))
}

/// Seconds until the last job ends on `slots` parallel slots: the jobs under way keep their
/// slots, the waiting ones start largest first on whichever slot frees first.
pub(super) fn makespan(slots: usize, running: Vec<f64>, mut waiting: Vec<f64>) -> f64 {
    let mut free_at: Vec<f64> = running;
    // More migrations under way than slots (someone else's): the surplus ends first.
    free_at.resize(free_at.len().max(slots), 0.0);
    waiting.sort_by(|a, b| b.total_cmp(a));
    for job in waiting {
        let earliest = free_at
            .iter_mut()
            .min_by(|a, b| a.total_cmp(b))
            .expect("at least one slot");
        *earliest += job;
    }
    free_at.into_iter().fold(0.0, f64::max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn largest_first_over_the_slots() {
        assert_eq!(makespan(2, vec![], vec![4.0, 4.0, 4.0, 4.0]), 8.0);
        // 8, 4, 2, 2 on two slots: 8 | 4+2+2.
        assert_eq!(makespan(2, vec![], vec![2.0, 8.0, 2.0, 4.0]), 8.0);
        assert_eq!(makespan(2, vec![3.0], vec![4.0, 4.0]), 7.0);
        assert_eq!(makespan(1, vec![], vec![]), 0.0);
    }
}
