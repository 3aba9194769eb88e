//! Unit tests of the fleet rules: windows, limits, capacity, upgrades and schedules.

use chrono::TimeZone;

use super::capacity::{self, Resources, Target, Workload, parse_quantity};
use super::fleet::{self, FleetNode};
use super::tests::{node, snapshot, t, vmi, with_state, written};
use super::windows::{self, Verdict};
use super::*;
use crate::config::Config;

fn config(toml: &str) -> Config {
    Config::from_toml_and_env(toml, Vec::<(String, String)>::new()).unwrap()
}

fn at(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(y, mo, d, h, mi, s).unwrap()
}

const NIGHTLY: &str = r#"
[[windows]]
name = "nightly"
cron = "0 2 * * *"
duration = "4h"
timezone = "Europe/Berlin"
"#;

#[test]
fn window_is_open_from_its_cron_time_for_its_duration_in_its_time_zone() {
    let c = config(NIGHTLY);
    let w = &c.windows[0];
    // 02:00 in Berlin is 01:00 UTC in winter.
    let before = windows::status(w, at(2026, 11, 26, 0, 59, 59));
    assert!(!before.open);
    assert_eq!(before.next_open, Some(at(2026, 11, 26, 1, 0, 0)));
    let inside = windows::status(w, at(2026, 11, 26, 1, 0, 0));
    assert!(inside.open);
    assert_eq!(inside.closes_at, Some(at(2026, 11, 26, 5, 0, 0)));
    let after = windows::status(w, at(2026, 11, 26, 5, 0, 0));
    assert!(!after.open);
    assert_eq!(after.next_open, Some(at(2026, 11, 27, 1, 0, 0)));
    // Summer time: 02:00 in Berlin is 00:00 UTC.
    assert!(windows::status(w, at(2026, 7, 1, 0, 30, 0)).open);
}

#[test]
fn six_field_cron_with_seconds_and_first_sunday_of_the_month() {
    let c = config(
        r#"
        [[windows]]
        name = "short"
        cron = "30 */5 * * * *"
        duration = "1m"
        [[windows]]
        name = "first-sunday"
        cron = "0 2 1-7 * SUN"
        duration = "1h"
        "#,
    );
    assert!(windows::status(&c.windows[0], at(2026, 11, 26, 10, 5, 30)).open);
    assert!(!windows::status(&c.windows[0], at(2026, 11, 26, 10, 5, 29)).open);
    // The first Sunday of December 2026 is the 6th (day of month AND day of week).
    let s = windows::status(&c.windows[1], at(2026, 11, 26, 0, 0, 0));
    assert_eq!(s.next_open, Some(at(2026, 12, 6, 2, 0, 0)));
}

#[test]
fn windows_gate_only_the_kinds_they_apply_to() {
    let c = config(
        r#"
        [[windows]]
        name = "upgrades"
        cron = "0 2 * * *"
        duration = "1h"
        applies_to = ["upgrade"]
        on_close = "abort"
        "#,
    );
    let noon = at(2026, 11, 26, 12, 0, 0);
    assert_eq!(
        windows::verdict(&c, RequestKind::Maintenance, noon),
        Verdict::Ungated
    );
    match windows::verdict(&c, RequestKind::Upgrade, noon) {
        Verdict::Closed {
            next_open,
            abort,
            message,
        } => {
            assert_eq!(next_open, Some(at(2026, 11, 27, 2, 0, 0)));
            assert!(abort);
            assert!(
                message.contains("upgrades opens at 2026-11-27 02:00:00"),
                "{message}"
            );
        }
        other => panic!("expected closed, got {other:?}"),
    }
}

#[test]
fn a_request_outside_its_window_waits_in_pending_and_wakes_at_the_opening() {
    let c = config(NIGHTLY);
    let mut s = snapshot(node(Some("true"), false));
    s.now = at(2026, 11, 26, 12, 0, 0);
    let p = plan(&s, &c);
    assert!(!p.actions.contains(&Action::Cordon));
    assert_eq!(p.phase, Phase::Pending);
    assert_eq!(p.blocked, Some(BlockReason::OutsideWindow));
    assert_eq!(
        p.requeue_after,
        Some(std::time::Duration::from_secs(13 * 3600))
    );
    // Inside the window it starts.
    let pending = written(&p);
    let mut s = with_state(s, &pending);
    s.now = at(2026, 11, 27, 1, 0, 5);
    let p = plan(&s, &c);
    assert!(p.actions.contains(&Action::Cordon));
    assert_ne!(written(&p).phase, Phase::Pending);
}

