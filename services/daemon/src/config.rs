//! The daemon's config file (see `provisioning/autoscaler.example.toml`): its schema, read with
//! serde (every table refusing fields it does not know, an error naming the field), and the
//! checks of its values.

use std::path::PathBuf;
use std::time::Duration;

use autoscaler_controller::config::ControllerConfig;
pub use autoscaler_controller::config::HealthCheckType;
use autoscaler_controller::ec2::Ec2Config;
use autoscaler_monitor::MonitorConfig;
use serde::Deserialize;

/// The whole config file.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DaemonConfig {
    /// The group's name: tags, parameter paths and the local state directory derive from it.
    #[serde(default = "default_group")]
    pub group: String,
    #[serde(default)]
    pub monitor: MonitorSection,
    #[serde(default)]
    pub controller: ControllerConfig,
    #[serde(default)]
    pub provider: ProviderSection,
    /// A load balancer in front of the group, if any.
    #[serde(default)]
    pub load_balancer: Option<LoadBalancerSection>,
    /// Where the group's state outlives a daemon (the leader's lease, the policy's memory, the
    /// activity history).
    #[serde(default)]
    pub store: StoreSection,
}

/// `[store]`: the leader's lease, the policy's memory and the activity history.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct StoreSection {
    /// `sqlite` (the local provider's default: a file in the state dir, shared by every daemon
    /// of the group on this machine), `dynamodb` (a table shared by the monitor hosts of the
    /// group; `cargo xtask up` makes it) or `none` (one daemon, nothing kept; the EC2 provider's
    /// default).
    pub kind: Option<StoreKind>,
    /// The SQLite file (default: `<state_dir>/store.sqlite`).
    pub path: Option<PathBuf>,
    /// The DynamoDB table (default: `autoscaler-<group>`).
    pub table: Option<String>,
    /// How long the leader's lease lasts without a renewal, in milliseconds: a standby takes
    /// over within about this long of the leader's loss. The leader renews every third of it.
    pub lease_ms: u64,
    /// How long the activity history is kept, in days (EC2 Auto Scaling keeps six weeks).
    pub activity_retention_days: u64,
}

impl Default for StoreSection {
    fn default() -> Self {
        StoreSection {
            kind: None,
            path: None,
            table: None,
            lease_ms: 3_000,
            activity_retention_days: 42,
        }
    }
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum StoreKind {
    Sqlite,
    Dynamodb,
    None,
}

fn default_group() -> String {
    "default".to_string()
}

/// `[monitor]`: where it listens and how it polls.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MonitorSection {
    pub listen: String,
    /// Where the dashboard, its JSON API and the Prometheus metrics are served (none if unset).
    pub http_listen: Option<String>,
    pub poll_interval_ms: u64,
    pub poll_timeout_ms: u64,
    pub unhealthy_after: u32,
    pub load_window: usize,
}

impl Default for MonitorSection {
    fn default() -> Self {
        let defaults = MonitorConfig::default();
        MonitorSection {
            listen: "127.0.0.1:50051".to_string(),
            http_listen: None,
            poll_interval_ms: defaults.poll_interval.as_millis() as u64,
            poll_timeout_ms: defaults.poll_timeout.as_millis() as u64,
            unhealthy_after: defaults.unhealthy_after,
            load_window: defaults.load_window,
        }
    }
}

/// `[provider]`: where instances come from.
///
/// Read in two steps: `kind` first, then the rest of the table as that kind's own struct
/// (`LocalFields`, or `Ec2Config` itself), each refusing fields it does not know. So the fields
/// are listed once, where they are defined, and an error names the table and the field.
#[derive(Clone, Debug, PartialEq)]
pub enum ProviderSection {
    /// Instances are `autoscaler-agent` processes on this machine.
    Local(LocalProvider),
    /// Instances are EC2 instances launched from the group's custom AMI.
    Ec2(Ec2Config),
}

