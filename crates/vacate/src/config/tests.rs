use std::collections::BTreeMap;
use std::num::NonZeroU32;

use super::*;

fn parse(toml: &str) -> Result<Config, ConfigError> {
    Config::from_toml_and_env(toml, Vec::<(String, String)>::new())
}

fn key_of(err: ConfigError) -> String {
    match err {
        ConfigError::Key { key, .. } => key,
        other => panic!("expected an error naming a key, got: {other}"),
    }
}

#[test]
fn empty_file_gives_defaults() {
    assert_eq!(parse("").unwrap(), Config::default());
}

#[test]
fn shipped_example_matches_defaults() {
    let text = include_str!("../../../../config/vacate.toml");
    assert_eq!(parse(text).unwrap(), Config::default());
}

#[test]
fn values_are_read() {
    let c = parse(
        r#"
        [migration]
        batch_size = 4
        batch_interval = "1m30s"
        [non_migratable]
        policy = "restart"
        [node]
        selector = "pool=gpu,!frozen"
        "#,
    )
    .unwrap();
    assert_eq!(c.migration.batch_size.get(), 4);
    assert_eq!(c.migration.batch_interval.get().as_secs(), 90);
    assert_eq!(c.non_migratable.policy, NonMigratablePolicy::Restart);
    assert_eq!(c.node.selector.as_str(), "pool=gpu,!frozen");
}

#[test]
fn unknown_key_is_named() {
    let err = parse("[migration]\nbatch_sise = 3\n").unwrap_err();
    let text = err.to_string();
    assert!(text.contains("batch_sise"), "{text}");
    assert_eq!(key_of(err), "migration.batch_sise");
}

#[test]
fn unknown_section_is_reported() {
    let err = parse("[migrations]\nbatch_size = 3\n").unwrap_err();
    assert!(err.to_string().contains("migrations"), "{err}");
}

#[test]
fn bad_duration_names_key() {
    let err = parse("[drain]\ntimeout = \"ten minutes\"\n").unwrap_err();
    assert!(err.to_string().contains("ten minutes"), "{err}");
    assert_eq!(key_of(err), "drain.timeout");
}

#[test]
fn bad_selector_names_key() {
    let err = parse("[node]\nselector = \"pool=gpu,Bad Key=1\"\n").unwrap_err();
    assert_eq!(key_of(err), "node.selector");
}

#[test]
fn bad_enum_names_key() {
    let err = parse("[non_migratable]\npolicy = \"migrate-harder\"\n").unwrap_err();
    assert_eq!(key_of(err), "non_migratable.policy");
}

#[test]
fn zero_limits_are_refused() {
    let err = parse("[migration]\nmax_in_flight_per_node = 0\n").unwrap_err();
    assert_eq!(key_of(err), "migration.max_in_flight_per_node");
}

#[test]
fn zero_counts_are_refused_while_reading_with_the_key_named() {
    for key in [
        "batch_size",
        "max_in_flight_per_node",
        "max_in_flight_cluster",
        "max_attempts",
        "max_inbound_per_node",
    ] {
        let err = parse(&format!("[migration]\n{key} = 0\n")).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("invalid configuration: key `migration.{key}`: must be at least 1")
        );
        let env = format!("VACATE_MIGRATION__{}", key.to_uppercase());
        let err = Config::from_toml_and_env("", [(env, "0".to_string())]).unwrap_err();
        assert_eq!(key_of(err), format!("migration.{key}"));
    }
    let err =
        parse("[[schedules]]\nname = \"s\"\ncron = \"0 2 * * *\"\nconcurrency = 0").unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid configuration: key `schedules[0].concurrency`: must be at least 1"
    );
    let err = parse("[fleet]\nmax_draining = 0").unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid configuration: key `fleet.max_draining`: must be at least 1"
    );
    let err = parse("[fleet]\nmax_draining = \"0%\"").unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid configuration: key `fleet.max_draining`: a percentage must lie between 1% and 100%"
    );
}

