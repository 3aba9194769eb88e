//! Fuzzing of every parser of outside input: the state annotation on the node, the
//! configuration file, label selectors, cron expressions, durations, kubelet versions and
//! resource quantities. Arbitrary and mutated input must give an answer or an error that
//! names the key or the input, never a panic.

use proptest::prelude::*;
use proptest::test_runner::RngSeed;

use crate::config::{Config, ConfigDuration, ConfigError, CronExpr, LabelSelector, Zone};
use crate::planner::capacity::parse_quantity;
use crate::planner::{
    BlockReason, Blocker, DrainState, Phase, StateAnnotation, VmiOutcome, VmiRecord,
    version_reached,
};

fn proptest_config() -> ProptestConfig {
    ProptestConfig {
        cases: 256,
        rng_seed: RngSeed::Fixed(0x6675_7a7a),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Any JSON value, nested a few levels, with numbers far outside every field's range.
fn json_value() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::{Value, json};
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<u64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_filter("JSON has no NaN or infinity", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        "\\PC{0,20}".prop_map(Value::String),
        select_str(&[
            "Idle",
            "Migrating",
            "Drained",
            "2024-02-30T25:61:00Z",
            "1970-01-01T00:00:00Z",
            "+262143-12-31T23:59:59Z",
        ]),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::Array),
            prop::collection::btree_map("[a-zA-Z/]{0,12}", inner, 0..4)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

fn select_str(options: &'static [&'static str]) -> impl Strategy<Value = serde_json::Value> {
    prop::sample::select(options).prop_map(|s| serde_json::Value::String(s.into()))
}

/// A state as vacate writes it.
fn valid_state() -> DrainState {
    let at = chrono::DateTime::from_timestamp(1_700_000_000, 0).expect("a valid time");
    let mut state = DrainState::new(at, true, 2);
    state.phase = Phase::Migrating;
    state.request_value = "true".into();
    state.blocked = Some(Blocker {
        reason: BlockReason::PodDisruptionBudget,
        message: "eviction of pod apps/web-0 refused".into(),
    });
    state.last_batch_at = Some(at);
    state.vmis.insert(
        "vms/db".into(),
        VmiRecord {
            outcome: VmiOutcome::RetryWaiting,
            attempts: 2,
            retry_at: Some(at),
            eviction_refused: true,
            target: Some("worker-9".into()),
        },
    );
    state
}

/// Checks what `StateAnnotation::parse` made of `text`: a valid state reads back the same
/// after vacate writes it again, an invalid one says why.
fn check_state(text: &str) -> Result<(), TestCaseError> {
    match StateAnnotation::parse(Some(text)) {
        StateAnnotation::Valid(state) => {
            let again = StateAnnotation::parse(Some(&state.to_json()));
            prop_assert_eq!(again, StateAnnotation::Valid(state));
        }
        StateAnnotation::Invalid(message) => prop_assert!(!message.is_empty()),
        StateAnnotation::NewerVersion(v) => prop_assert!(v > 1),
        StateAnnotation::Absent => prop_assert!(false, "text read as no annotation"),
    }
    Ok(())
}

proptest! {
    #![proptest_config(proptest_config())]

    #[test]
    fn state_annotation_survives_any_text(text in "\\PC{0,200}") {
        check_state(&text)?;
    }

    #[test]
    fn state_annotation_survives_any_json(value in json_value()) {
        check_state(&value.to_string())?;
    }

    /// A state cut short is never taken for a state.
    #[test]
    fn truncated_state_is_invalid(cut in 0usize..10_000) {
        let json = valid_state().to_json();
        let cut = cut % json.len();
        let text = &json[..cut];
        prop_assert!(
            matches!(StateAnnotation::parse(Some(text)), StateAnnotation::Invalid(_)),
            "{text}"
        );
    }

    /// A valid state with one field replaced by anything (a wrong type, a huge number, a
    /// nested object), or removed, or with a field added.
    #[test]
    fn mutated_state_never_panics(
        field in 0usize..64,
        value in json_value(),
        remove in any::<bool>(),
    ) {
        let serde_json::Value::Object(mut map) =
            serde_json::to_value(valid_state()).expect("a state serialises")
        else {
            unreachable!("a state is an object");
        };
        let keys: Vec<String> = map.keys().cloned().collect();
        match keys.get(field) {
            Some(key) if remove => {
                map.remove(key);
            }
            Some(key) => {
                map.insert(key.clone(), value);
            }
            None => {
                map.insert(format!("extra{field}"), value);
            }
        }
        check_state(&serde_json::Value::Object(map).to_string())?;
    }

    #[test]
    fn state_version_is_read_from_any_number(version in prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        any::<u64>().prop_map(|n| n.to_string()),
        Just("1e400".to_string()),
        Just("-0".to_string()),
        Just("1.0".to_string()),
        Just("\"1\"".to_string()),
    ]) {
        let json = valid_state().to_json().replacen("\"version\":1", &format!("\"version\":{version}"), 1);
        let parsed = StateAnnotation::parse(Some(&json));
        if version == "1" {
            prop_assert!(matches!(parsed, StateAnnotation::Valid(_)));
        }
        if version.parse::<u64>().is_ok_and(|v| v > 1 && v <= u64::from(u32::MAX)) {
            prop_assert!(matches!(parsed, StateAnnotation::NewerVersion(_)), "{parsed:?}");
        }
        check_state(&json)?;
    }
}