#[test]
fn a_drain_in_progress_finishes_or_is_aborted_when_its_window_closes() {
    let start = at(2026, 11, 26, 1, 0, 0);
    let mut s = snapshot(node(Some("true"), false));
    s.now = start;
    s.vmis = vec![vmi("a")];
    let finish = config(NIGHTLY);
    let draining = written(&plan(&s, &finish));
    assert!(draining.phase.is_draining());
    let mut s = with_state(s, &draining);
    s.node.unschedulable = true;
    s.now = at(2026, 11, 26, 5, 0, 1);
    // on_close = "finish": the drain goes on.
    let p = plan(&s, &finish);
    assert!(!p.actions.contains(&Action::Uncordon));
    assert_ne!(p.phase, Phase::Pending);
    // on_close = "abort": vacate gives the node back and waits for the next window.
    let abort = config(&format!("{NIGHTLY}on_close = \"abort\"\n"));
    let p = plan(&s, &abort);
    assert!(p.actions.contains(&Action::Uncordon));
    assert_eq!(p.phase, Phase::Pending);
    assert_eq!(p.blocked, Some(BlockReason::OutsideWindow));
    let pending = written(&p);
    assert_eq!(pending.request_value, "true");
    // The state is written before the uncordon runs, so it still calls the cordon vacate's:
    // if the uncordon failed, the next look lifts it...
    assert!(pending.cordoned_by_vacate);
    let mut s = with_state(s, &pending);
    let p = plan(&s, &abort);
    assert!(p.actions.contains(&Action::Uncordon));
    assert_eq!(p.phase, Phase::Pending);
    // ...and once it is lifted the cordon is nobody's, and the node waits untouched.
    s.node.unschedulable = false;
    let p = plan(&s, &abort);
    assert!(!p.actions.contains(&Action::Uncordon));
    assert!(!written(&p).cordoned_by_vacate);
    // Withdrawing the request while a vacate cordon is left lifts it too.
    let mut s2 = with_state(s.clone(), &pending);
    s2.node.unschedulable = true;
    s2.node.request_value = None;
    let p = plan(&s2, &abort);
    assert!(p.actions.contains(&Action::Uncordon));
    assert_eq!(p.state, NextState::Clear);
}

fn fleet_node(name: &str, in_maintenance: bool, labels: &[(&str, &str)]) -> FleetNode {
    FleetNode {
        name: name.into(),
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ready: true,
        unschedulable: in_maintenance,
        in_maintenance,
        started_at: in_maintenance.then(|| t(0)),
        request_value: labels
            .iter()
            .find(|(k, _)| *k == "vacate.io/maintenance")
            .map(|(_, v)| v.to_string()),
        waiting_for_place: !in_maintenance
            && labels.iter().any(|(k, _)| *k == "vacate.io/maintenance"),
        vm_memory: 0,
    }
}

/// Nodes waiting for a place (with the same VM memory) take them in name order, whatever order they are looked at
/// in; a node held back by something else (its window, its room) does not hold others up.
#[test]
fn waiting_nodes_take_the_free_places_in_name_order() {
    let c = config("[fleet]\nmax_draining = 2");
    let req = [("vacate.io/maintenance", "true")];
    let mut nodes = vec![
        fleet_node("a", true, &req),
        fleet_node("b", false, &req),
        fleet_node("c", false, &req),
        fleet_node("d", false, &req),
    ];
    // One place free: b's, not c's or d's.
    assert!(fleet::check(&c, "b", &nodes, None, t(0)).is_ok());
    for late in ["c", "d"] {
        let gate = fleet::check(&c, late, &nodes, None, t(0)).unwrap_err();
        assert_eq!(gate.reason, BlockReason::FleetLimit);
        assert!(
            gate.message.contains("ahead of this one: b"),
            "{}",
            gate.message
        );
        assert_eq!(gate.retry_at, Some(t(10)), "looked at again soon");
    }
    // b is held back by something else: c may go.
    nodes[1].waiting_for_place = false;
    assert!(fleet::check(&c, "c", &nodes, None, t(0)).is_ok());
    assert!(fleet::check(&c, "d", &nodes, None, t(0)).is_err());
}

