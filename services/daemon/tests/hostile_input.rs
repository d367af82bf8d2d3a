//! Property tests over the inputs a stranger or a typo controls: the daemon's config parser
//! (any text never panics; any value for any setting is either accepted, and then valid, or
//! refused with that setting named) and the registration edge checks.

use autoscaler_daemon::daemon::DaemonConfig;
use autoscaler_monitor::service::{
    MAX_ADDRESS_LEN, MAX_INSTANCE_ID_LEN, MAX_VERSION_LEN, parse_registration,
};
use autoscaler_proto::v1;
use proptest::prelude::*;

const BASE: &str = r#"
group = "test"
[monitor]
poll_interval_ms = 1000
poll_timeout_ms = 500
[controller]
min_instances = 2
max_instances = 5
[controller.policy]
kind = "target-tracking"
target = 50.0
tolerance = 0.1
[provider]
kind = "local"
"#;

/// Every setting a mutation may touch: its table and key.
const SETTINGS: &[(&str, &str)] = &[
    ("", "group"),
    ("monitor", "poll_interval_ms"),
    ("monitor", "poll_timeout_ms"),
    ("monitor", "unhealthy_after"),
    ("monitor", "load_window"),
    ("controller", "min_instances"),
    ("controller", "max_instances"),
    ("controller", "instance_limit"),
    ("controller", "evaluation_interval_ms"),
    ("controller", "warmup_secs"),
    ("controller", "registration_grace_secs"),
    ("controller", "launch_backoff_secs"),
    ("controller", "launch_backoff_max_secs"),
    ("controller", "scale_out_cooldown_secs"),
    ("controller", "scale_in_cooldown_secs"),
    ("controller", "decision_history"),
    ("controller", "termination_policy"),
    ("controller.policy", "target"),
    ("controller.policy", "tolerance"),
    ("provider", "terminate_grace_ms"),
];

/// A TOML value of any kind, with the awkward ones well represented.
fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        (-5i64..2_000_000).prop_map(|n| n.to_string()),
        any::<f64>().prop_map(|x| format!("{x:?}")),
        prop::sample::select(vec!["nan", "inf", "-inf", "-0.0", "1e308", "0.0", "100.0"])
            .prop_map(String::from),
        "[a-zA-Z0-9 _-]{0,12}".prop_map(|s| format!("{s:?}")),
        any::<bool>().prop_map(|b| b.to_string()),
        Just("[1, 2]".to_string()),
        Just("{ a = 1 }".to_string()),
    ]
}

/// The base config with `key = value` set in `table`.
fn with_setting(table: &str, key: &str, value: &str) -> String {
    let mut out = String::new();
    let mut current = "";
    let mut done = false;
    for line in BASE.lines() {
        let header = line
            .strip_prefix('[')
            .and_then(|l| l.strip_suffix(']'))
            .map(str::trim);
        if let Some(next) = header {
            if current == table && !done {
                out.push_str(&format!("{key} = {value}\n"));
                done = true;
            }
            current = next;
        }
        if current == table && line.starts_with(&format!("{key} ")) {
            continue; // replaced
        }
        out.push_str(line);
        out.push('\n');
    }
    if !done {
        if table.is_empty() {
            out = format!("{key} = {value}\n{out}");
        } else {
            out.push_str(&format!("{key} = {value}\n"));
        }
    }
    out
}

/// `poll_interval_ms` is reported as `poll_interval`, `warmup_secs` as `warmup_secs`.
fn stem(key: &str) -> &str {
    key.strip_suffix("_ms").unwrap_or(key)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn any_text_is_parsed_or_refused_without_a_panic(text in "\\PC{0,400}") {
        let _ = DaemonConfig::from_toml(&text);
    }

    #[test]
    fn any_value_of_a_setting_is_valid_or_refused_with_the_setting_named(
        setting in prop::sample::select(SETTINGS.to_vec()),
        value in value(),
    ) {
        let (table, key) = setting;
        let text = with_setting(table, key, &value);
        match DaemonConfig::from_toml(&text) {
            Ok(config) => prop_assert!(config.validate().is_ok()),
            Err(error) => {
                let message = error.to_string();
                prop_assert!(
                    message.contains(stem(key)),
                    "{key} = {value}: the error does not name the setting: {message}"
                );
            }
        }
    }

    #[test]
    fn registrations_pass_the_edge_only_when_every_field_is_sane(
        instance_id in prop_oneof!["\\PC{0,20}", "[a-z0-9-]{1,200}"],
        address in prop_oneof!["\\PC{0,30}", "[a-z0-9.-]{1,20}:[0-9]{1,6}", "\\[[0-9a-f:]{2,12}\\]:[0-9]{1,5}"],
        agent_version in prop_oneof!["\\PC{0,10}", "[0-9.]{1,80}"],
    ) {
        let request = v1::RegisterRequest {
            instance_id: instance_id.clone(),
            address: address.clone(),
            agent_version: agent_version.clone(),
        };
        match parse_registration(request) {
            Ok(registration) => {
                prop_assert!(!instance_id.is_empty() && instance_id.len() <= MAX_INSTANCE_ID_LEN);
                prop_assert!(instance_id.bytes().all(|b| b.is_ascii_graphic()));
                prop_assert!(address.len() <= MAX_ADDRESS_LEN);
                let port: u16 = address.rsplit_once(':').unwrap().1.parse().unwrap();
                prop_assert!(port > 0);
                prop_assert!(agent_version.len() <= MAX_VERSION_LEN);
                prop_assert_eq!(registration.instance_id, instance_id);
            }
            Err(status) => prop_assert_eq!(status.code(), tonic::Code::InvalidArgument),
        }
    }
}

#[test]
fn the_mutation_helper_sets_the_value_where_it_belongs() {
    let text = with_setting("controller", "min_instances", "7");
    assert!(
        text.contains("[controller]\nmax_instances = 5\nmin_instances = 7\n"),
        "{text}"
    );
    let text = with_setting("", "group", "\"x\"");
    assert!(text.contains("group = \"x\"\n[monitor]"), "{text}");
    assert!(!text.contains("group = \"test\""), "{text}");
    let text = with_setting("provider", "terminate_grace_ms", "9");
    assert!(
        text.trim_end().ends_with("terminate_grace_ms = 9"),
        "{text}"
    );
    assert!(DaemonConfig::from_toml(BASE).is_ok());
}