// ---------------------------------------------------------------------------------------
// The configuration file.

/// Every key of the file, as `section.key` (or a top-level key).
const KEYS: &[&str] = &[
    "node.request_label",
    "node.drained_label",
    "node.state_annotation",
    "node.selector",
    "drain.timeout",
    "drain.uncordon_on_failure",
    "drain.resync",
    "migration.batch_size",
    "migration.batch_interval",
    "migration.max_in_flight_per_node",
    "migration.max_in_flight_cluster",
    "migration.max_attempts",
    "migration.retry_backoff",
    "migration.retry_backoff_max",
    "non_migratable.policy",
    "non_migratable.on_eviction_refused",
    "pods.emptydir",
    "pods.unmanaged",
    "pods.eviction_backoff",
    "pods.eviction_backoff_max",
    "pods.evict_after_vmis",
    "upgrade.request_label",
    "upgrade.timeout",
    "fleet.max_draining",
    "fleet.min_schedulable",
    "fleet.delay_between_nodes",
    "fleet.capacity_check",
    "blockers.pods",
    "blockers.prometheus_url",
    "blockers.prometheus_query",
    "blockers.prometheus_interval",
    "server.listen",
    "leader_election.enabled",
    "leader_election.namespace",
    "leader_election.lease_name",
    "leader_election.lease_duration",
    "log.format",
    "log.level",
];

/// Keys of `[[windows]]` and `[[schedules]]` entries.
const WINDOW_KEYS: &[&str] = &["cron", "duration", "timezone", "applies_to", "on_close"];
const SCHEDULE_KEYS: &[&str] = &[
    "cron",
    "timezone",
    "selector",
    "concurrency",
    "hold",
    "until_label",
    "start_deadline",
];

/// A TOML value, written out: strings near and far from what keys accept, numbers of any
/// size, arrays and inline tables.
fn toml_value() -> impl Strategy<Value = String> {
    let text = prop_oneof![
        "\\PC{0,30}",
        "[0-9]{1,25}[smhdw]?",
        "[a-z0-9./=!,-]{0,30}",
        prop::sample::select(vec![
            "",
            "0s",
            "30s",
            "1h30m",
            "-5s",
            "1000000000y",
            "25%",
            "0%",
            "101%",
            "5",
            "info",
            "json",
            "evict",
            "restart",
            "block",
            "fail",
            "abort",
            "UTC",
            "Mars/Olympus",
            "0 2 * * SUN",
            "61 * * * *",
            "0.0.0.0:9464",
            "[::1]:80",
            "http://prom:9090",
            "https://u:p@prom/x",
            "ftp://x",
            "vacate.io/x",
            "Bad Key",
        ])
        .prop_map(String::from),
    ]
    .prop_map(|s| toml_string(&s));
    let scalar = prop_oneof![
        4 => text,
        1 => any::<i64>().prop_map(|n| n.to_string()),
        1 => (-5i64..200).prop_map(|n| n.to_string()),
        1 => any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(|f| format!("{f:?}")),
        1 => any::<bool>().prop_map(|b| b.to_string()),
        1 => Just("1979-05-27T07:32:00Z".to_string()),
    ];
    scalar.prop_recursive(2, 8, 3, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..3).prop_map(|v| format!("[{}]", v.join(", "))),
            prop::collection::btree_map("[a-z_]{1,8}", inner, 0..3).prop_map(|v| {
                let fields: Vec<String> =
                    v.into_iter().map(|(k, x)| format!("{k} = {x}")).collect();
                format!("{{ {} }}", fields.join(", "))
            }),
        ]
    })
}