/// A rollout takes its lightest nodes first (the least VM memory): their VMs need the least
/// room outside the rollout, the only final place the first nodes' VMs have.
#[test]
fn the_lightest_nodes_take_the_free_places_first() {
    let c = config("[fleet]\nmax_draining = 1");
    let req = [("vacate.io/maintenance", "true")];
    let nodes = vec![
        fleet_node("a", false, &req).with_vm_memory(40 << 30),
        fleet_node("b", false, &req).with_vm_memory(8 << 30),
        fleet_node("c", false, &req).with_vm_memory(8 << 30),
    ];
    assert!(fleet::check(&c, "b", &nodes, None, t(0)).is_ok());
    for later in ["a", "c"] {
        let gate = fleet::check(&c, later, &nodes, None, t(0)).unwrap_err();
        assert!(
            gate.message.contains("ahead of this one: b"),
            "{}",
            gate.message
        );
    }
}

#[test]
fn fleet_limit_counts_nodes_in_maintenance_as_a_number_or_a_percentage() {
    let nodes: Vec<FleetNode> = (0..10)
        .map(|i| fleet_node(&format!("n{i}"), i < 2, &[]))
        .collect();
    let two = config("[fleet]\nmax_draining = 2");
    let gate = fleet::check(&two, "n5", &nodes, None, t(10)).unwrap_err();
    assert_eq!(gate.reason, BlockReason::FleetLimit);
    assert!(gate.message.contains("n0, n1"), "{}", gate.message);
    let three = config("[fleet]\nmax_draining = 3");
    assert!(fleet::check(&three, "n5", &nodes, None, t(10)).is_ok());
    // 25 % of 10 nodes is 2 (rounded down); 5 % would be 0 and is raised to 1.
    let quarter = config("[fleet]\nmax_draining = \"25%\"");
    assert!(fleet::check(&quarter, "n5", &nodes, None, t(10)).is_err());
    let thirty = config("[fleet]\nmax_draining = \"30%\"");
    assert!(fleet::check(&thirty, "n5", &nodes, None, t(10)).is_ok());
    assert_eq!(crate::config::Limit::Percent(5).of(10), 1);
}

#[test]
fn pools_have_limits_of_their_own() {
    let nodes = vec![
        fleet_node("gpu-1", true, &[("pool", "gpu")]),
        fleet_node("gpu-2", false, &[("pool", "gpu")]),
        fleet_node("cpu-1", false, &[("pool", "cpu")]),
    ];
    let c = config(
        r#"
        [fleet]
        max_draining = 5
        [[fleet.pools]]
        name = "gpu"
        selector = "pool=gpu"
        max_draining = 1
        "#,
    );
    let gate = fleet::check(&c, "gpu-2", &nodes, None, t(10)).unwrap_err();
    assert!(gate.message.contains("pool gpu"), "{}", gate.message);
    assert!(fleet::check(&c, "cpu-1", &nodes, None, t(10)).is_ok());
}

#[test]
fn min_schedulable_keeps_enough_nodes_in_service() {
    let nodes = vec![
        fleet_node("a", false, &[]),
        fleet_node("b", false, &[]),
        fleet_node("c", false, &[]),
    ];
    let c = config("[fleet]\nmax_draining = 3\nmin_schedulable = 3");
    let gate = fleet::check(&c, "a", &nodes, None, t(0)).unwrap_err();
    assert_eq!(gate.reason, BlockReason::MinSchedulable);
    let c = config("[fleet]\nmax_draining = 3\nmin_schedulable = 2");
    assert!(fleet::check(&c, "a", &nodes, None, t(0)).is_ok());
}

#[test]
fn the_delay_between_nodes_counts_from_the_latest_start() {
    let nodes = vec![fleet_node("a", false, &[]), fleet_node("b", false, &[])];
    let c = config("[fleet]\nmax_draining = 2\ndelay_between_nodes = \"2m\"");
    let gate = fleet::check(&c, "b", &nodes, Some(t(0)), t(60)).unwrap_err();
    assert_eq!(gate.retry_at, Some(t(120)));
    assert!(fleet::check(&c, "b", &nodes, Some(t(0)), t(120)).is_ok());
}