fn default_terminate_grace_ms() -> u64 {
    5_000
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum ProviderKind {
    Local,
    Ec2,
}

/// `[provider] kind = "local"`: instances are processes on this machine.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LocalProvider {
    /// Instance records and logs (default: `$TMPDIR/autoscaler-<group>`).
    #[serde(default)]
    pub state_dir: Option<PathBuf>,
    /// The agent binary (default: `autoscaler-agent` beside this program).
    #[serde(default)]
    pub agent_binary: Option<PathBuf>,
    /// Extra flags for every agent.
    #[serde(default)]
    pub agent_args: Vec<String>,
    /// How long an instance's processes get after SIGTERM before SIGKILL, in milliseconds.
    #[serde(default = "default_terminate_grace_ms")]
    pub terminate_grace_ms: u64,
    /// Start the application (`autoscaler-app`) beside every agent, whose agent then reports
    /// the application's real load instead of a simulated one.
    #[serde(default)]
    pub app: bool,
    /// The application binary (default: `autoscaler-app` beside this program).
    #[serde(default)]
    pub app_binary: Option<PathBuf>,
    /// Extra flags for every application (`--slots`, `--service-ms`, `--cpu-ms`).
    #[serde(default)]
    pub app_args: Vec<String>,
}

impl Default for LocalProvider {
    fn default() -> Self {
        LocalProvider {
            state_dir: None,
            agent_binary: None,
            agent_args: Vec::new(),
            terminate_grace_ms: default_terminate_grace_ms(),
            app: false,
            app_binary: None,
            app_args: Vec::new(),
        }
    }
}

/// `[load_balancer]`: what sends the group's requests to its instances. The controller
/// registers an instance when it enters service, and drains it before any termination.
#[derive(Clone, Debug, PartialEq)]
pub enum LoadBalancerSection {
    /// HAProxy on this machine, which the daemon starts (the local provider's balancer).
    Haproxy(HaproxySection),
    /// An Elastic Load Balancing target group (the EC2 provider's balancer), which `cargo xtask
    /// up --load-balancer` makes with its Application Load Balancer.
    Elb(ElbSection),
}

impl LoadBalancerSection {
    /// How long a deregistered instance may take to finish its requests before it is
    /// terminated anyway.
    pub fn drain_timeout(&self) -> Duration {
        match self {
            LoadBalancerSection::Haproxy(haproxy) => {
                Duration::from_secs(haproxy.drain_timeout_secs)
            }
            LoadBalancerSection::Elb(elb) => Duration::from_secs(elb.drain_timeout_secs),
        }
    }
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum LoadBalancerKind {
    Haproxy,
    Elb,
}

/// `[load_balancer] kind = "elb"`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ElbSection {
    /// The target group's ARN; empty reads `/autoscaler/<group>/target-group`, where `cargo
    /// xtask up --load-balancer` records the one it makes.
    pub target_group_arn: String,
    /// The application's port on every instance (autoscaler-app.service listens on 8080).
    pub app_port: u16,
    /// The most a deregistered instance is given before it is terminated, in seconds: at
    /// least the target group's deregistration delay (`up` sets it to 30 s; ELB's default is
    /// 300 s).
    pub drain_timeout_secs: u64,
}

impl Default for ElbSection {
    fn default() -> Self {
        ElbSection {
            target_group_arn: String::new(),
            app_port: 8080,
            drain_timeout_secs: 60,
        }
    }
}

/// `[load_balancer] kind = "haproxy"`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HaproxySection {
    /// Where clients send their requests.
    pub listen: String,
    /// The `haproxy` program (Debian's package; 2.6 or later).
    pub binary: PathBuf,
    /// The application's health path, asked with GET (200 expected).
    pub health_path: String,
    /// Between two health checks of one instance, in milliseconds.
    pub check_interval_ms: u64,
    /// Failed health checks in a row that take an instance out of service.
    pub unhealthy_after: u32,
    /// Passed health checks in a row that put it (back) in.
    pub healthy_after: u32,
    /// The most a deregistered instance is given to finish its requests, in seconds.
    pub drain_timeout_secs: u64,
}