/// A TOML basic string holding `s`.
fn toml_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn load(toml: &str) -> Result<Config, ConfigError> {
    Config::from_toml_and_env(toml, Vec::<(String, String)>::new())
}

/// An error about `key` names it: as the key at fault, or in the message of the key it
/// conflicts with (`retry_backoff_max` "must not be shorter than migration.retry_backoff").
fn check_names_key(result: Result<Config, ConfigError>, key: &str) -> Result<(), TestCaseError> {
    match result {
        Ok(_) => {}
        Err(ConfigError::Key { key: at, message }) => prop_assert!(
            at == key
                || at.starts_with(&format!("{key}["))
                || at.starts_with(&format!("{key}."))
                || message.contains(key),
            "setting {key} gave an error about {at}: {message}"
        ),
        Err(other) => prop_assert!(
            false,
            "setting {key} gave an error naming no key: {other:?}"
        ),
    }
    Ok(())
}

proptest! {
    #![proptest_config(proptest_config())]

    #[test]
    fn any_value_of_any_key_is_read_or_named(key in prop::sample::select(KEYS), value in toml_value()) {
        let (section, name) = key.split_once('.').expect("a dotted key");
        let toml = format!("[{section}]\n{name} = {value}\n");
        check_names_key(load(&toml), key)?;
    }

    #[test]
    fn any_value_in_a_window_or_schedule_is_read_or_named(
        schedule in any::<bool>(),
        index in 0usize..7,
        value in toml_value(),
    ) {
        let (table, keys, base) = if schedule {
            ("schedules", SCHEDULE_KEYS, "name = \"weekly\"\ncron = \"0 2 * * SUN\"\n")
        } else {
            ("windows", WINDOW_KEYS, "name = \"night\"\ncron = \"0 2 * * *\"\nduration = \"4h\"\n")
        };
        let name = keys[index % keys.len()];
        let base: String = base.lines().filter(|l| !l.starts_with(name)).map(|l| format!("{l}\n")).collect();
        let toml = format!("[[{table}]]\n{base}{name} = {value}\n");
        check_names_key(load(&toml), &format!("{table}[0].{name}"))?;
    }

    /// Any text at all as the file: read or refused, never a panic.
    #[test]
    fn any_file_is_read_or_refused(text in "\\PC{0,300}") {
        let _ = load(&text);
    }

    /// Environment variables override the file with the same checks.
    #[test]
    fn any_environment_value_is_read_or_named(key in prop::sample::select(KEYS), value in "\\PC{0,30}") {
        let (section, name) = key.split_once('.').expect("a dotted key");
        let var = format!("VACATE_{}__{}", section.to_uppercase(), name.to_uppercase());
        let result = Config::from_toml_and_env("", vec![(var, value)]);
        check_names_key(result, key)?;
    }
}

// ---------------------------------------------------------------------------------------
// Selectors, cron expressions, durations, versions and quantities.

/// The text between the first pair of backticks of an error message.
fn quoted(message: &str) -> Option<&str> {
    let (_, rest) = message.split_once('`')?;
    rest.split_once('`').map(|(q, _)| q)
}