#[test]
fn a_schedule_works_through_its_nodes_a_few_at_a_time() {
    let c = config(
        r#"
        [fleet]
        max_draining = 10
        [[schedules]]
        name = "monthly"
        cron = "0 2 * * SUN#1"
        concurrency = 2
        "#,
    );
    let run = "monthly.20261206T010000Z";
    let nodes = vec![
        fleet_node("a", true, &[("vacate.io/maintenance", run)]),
        fleet_node("b", true, &[("vacate.io/maintenance", run)]),
        fleet_node("c", false, &[("vacate.io/maintenance", run)]),
        fleet_node("d", false, &[("vacate.io/maintenance", "true")]),
    ];
    let gate = fleet::check(&c, "c", &nodes, None, t(0)).unwrap_err();
    assert!(
        gate.message.contains("schedule monthly"),
        "{}",
        gate.message
    );
    // A request of someone else is not held back by the schedule.
    assert!(fleet::check(&c, "d", &nodes, None, t(0)).is_ok());
}

#[test]
fn a_failed_drain_that_keeps_its_node_cordoned_holds_its_slot() {
    let mut state = DrainState::new(t(0), true, 1);
    state.set_phase(Phase::Failed, t(10));
    let ann = StateAnnotation::Valid(Box::new(state));
    let held = FleetNode::from_state(
        "a".into(),
        Default::default(),
        true,
        true,
        &ann,
        "vacate.io/maintenance",
    );
    assert!(held.in_maintenance);
    let released = FleetNode::from_state(
        "a".into(),
        Default::default(),
        true,
        false,
        &ann,
        "vacate.io/maintenance",
    );
    assert!(!released.in_maintenance);
}

#[test]
fn drained_node_of_a_schedule_is_held_then_released() {
    let c = config(
        r#"
        [[schedules]]
        name = "weekly"
        cron = "0 3 * * MON"
        hold = "10m"
        "#,
    );
    let mut s = snapshot(node(Some("weekly.20261130T030000Z"), true));
    let mut state = DrainState::new(t(0), true, 1);
    state.request_value = "weekly.20261130T030000Z".into();
    state.set_phase(Phase::Drained, t(60));
    state.drained_at = Some(t(60));
    s = with_state(s, &state);
    s.node.drained_label = true;
    s.now = t(300);
    let p = plan(&s, &c);
    assert!(!p.actions.contains(&Action::Uncordon));
    assert_eq!(p.requeue_after, Some(std::time::Duration::from_secs(360)));
    s.now = t(660);
    let p = plan(&s, &c);
    assert!(
        p.actions
            .contains(&Action::RemoveLabel("vacate.io/maintenance".into()))
    );
    assert!(p.actions.contains(&Action::Uncordon));
    assert_eq!(p.state, NextState::Clear);
}

#[test]
fn drained_node_of_a_schedule_waits_for_its_completion_label() {
    let c = config(
        r#"
        [[schedules]]
        name = "weekly"
        cron = "0 3 * * MON"
        until_label = "example.com/maintenance-done"
        "#,
    );
    let mut s = snapshot(node(Some("weekly.20261130T030000Z"), true));
    let mut state = DrainState::new(t(0), true, 1);
    state.set_phase(Phase::Drained, t(60));
    state.drained_at = Some(t(60));
    s = with_state(s, &state);
    s.node.drained_label = true;
    s.now = t(99_999);
    assert!(!plan(&s, &c).actions.contains(&Action::Uncordon));
    s.node
        .labels
        .insert("example.com/maintenance-done".into(), "".into());
    let p = plan(&s, &c);
    assert!(p.actions.contains(&Action::Uncordon));
    assert!(
        p.actions
            .contains(&Action::RemoveLabel("example.com/maintenance-done".into()))
    );
}

#[test]
fn versions_match_with_or_without_v_and_with_build_suffixes() {
    assert!(version_reached("v1.34.2", "v1.34.2"));
    assert!(version_reached("v1.34.2", "1.34.2"));
    assert!(version_reached("v1.34.2+k3s1", "v1.34.2"));
    assert!(version_reached("v1.34.2-eks-1", "v1.34.2"));
    // At least the target: a node already ahead is not drained for nothing.
    assert!(version_reached("v1.34.20", "v1.34.2"));
    assert!(version_reached("v1.35.0", "v1.34.2"));
    assert!(version_reached("v2.0.0+k3s1", "v1.34.2"));
    assert!(!version_reached("v1.33.9", "v1.34.2"));
    // Not major.minor.patch: exact (build suffixes aside).
    assert!(version_reached("v1.34-custom", "v1.34-custom"));
    assert!(!version_reached("v1.34.2", "v1.34"));
    assert!(!version_reached("v1.34.1", "v1.34.2"));
    assert!(!version_reached("v1.34.2", ""));
}

