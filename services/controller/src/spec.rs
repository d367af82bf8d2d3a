//! The group's launch specification: what an instance is launched with (on EC2 its image and
//! instance type; locally the agent's and the application's extra arguments), and its version, a
//! counter and a content hash (`v3-1a2b3c4d`) that every instance carries. `Specs` is the book
//! of versions the controller keeps in its memory: the current one (what launches now) and the
//! ones before it (what a rollback goes back to).

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// What an instance is launched with. A platform refuses the settings it has no use for.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LaunchSpec {
    /// The machine image (EC2: an AMI id); `None`: the platform's own (the AMI parameter the
    /// workflow's `bake-ami` publishes, or the config's).
    pub image_id: Option<String>,
    /// EC2's instance type; `None`: the platform's.
    pub instance_type: Option<String>,
    /// Arguments added to every agent's (locally).
    pub agent_args: Vec<String>,
    /// Arguments added to every application's (locally, when the group serves traffic).
    pub app_args: Vec<String>,
    /// EC2: the user data every new instance runs at boot, in place of the group's. Left out
    /// of the hash's text when unset, so versions made before it keep their names.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_data: Option<String>,
}

/// The most user data a version takes: 12 KiB, under EC2's 16 KiB (before its base64
/// encoding) because the request that carries it must fit the protocol's 16 KiB message limit
/// (`autoscaler_proto::MAX_MESSAGE_BYTES`), which this project keeps for every service.
pub const USER_DATA_LIMIT: usize = 12 * 1024;

impl LaunchSpec {
    /// The first 8 hex digits of the SHA-256 of its content.
    pub fn hash(&self) -> String {
        let text = serde_json::to_string(self).unwrap_or_default();
        let digest = Sha256::digest(text.as_bytes());
        digest[..4].iter().map(|b| format!("{b:02x}")).collect()
    }

    /// One line: the settings that are set.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(image) = &self.image_id {
            parts.push(format!("image {image}"));
        }
        if let Some(kind) = &self.instance_type {
            parts.push(format!("type {kind}"));
        }
        if !self.agent_args.is_empty() {
            parts.push(format!("agent args {:?}", self.agent_args));
        }
        if !self.app_args.is_empty() {
            parts.push(format!("app args {:?}", self.app_args));
        }
        if let Some(user_data) = &self.user_data {
            parts.push(format!("user data of {} bytes", user_data.len()));
        }
        match parts.is_empty() {
            true => "the platform's defaults".to_string(),
            false => parts.join(", "),
        }
    }
}

/// One version of the launch specification.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpecVersion {
    /// 1, 2, ... in the group.
    pub counter: u64,
    pub spec: LaunchSpec,
    /// When it became current, ms since the Unix epoch.
    pub since_ms: i64,
}

impl SpecVersion {
    /// `v<counter>-<hash>`: what instances are tagged with.
    pub fn version(&self) -> String {
        format!("v{}-{}", self.counter, self.spec.hash())
    }
}

/// How many versions the book keeps (the current one and those before it).
pub const KEPT_VERSIONS: usize = 5;

/// The versions of the group's launch specification, the current one last.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Specs {
    pub versions: Vec<SpecVersion>,
    /// The hash of the config file's specification the last time the daemon started: a config
    /// changed since makes a new version; one unchanged leaves the runtime changes standing.
    #[serde(default)]
    pub config_hash: String,
}

impl Specs {
    /// A book whose one version is the config's.
    pub fn new(config: LaunchSpec, now_ms: i64) -> Specs {
        Specs {
            config_hash: config.hash(),
            versions: vec![SpecVersion {
                counter: 1,
                spec: config,
                since_ms: now_ms,
            }],
        }
    }

    /// The book a daemon starts with: the one kept (`kept`), unless the config's specification
    /// changed since it was kept, which then becomes current.
    pub fn resume(kept: Option<Specs>, config: LaunchSpec, now_ms: i64) -> Specs {
        match kept {
            Some(mut specs) if !specs.versions.is_empty() => {
                if specs.config_hash != config.hash() {
                    specs.config_hash = config.hash();
                    specs.push(config, now_ms);
                }
                specs
            }
            _ => Specs::new(config, now_ms),
        }
    }