proptest! {
    #![proptest_config(proptest_config())]

    #[test]
    fn label_selectors_parse_or_quote_the_input(
        text in prop_oneof!["[a-zA-Z0-9./_!=, ()-]{0,40}", "[^`]{0,40}"],
        labels in prop::collection::btree_map("[a-z./]{1,8}", "[a-z0-9]{0,4}", 0..4),
    ) {
        match LabelSelector::parse(&text) {
            Ok(selector) => {
                let _ = selector.matches(&labels);
                // What the API server is sent reads back as the same selector.
                prop_assert_eq!(LabelSelector::parse(selector.as_str()), Ok(selector));
            }
            Err(message) => {
                let part = quoted(&message);
                prop_assert!(part.is_some_and(|p| text.contains(p)), "{message:?} for {text:?}");
            }
        }
    }

    #[test]
    fn cron_expressions_parse_or_quote_the_input(
        fields in prop::collection::vec(
            prop_oneof![
                Just("*".to_string()),
                Just("?".to_string()),
                Just("L".to_string()),
                Just("SUN#1".to_string()),
                Just("MON-FRI".to_string()),
                Just("JAN".to_string()),
                Just("5W".to_string()),
                (0u64..100).prop_map(|n| n.to_string()),
                any::<u64>().prop_map(|n| n.to_string()),
                (0u32..70, 0u32..70).prop_map(|(a, b)| format!("{a}-{b}")),
                (0u32..70).prop_map(|n| format!("*/{n}")),
                "[0-9,/*LW#-]{1,6}",
            ],
            0..8,
        ),
        raw in "\\PC{0,30}",
        use_raw in prop::bool::weighted(0.2),
        at in 0i64..4_102_444_800,
        zone in prop::sample::select(vec!["UTC", "Europe/Berlin", "America/Santiago", "Australia/Lord_Howe", "Pacific/Chatham"]),
    ) {
        let text = if use_raw { raw } else { fields.join(" ") };
        match CronExpr::parse(&text) {
            Ok(cron) => {
                let zone = Zone(zone.parse().expect("a known zone"));
                let now = chrono::DateTime::from_timestamp(at, 0).expect("a valid time");
                if let Some(next) = cron.next(now, &zone) {
                    prop_assert!(next > now, "next {next} not after {now} for {text}");
                }
                if let Some(previous) = cron.previous(now, &zone) {
                    prop_assert!(previous <= now, "previous {previous} after {now} for {text}");
                }
            }
            Err(message) => prop_assert!(message.contains(&text), "{message:?} for {text:?}"),
        }
    }

    #[test]
    fn durations_parse_or_quote_the_input(text in prop_oneof![
        "\\PC{0,20}",
        "[0-9]{1,30}(ns|us|ms|s|m|h|d|w|M|y)?",
        "([0-9]{1,6}[a-z]{1,3} ?){1,4}",
    ]) {
        match serde_json::from_value::<ConfigDuration>(serde_json::Value::String(text.clone())) {
            Ok(d) => prop_assert!(d.get() <= std::time::Duration::from_secs(10 * 366 * 24 * 3600)),
            Err(e) => prop_assert!(e.to_string().contains(&text), "{e} for {text:?}"),
        }
    }

    #[test]
    fn versions_never_panic(kubelet in "\\PC{0,20}", target in "\\PC{0,20}") {
        let _ = version_reached(&kubelet, &target);
    }

    /// A release is reached by itself, its builds and anything newer, and not by older ones.
    #[test]
    fn versions_compare_as_releases(
        k in (0u64..3, 0u64..40, 0u64..20),
        t in (0u64..3, 0u64..40, 0u64..20),
        v_kubelet in any::<bool>(),
        v_target in any::<bool>(),
        build in prop::sample::select(vec!["", "+k3s1", "-eks-1", "+rke2r1"]),
    ) {
        let kubelet = format!("{}{}.{}.{}{build}", if v_kubelet { "v" } else { "" }, k.0, k.1, k.2);
        let target = format!("{}{}.{}.{}", if v_target { "v" } else { "" }, t.0, t.1, t.2);
        prop_assert_eq!(version_reached(&kubelet, &target), k >= t, "{} for {}", kubelet, target);
    }

    /// Pod resource requests come from the cluster: any text gives a number or nothing.
    #[test]
    fn quantities_never_panic(
        text in prop_oneof![
            "\\PC{0,20}",
            "[-+]?[0-9.]{0,25}(n|u|m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei|e[-+]?[0-9]{1,12})?",
        ],
        scale in prop::sample::select(vec![1i64, 1000]),
    ) {
        let _ = parse_quantity(&text, scale);
    }
}