#[test]
fn a_bad_prometheus_url_is_named_without_credentials() {
    let err = parse("[blockers]\nprometheus_url = \"ftp://user:hunter2@prom\"").unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid configuration: key `blockers.prometheus_url`: invalid Prometheus URL ftp://prom: it needs http:// or https://"
    );
    let c = parse("[blockers]\nprometheus_url = \"\"").unwrap();
    assert_eq!(c.blockers.prometheus_url, None);
    let err = parse("[blockers]\nprometheus_url = \"http://prom\"\nprometheus_query = \" \"")
        .unwrap_err();
    assert_eq!(key_of(err), "blockers.prometheus_query");
}

#[test]
fn bad_listen_address_is_refused() {
    let err = parse("[server]\nlisten = \"everywhere\"\n").unwrap_err();
    assert_eq!(key_of(err), "server.listen");
}

#[test]
fn environment_overrides_file() {
    let c = Config::from_toml_and_env(
        "[migration]\nbatch_size = 4\n",
        [
            ("VACATE_MIGRATION__BATCH_SIZE".to_string(), "7".to_string()),
            ("VACATE_DRAIN__TIMEOUT".to_string(), "2h".to_string()),
            ("UNRELATED".to_string(), "x".to_string()),
            (
                "VACATE_CONFIG".to_string(),
                "/etc/vacate/vacate.toml".to_string(),
            ),
            (
                "VACATE_TESTBED_KUBECONFIG".to_string(),
                "elsewhere".to_string(),
            ),
        ],
    )
    .unwrap();
    assert_eq!(c.migration.batch_size.get(), 7);
    assert_eq!(c.drain.timeout.get().as_secs(), 7200);
}

#[test]
fn bad_environment_value_names_key() {
    let err = Config::from_toml_and_env(
        "",
        [(
            "VACATE_MIGRATION__BATCH_SIZE".to_string(),
            "lots".to_string(),
        )],
    )
    .unwrap_err();
    assert_eq!(key_of(err), "migration.batch_size");
}

#[test]
fn selector_matching() {
    let s = LabelSelector::parse("pool=gpu,zone!=a,ready,!frozen").unwrap();
    let labels = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    let cases: [(&[(&str, &str)], bool); 5] = [
        (&[("pool", "gpu"), ("ready", "")], true),
        (&[("pool", "gpu"), ("ready", ""), ("zone", "b")], true),
        (&[("pool", "gpu"), ("ready", ""), ("frozen", "1")], false),
        (&[("pool", "gpu"), ("ready", ""), ("zone", "a")], false),
        (&[("pool", "cpu"), ("ready", "")], false),
    ];
    for (pairs, expected) in cases {
        // A node's interned labels read as the same map.
        let map = labels(pairs);
        assert_eq!(s.matches(&map), expected, "{pairs:?}");
        assert_eq!(
            s.matches(&crate::labels::Labels::from(map)),
            expected,
            "{pairs:?}"
        );
    }
    assert!(LabelSelector::parse("").unwrap().matches(&labels(&[])));
    assert!(LabelSelector::parse("a in (b)").is_err());
    for key in ["pool", "zone", "ready", "frozen"] {
        assert!(s.reads(key), "{key}");
    }
    assert!(!s.reads("gpu") && !s.reads("kubernetes.io/hostname"));
}

#[test]
fn misspelt_environment_section_is_named() {
    let err = Config::from_toml_and_env(
        "",
        [("VACATE_MIGRATON__BATCH_SIZE".to_string(), "3".to_string())],
    )
    .unwrap_err();
    assert!(err.to_string().contains("migraton"), "{err}");
}

#[test]
fn fleet_settings_are_read() {
    let c = parse(
        r#"
        [fleet]
        max_draining = "25%"
        min_schedulable = 3
        delay_between_nodes = "5m"
        [[fleet.pools]]
        name = "gpu"
        selector = "pool=gpu"
        max_draining = 1
        [[windows]]
        name = "nightly"
        cron = "0 2 * * *"
        duration = "4h"
        timezone = "Europe/Berlin"
        applies_to = ["upgrade"]
        on_close = "abort"
        [[schedules]]
        name = "gpu-monthly"
        cron = "0 2 * * SUN#1"
        selector = "pool=gpu"
        hold = "30m"
        [upgrade]
        timeout = "2h"
        [blockers]
        pods = "app=backup"
        prometheus_url = "http://prometheus:9090"
        "#,
    )
    .unwrap();
    assert_eq!(c.fleet.max_draining, Limit::Percent(25));
    assert_eq!(c.fleet.pools[0].max_draining, Limit::Count(NonZeroU32::MIN));
    assert_eq!(c.windows[0].timezone.to_string(), "Europe/Berlin");
    assert_eq!(c.windows[0].applies_to, vec![RequestKind::Upgrade]);
    assert_eq!(c.windows[0].on_close, OnClose::Abort);
    assert_eq!(c.windows[0].cron.six_fields(), "0 0 2 * * *");
    assert_eq!(c.schedules[0].concurrency.get(), 1);
    assert_eq!(c.schedules[0].hold.get().as_secs(), 1800);
    assert_eq!(c.upgrade.request_label, "vacate.io/upgrade");
    assert_eq!(
        c.blockers
            .prometheus_url
            .as_ref()
            .map(|u| u.to_string())
            .as_deref(),
        Some("http://prometheus:9090")
    );
    assert!(
        c.schedule_of("gpu-monthly.20261206T010000Z").is_some() && c.schedule_of("true").is_none()
    );
}