impl Default for HaproxySection {
    fn default() -> Self {
        HaproxySection {
            listen: "127.0.0.1:8080".to_string(),
            binary: PathBuf::from("haproxy"),
            health_path: "/healthz".to_string(),
            check_interval_ms: 1_000,
            unhealthy_after: 2,
            healthy_after: 1,
            drain_timeout_secs: 30,
        }
    }
}

/// Reads `table` (without its `kind`) as `T`; an error names the field, as
/// `` `provider.state_dir` (kind = "local"): ...``.
fn kind_fields<T: serde::de::DeserializeOwned>(
    table: toml::Table,
    name: &str,
    kind: &str,
) -> Result<T, String> {
    serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|error| {
        let path = error.path().to_string();
        let message = error.into_inner().message().to_string();
        match path.as_str() {
            "." | "" => format!("`[{name}]` with kind = \"{kind}\": {message}"),
            field => format!("`{name}.{field}` (kind = \"{kind}\"): {message}"),
        }
    })
}

/// The `kind` of table `name`, taken out of it.
fn take_kind<K: serde::de::DeserializeOwned>(
    table: &mut toml::Table,
    name: &str,
    kinds: &str,
) -> Result<K, String> {
    let kind = table
        .remove("kind")
        .ok_or_else(|| format!("`{name}.kind` is missing ({kinds})"))?;
    K::deserialize(kind).map_err(|e| format!("`{name}.kind`: {}", e.message()))
}

impl<'de> Deserialize<'de> for LoadBalancerSection {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let mut table = toml::Table::deserialize(deserializer)?;
        let kind: LoadBalancerKind =
            take_kind(&mut table, "load_balancer", "\"haproxy\" or \"elb\"")
                .map_err(D::Error::custom)?;
        match kind {
            LoadBalancerKind::Haproxy => {
                kind_fields(table, "load_balancer", "haproxy").map(LoadBalancerSection::Haproxy)
            }
            LoadBalancerKind::Elb => {
                kind_fields(table, "load_balancer", "elb").map(LoadBalancerSection::Elb)
            }
        }
        .map_err(D::Error::custom)
    }
}

impl<'de> Deserialize<'de> for ProviderSection {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let mut table = toml::Table::deserialize(deserializer)?;
        let kind: ProviderKind =
            take_kind(&mut table, "provider", "\"local\" or \"ec2\"").map_err(D::Error::custom)?;
        match kind {
            ProviderKind::Local => {
                kind_fields(table, "provider", "local").map(ProviderSection::Local)
            }
            ProviderKind::Ec2 => kind_fields(table, "provider", "ec2").map(ProviderSection::Ec2),
        }
        .map_err(D::Error::custom)
    }
}

impl Default for ProviderSection {
    fn default() -> Self {
        ProviderSection::Local(LocalProvider::default())
    }
}