    /// What launches now.
    pub fn current(&self) -> &SpecVersion {
        self.versions.last().expect("a book always has a version")
    }

    /// The version before the current one.
    pub fn previous(&self) -> Option<&SpecVersion> {
        self.versions.iter().rev().nth(1)
    }

    /// The version named `version` (`v3-1a2b3c4d`), if the book keeps it.
    pub fn get(&self, version: &str) -> Option<&SpecVersion> {
        self.versions.iter().find(|v| v.version() == version)
    }

    /// Makes `spec` current as a new version (the same content as the current one changes
    /// nothing); returns the current version.
    pub fn push(&mut self, spec: LaunchSpec, now_ms: i64) -> &SpecVersion {
        if self.current().spec != spec {
            let counter = self.versions.iter().map(|v| v.counter).max().unwrap_or(0) + 1;
            self.versions.push(SpecVersion {
                counter,
                spec,
                since_ms: now_ms,
            });
            if self.versions.len() > KEPT_VERSIONS {
                self.versions.remove(0);
            }
        }
        self.current()
    }

    /// Makes the kept version `version` current again (a rollback); false when it is not kept.
    pub fn make_current(&mut self, version: &str, now_ms: i64) -> bool {
        let Some(at) = self.versions.iter().position(|v| v.version() == version) else {
            return false;
        };
        let mut again = self.versions.remove(at);
        again.since_ms = now_ms;
        self.versions.push(again);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(arg: &str) -> LaunchSpec {
        LaunchSpec {
            agent_args: vec![arg.to_string()],
            ..LaunchSpec::default()
        }
    }

    #[test]
    fn versions_count_up_and_name_their_content() {
        let mut specs = Specs::new(LaunchSpec::default(), 0);
        let first = specs.current().version();
        assert!(first.starts_with("v1-") && first.len() == 11, "{first}");
        assert_eq!(specs.push(LaunchSpec::default(), 1).version(), first);
        let second = specs.push(spec("--a"), 2).version();
        assert!(second.starts_with("v2-") && second != first);
        assert_eq!(specs.previous().unwrap().version(), first);
        assert!(specs.make_current(&first, 3));
        assert_eq!(specs.current().version(), first);
        assert_eq!(specs.previous().unwrap().version(), second);
        assert!(!specs.make_current("v9-00000000", 4));
        for i in 0..10 {
            specs.push(spec(&format!("--{i}")), 5);
        }
        assert_eq!(specs.versions.len(), KEPT_VERSIONS);
        assert_eq!(specs.current().counter, 12);
    }

    #[test]
    fn user_data_left_unset_keeps_the_names_of_versions_made_before_it() {
        // The hash of the platform's defaults before `user_data` existed (`v1-2601c1ce`).
        assert_eq!(LaunchSpec::default().hash(), "2601c1ce");
        let with = LaunchSpec {
            user_data: Some("#!/bin/sh\n".into()),
            ..LaunchSpec::default()
        };
        assert_ne!(with.hash(), "2601c1ce");
        // A book kept before it reads back as it was.
        let kept: LaunchSpec = serde_json::from_str(
            r#"{"image_id":null,"instance_type":null,"agent_args":[],"app_args":[]}"#,
        )
        .unwrap();
        assert_eq!(kept, LaunchSpec::default());
    }

    #[test]
    fn a_changed_config_makes_a_new_version_and_an_unchanged_one_keeps_the_runtime_change() {
        let mut kept = Specs::new(LaunchSpec::default(), 0);
        kept.push(spec("--runtime"), 1);
        let resumed = Specs::resume(Some(kept.clone()), LaunchSpec::default(), 2);
        assert_eq!(resumed.current().spec, spec("--runtime"));
        let changed = Specs::resume(Some(kept), spec("--edited"), 3);
        assert_eq!(changed.current().spec, spec("--edited"));
        assert_eq!(changed.current().counter, 3);
    }
}