#[test]
fn bad_fleet_settings_name_their_key() {
    let window = |extra: &str| {
        format!("[[windows]]\nname = \"w\"\ncron = \"0 2 * * *\"\nduration = \"1h\"\n{extra}")
    };
    for (toml, expected) in [
        (
            window("").replace("0 2 * * *", "0 25 * * *"),
            "windows[0].cron",
        ),
        (window("").replace("0 2 * * *", "* * *"), "windows[0].cron"),
        (window("timezone = \"Mars/Olympus\""), "windows[0].timezone"),
        (window("").replace("1h", "0s"), "windows[0].duration"),
        (
            window("applies_to = [\"reboot\"]"),
            "windows[0].applies_to[0]",
        ),
        (window("on_close = \"later\""), "windows[0].on_close"),
        (format!("{}\n{}", window(""), window("")), "windows[1].name"),
        (
            "[fleet]\nmax_draining = \"150%\"".into(),
            "fleet.max_draining",
        ),
        ("[fleet]\nmax_draining = 0".into(), "fleet.max_draining"),
        (
            "[fleet]\nmax_draining = \"many\"".into(),
            "fleet.max_draining",
        ),
        (
            "[[fleet.pools]]\nname = \"p\"\nselector = \"\"\nmax_draining = 1".into(),
            "fleet.pools[0].selector",
        ),
        (
            "[[schedules]]\nname = \"Bad_Name\"\ncron = \"0 2 * * *\"".into(),
            "schedules[0].name",
        ),
        (
            "[[schedules]]\nname = \"s\"\ncron = \"0 2 * * *\"\nconcurrency = 0".into(),
            "schedules[0].concurrency",
        ),
        (
            "[upgrade]\nrequest_label = \"vacate.io/maintenance\"".into(),
            "upgrade.request_label",
        ),
        (
            "[blockers]\nprometheus_url = \"prometheus:9090\"".into(),
            "blockers.prometheus_url",
        ),
        ("[blockers]\npods = \"app in (x)\"".into(), "blockers.pods"),
        (window("").replace("0 2 * * *", "0 0 30 2 *"), "windows[0].cron"),
        (
            "[[schedules]]\nname = \"s\"\ncron = \"0 2 * * *\"\nuntil_label = \"vacate.io/maintenance\"".into(),
            "schedules[0].until_label",
        ),
        (
            "[[schedules]]\nname = \"s\"\ncron = \"0 2 * * *\"\nstart_deadline = \"10s\"".into(),
            "schedules[0].start_deadline",
        ),
        ("[fleet]\ndelay_between_nodes = \"500years\"".into(), "fleet.delay_between_nodes"),
    ] {
        let err = parse(&toml).expect_err(&toml);
        assert_eq!(key_of(err), expected, "{toml}");
    }
}

#[test]
fn fleet_settings_come_from_the_environment_too() {
    let c = Config::from_toml_and_env(
        "",
        [
            ("VACATE_FLEET__MAX_DRAINING".to_string(), "3".to_string()),
            ("VACATE_UPGRADE__TIMEOUT".to_string(), "15m".to_string()),
        ],
    )
    .unwrap();
    assert_eq!(
        c.fleet.max_draining,
        Limit::Count(NonZeroU32::new(3).unwrap())
    );
    assert_eq!(c.upgrade.timeout.get().as_secs(), 900);
}
