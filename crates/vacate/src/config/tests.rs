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
    assert_eq!(c.migration.batch_size, 4);
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
    assert_eq!(c.migration.batch_size, 7);
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
    let labels = |pairs: &[(&str, &str)]| {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    assert!(s.matches(&labels(&[("pool", "gpu"), ("ready", "")])));
    assert!(!s.matches(&labels(&[("pool", "gpu"), ("ready", ""), ("frozen", "1")])));
    assert!(!s.matches(&labels(&[("pool", "gpu"), ("ready", ""), ("zone", "a")])));
    assert!(!s.matches(&labels(&[("pool", "cpu"), ("ready", "")])));
    assert!(LabelSelector::parse("").unwrap().matches(&labels(&[])));
    assert!(LabelSelector::parse("a in (b)").is_err());
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