/// A config file that cannot be used; the message names the field.
#[derive(Debug, thiserror::Error)]
pub enum DaemonConfigError {
    #[error("{0}")]
    Parse(String),
    #[error("`group` {0}")]
    Group(String),
    #[error(transparent)]
    Monitor(#[from] autoscaler_monitor::MonitorConfigError),
    #[error(transparent)]
    Controller(#[from] autoscaler_controller::config::ConfigError),
}

impl DaemonConfig {
    /// Parses and checks a config file's text.
    pub fn from_toml(text: &str) -> Result<DaemonConfig, DaemonConfigError> {
        let config: DaemonConfig =
            toml::from_str(text).map_err(|error| DaemonConfigError::Parse(error.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), DaemonConfigError> {
        let group_ok = !self.group.is_empty()
            && self.group.len() <= 64
            && self
                .group
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !group_ok {
            return Err(DaemonConfigError::Group(format!(
                "is {:?}; it must be 1-64 characters of a-z, 0-9 and -",
                self.group
            )));
        }
        self.monitor_config().validate()?;
        self.controller.validate()?;
        if self.controller.health_check_type == HealthCheckType::LoadBalancer
            && self.load_balancer.is_none()
        {
            return Err(DaemonConfigError::Parse(
                "`controller.health_check_type = \"load-balancer\"` needs a [load_balancer] \
                 section: there is no balancer to ask"
                    .to_string(),
            ));
        }
        if !(300..=600_000).contains(&self.store.lease_ms) {
            return Err(DaemonConfigError::Parse(format!(
                "`store.lease_ms` is {}; it must be 300 to 600000",
                self.store.lease_ms
            )));
        }
        if !(1..=3_650).contains(&self.store.activity_retention_days) {
            return Err(DaemonConfigError::Parse(format!(
                "`store.activity_retention_days` is {}; it must be 1 to 3650",
                self.store.activity_retention_days
            )));
        }
        Ok(())
    }

    /// The monitor's part, with a fresh monitor id.
    pub fn monitor_config(&self) -> MonitorConfig {
        let poll_interval = Duration::from_millis(self.monitor.poll_interval_ms);
        MonitorConfig {
            poll_interval,
            poll_timeout: Duration::from_millis(self.monitor.poll_timeout_ms),
            unhealthy_after: self.monitor.unhealthy_after,
            load_window: self.monitor.load_window,
            publish_interval: (poll_interval / 10)
                .max(Duration::from_millis(10))
                .min(poll_interval),
            ..MonitorConfig::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_config_parses() {
        let text = include_str!("../../../provisioning/autoscaler.example.toml");
        let config = DaemonConfig::from_toml(text).expect("the example is valid");
        assert_eq!(config.controller.min_instances, 2);
        assert_eq!(config.controller.max_instances, 5);
        // Its commented EC2 provider parses too, and shows the defaults.
        let (_, ec2) = text
            .split_once("# Or EC2")
            .expect("the example's EC2 provider");
        let ec2: String = ec2
            .lines()
            .filter_map(|line| line.strip_prefix("# "))
            .filter(|line| line.starts_with('[') || line.contains(" = "))
            .map(|line| format!("{line}\n"))
            .collect();
        let shown = DaemonConfig::from_toml(&ec2).expect("the example's EC2 provider is valid");
        let defaults = DaemonConfig::from_toml("[provider]\nkind = \"ec2\"\n").unwrap();
        assert_eq!(shown.provider, defaults.provider, "{ec2}");
    }

    /// The keys the parser accepts in the table `prefix` opens: the list its error names for an
    /// unknown key.
    fn accepted_keys(prefix: &str) -> Vec<String> {
        accepted_keys_of(&format!("{prefix}\n{UNKNOWN} = 1\n"))
    }

    const UNKNOWN: &str = "not_a_key_of_any_table";

    /// The keys the parser names when it refuses `text` for its unknown key.
    fn accepted_keys_of(text: &str) -> Vec<String> {
        let error = match DaemonConfig::from_toml(text) {
            Err(error) => error.to_string(),
            Ok(_) => panic!("an unknown key was accepted in {text:?}"),
        };
        let (_, list) = error
            .split_once("expected one of ")
            .unwrap_or_else(|| panic!("no list of keys in: {error}"));
        list.split(", ")
            .map(|name| name.trim().trim_matches('`').to_string())
            .collect()
    }

    /// The keys the example shows (set or commented out), by the table they stand in, and the
    /// keys of its inline tables (`scale_out = { above = ... }`).
    fn example_keys() -> (Vec<(String, String)>, Vec<String>) {
        let text = include_str!("../../../provisioning/autoscaler.example.toml");
        let (mut keys, mut inline) = (Vec::new(), Vec::new());
        let mut table = String::new();
        for line in text.lines() {
            let line = line.trim_start_matches('#').trim();
            // `[table]`, or `[[array.of.tables]]`.
            if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                table = name
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_string();
                continue;
            }
            let Some((key, value)) = line.split_once(" = ") else {
                continue;
            };
            if key.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') {
                keys.push((table.clone(), key.to_string()));
                if let Some(fields) = value.trim().strip_prefix('{') {
                    for field in fields.trim_end_matches('}').split(',') {
                        if let Some((name, _)) = field.split_once('=') {
                            inline.push(name.trim().to_string());
                        }
                    }
                }
            }
        }
        (keys, inline)
    }

    #[test]
    fn the_example_shows_every_key_the_parser_accepts() {
        let (shown, inline) = example_keys();
        let tables = [
            ("", ""),
            ("[monitor]", "monitor"),
            ("[controller]", "controller"),
            (
                "[controller.policy]\nkind = \"target-tracking\"",
                "controller.policy",
            ),
            ("[controller.policy]\nkind = \"step\"", "controller.policy"),
            ("[controller.shadow]", "controller.shadow"),
            ("[controller.predictive]", "controller.predictive"),
            ("[[controller.schedule]]", "controller.schedule"),
            (
                "[[controller.scheduled_change]]",
                "controller.scheduled_change",
            ),
            ("[provider]\nkind = \"local\"", "provider"),
            ("[provider]\nkind = \"ec2\"", "provider"),
            ("[load_balancer]\nkind = \"haproxy\"", "load_balancer"),
        ];
        let mut missing = Vec::new();
        for (prefix, table) in tables {
            let keys = accepted_keys(prefix);
            assert!(keys.len() >= 4, "{prefix:?}: {keys:?}");
            for key in keys {
                // A table's key is its own header; `policy` is also shown as one.
                let header = if table.is_empty() {
                    key.clone()
                } else {
                    format!("{table}.{key}")
                };
                let as_key = shown.iter().any(|(t, k)| t == table && *k == key);
                let as_table = shown.iter().any(|(t, _)| *t == header);
                if !as_key && !as_table {
                    missing.push(header);
                }
            }
        }
        let step =
            format!("[controller.policy]\nkind = \"step\"\nscale_out = {{ {UNKNOWN} = 1 }}\n");
        for key in accepted_keys_of(&step) {
            if !inline.contains(&key) {
                missing.push(format!("controller.policy.scale_out.{key}"));
            }
        }
        assert!(
            missing.is_empty(),
            "provisioning/autoscaler.example.toml does not show {missing:?}"
        );
    }

    #[test]
    fn an_empty_file_means_the_defaults() {
        let config = DaemonConfig::from_toml("").unwrap();
        assert_eq!(config.group, "default");
        assert_eq!(config.controller, ControllerConfig::default());
        assert_eq!(config.provider, ProviderSection::default());
    }

    #[test]
    fn bad_configs_are_refused_with_the_field_named() {
        let cases = [
            (
                "[controller]\nmin_instances = 1\n",
                "controller.min_instances",
            ),
            (
                "[controller]\nmax_instances = 6\n",
                "controller.max_instances",
            ),
            (
                "[controller]\nmin_instances = 4\nmax_instances = 3\n",
                "controller.min_instances",
            ),
            ("[controller]\nmin_instanses = 2\n", "min_instanses"),
            ("[monitor]\npoll_interval_ms = 0\n", "poll_interval"),
            ("group = \"Bad Group\"\n", "group"),
            (
                "[controller.policy]\nkind = \"target-tracking\"\ntarget = 150\ntolerance = 0.1\n",
                "policy.target",
            ),
            ("[provider]\nkind = \"ec3\"\n", "ec3"),
            ("[provider]\nstate_dir = \"/tmp/x\"\n", "provider.kind"),
            (
                "[provider]\nkind = \"local\"\nami_id = \"ami-1\"\n",
                "ami_id",
            ),
            (
                "[provider]\nkind = \"ec2\"\nagent_args = []\n",
                "agent_args",
            ),
            (
                "[provider]\nkind = \"ec2\"\nroot_volume_gib = \"big\"\n",
                "root_volume_gib",
            ),
            (
                "[provider]\nkind = \"local\"\nterminate_grace_ms = -1\n",
                "terminate_grace_ms",
            ),
            ("[controller]\nmin_instances = \"two\"\n", "min_instances"),
            (
                "[controller]\nhealth_check_type = \"load-balancer\"\n",
                "controller.health_check_type",
            ),
            (
                "[controller]\nhealth_check_type = \"elb\"\n",
                "health_check_type",
            ),
        ];
        for (text, field) in cases {
            let error = DaemonConfig::from_toml(text).unwrap_err().to_string();
            assert!(
                error.contains(field),
                "{text:?} gave {error:?}, which does not name {field}"
            );
        }
    }
}