fn upgrading(target: &str) -> Snapshot {
    let mut n = node(None, false);
    n.upgrade_to = Some(target.into());
    n.kubelet_version = "v1.37.2".into();
    snapshot(n)
}

#[test]
fn an_upgrade_request_drains_waits_for_the_version_and_uncordons() {
    let c = Config::default();
    let s = upgrading("v1.37.3");
    let p = plan(&s, &c);
    assert!(p.actions.contains(&Action::Cordon));
    let state = written(&p);
    assert_eq!(
        state.request,
        Request::Upgrade {
            version: "v1.37.3".into()
        }
    );
    // Drained (no VMIs, no pods) at once.
    assert_eq!(state.phase, Phase::Drained);
    let mut s = with_state(s, &state);
    s.node.unschedulable = true;
    s.node.drained_label = true;
    s.now = t(60);
    let p = plan(&s, &c);
    assert!(!p.actions.contains(&Action::Uncordon));
    assert!(written(&p).waiting_for.unwrap().contains("kubelet v1.37.3"));
    s.node.kubelet_version = "v1.37.3".into();
    s.node.ready = false;
    assert!(!plan(&s, &c).actions.contains(&Action::Uncordon));
    s.node.ready = true;
    let p = plan(&s, &c);
    assert!(
        p.actions
            .contains(&Action::RemoveLabel("vacate.io/upgrade".into()))
    );
    assert!(p.actions.contains(&Action::Uncordon));
    assert_eq!(p.state, NextState::Clear);
}

#[test]
fn an_upgrade_that_does_not_arrive_in_time_fails_with_the_reason() {
    let c = config("[upgrade]\ntimeout = \"10m\"");
    let s = upgrading("v1.37.3");
    let state = written(&plan(&s, &c));
    let mut s = with_state(s, &state);
    s.node.unschedulable = true;
    s.now = t(601);
    let p = plan(&s, &c);
    let failed = written(&p);
    assert_eq!(failed.phase, Phase::Failed);
    let why = failed.failure.unwrap();
    assert!(
        why.contains("v1.37.3") && why.contains("reports v1.37.2"),
        "{why}"
    );
    assert!(!p.actions.contains(&Action::Uncordon));
}

#[test]
fn an_upgrade_to_the_running_version_needs_no_drain() {
    let s = upgrading("v1.37.2");
    let p = plan(&s, &Config::default());
    assert!(!p.actions.contains(&Action::Cordon));
    assert!(
        p.actions
            .contains(&Action::RemoveLabel("vacate.io/upgrade".into()))
    );
    assert!(!wants_to_start(&s, &Config::default()));
}

#[test]
fn the_start_gate_is_asked_only_when_a_drain_could_start() {
    let c = config(NIGHTLY);
    let mut s = snapshot(node(Some("true"), false));
    s.now = at(2026, 11, 26, 12, 0, 0);
    assert!(!wants_to_start(&s, &c), "the window is closed");
    s.now = at(2026, 11, 26, 2, 0, 0);
    assert!(wants_to_start(&s, &c));
    let draining = written(&plan(&s, &c));
    let s = with_state(s, &draining);
    assert!(!wants_to_start(&s, &c), "already draining");
}

#[test]
fn capacity_packs_the_largest_first_and_names_what_does_not_fit() {
    let gib = 1i64 << 30;
    let w = |name: &str, mem: i64| Workload {
        name: name.into(),
        requests: Resources {
            cpu_millis: 1000,
            memory_bytes: mem * gib,
        },
        node_selector: Default::default(),
    };
    let target = |name: &str, mem: i64| Target {
        name: name.into(),
        labels: [("pool", name)].into_iter().collect(),
        free: Resources {
            cpu_millis: 8000,
            memory_bytes: mem * gib,
        },
        pods_free: 110,
    };
    let load = [w("vm-small", 2), w("vm-big", 6), w("vm-mid", 4)];
    assert!(capacity::check(&load, &[target("x", 6), target("y", 6)]).is_ok());
    let err = capacity::check(&load, &[target("x", 6), target("y", 4)]).unwrap_err();
    assert!(err.contains("1 of the 3"), "{err}");
    assert!(capacity::check(&load, &[]).is_err());
    assert!(capacity::check(&[], &[]).is_ok());
    // A pod pinned to a pool fits only there.
    let mut pinned = w("vm-pinned", 2);
    pinned.node_selector.insert("pool".into(), "y".into());
    assert!(
        capacity::check(
            std::slice::from_ref(&pinned),
            &[target("x", 64), target("y", 4)]
        )
        .is_ok()
    );
    assert!(capacity::check(&[pinned], &[target("x", 64), target("y", 1)]).is_err());
    // Pod slots count too.
    let mut full = target("x", 64);
    full.pods_free = 0;
    assert!(capacity::check(&load[..1], &[full]).is_err());
}

#[test]
fn quantities_parse_as_kubernetes_writes_them() {
    assert_eq!(parse_quantity("500m", 1000), Some(500));
    assert_eq!(parse_quantity("2", 1000), Some(2000));
    assert_eq!(parse_quantity("4Gi", 1), Some(4 << 30));
    assert_eq!(parse_quantity("1.5G", 1), Some(1_500_000_000));
    assert_eq!(parse_quantity("128974848", 1), Some(128_974_848));
    assert_eq!(parse_quantity("1e3", 1), Some(1000));
    assert_eq!(parse_quantity("12Qi", 1), None);
}

#[test]
fn a_run_is_the_whole_second_the_cron_expression_matched() {
    let c = config("[[schedules]]\nname = \"s\"\ncron = \"26 27 1 * * *\"");
    let s = &c.schedules[0];
    let now = at(2026, 11, 26, 1, 27, 26) + chrono::Duration::milliseconds(312);
    let run = s.cron.previous(now, &s.timezone).unwrap();
    assert_eq!(run, at(2026, 11, 26, 1, 27, 26));
    let later = now + chrono::Duration::milliseconds(300);
    assert_eq!(s.cron.previous(later, &s.timezone), Some(run));
}

#[test]
fn windows_read_right_in_the_hour_a_clock_goes_back() {
    // Berlin, 2026-10-25: 03:00 summer time becomes 02:00 winter time; 02:30 local happens
    // at 00:30 and again at 01:30 UTC.
    let c = config(
        "[[windows]]\nname = \"w\"\ncron = \"30 2 * * *\"\nduration = \"1h\"\ntimezone = \"Europe/Berlin\"",
    );
    let w = &c.windows[0];
    for minute in [35, 50, 65, 80] {
        let now = at(2026, 10, 25, 0, 0, 0) + chrono::Duration::minutes(minute);
        assert!(windows::status(w, now).open, "closed at {now}");
        let next = w.cron.next(now, &w.timezone).unwrap();
        assert!(next > now, "next opening {next} is not after {now}");
    }
    assert!(!windows::status(w, at(2026, 10, 25, 2, 31, 0)).open);
}

#[test]
fn an_upgrade_to_a_version_the_node_is_already_past_needs_no_drain() {
    let mut n = node(None, false);
    n.upgrade_to = Some("v1.34.2".into());
    n.kubelet_version = "v1.35.0".into();
    let mut s = snapshot(n);
    s.vmis = vec![vmi("vm-0")];
    let p = plan(&s, &Config::default());
    assert!(!p.actions.contains(&Action::Cordon));
    assert!(
        p.actions
            .iter()
            .any(|a| matches!(a, Action::Event { reason, .. } if *reason == "UpgradeNotNeeded"))
    );
    assert!(p.actions.contains(&Action::RemoveLabel(
        Config::default().upgrade.request_label
    )));
}

#[test]
fn a_node_waiting_to_be_uncordoned_holds_no_place_in_the_fleet() {
    let mut state = DrainState::new(t(0), true, 1);
    state.phase = Phase::Uncordoning;
    let node = FleetNode::from_state(
        "down".into(),
        Default::default(),
        false,
        true,
        &StateAnnotation::Valid(Box::new(state)),
        "vacate.io/maintenance",
    );
    assert!(!node.in_maintenance);
}
