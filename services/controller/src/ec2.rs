//! The EC2 provider: launches the group's instances from the custom AMI and lists and terminates
//! only instances that carry the group's tag. Every call has the SDK's attempt and operation
//! timeouts; throttling, 5xx and capacity errors come back as retryable `CloudError`s.
//!
//! Its configuration and tags are always here; the provider itself (`sdk.rs`, the AWS SDK) only
//! with the `ec2` feature (on by default; the benchmarks build without it, to skip compiling
//! aws-sdk-ec2).

use serde::Deserialize;

#[cfg(feature = "ec2")]
mod elb;
#[cfg(feature = "ec2")]
mod sdk;
#[cfg(feature = "ec2")]
pub use elb::{TargetGroup, target_state};
#[cfg(feature = "ec2")]
pub use sdk::{Ec2Cloud, classify, default_subnets, describe_group};

/// Tag naming the group an instance belongs to.
pub const GROUP_TAG: &str = "autoscaler:group";
/// Tag naming the leader's lease epoch (the term) that launched an instance (0 without a store).
pub const EPOCH_TAG: &str = "autoscaler:epoch";
/// Tag naming the launch that made an instance (the controller's launch token, also the tail of
/// its ClientToken): a launch whose answer was lost is known to have taken effect by it.
pub const LAUNCH_TAG: &str = "autoscaler:launch";
/// The tag of the launch specification version an instance was launched with.
pub const VERSION_TAG: &str = "autoscaler:version";
/// Tag naming an instance's role (`InstanceRole`).
pub const ROLE_TAG: &str = "autoscaler:role";

/// What an instance of the group is for, as its `autoscaler:role` tag says.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum InstanceRole {
    /// An application instance, running the agent: the fleet the controller scales.
    Agent,
    /// The monitor host, running the daemon.
    Monitor,
    /// The instance `bootstrap` makes and `bake-ami` images.
    Seed,
}

impl InstanceRole {
    pub const ALL: [InstanceRole; 3] = [
        InstanceRole::Agent,
        InstanceRole::Monitor,
        InstanceRole::Seed,
    ];

    /// The tag's value.
    pub fn tag_value(self) -> &'static str {
        match self {
            InstanceRole::Agent => "agent",
            InstanceRole::Monitor => "monitor",
            InstanceRole::Seed => "seed",
        }
    }

    /// The role a tag value names, if any.
    pub fn from_tag_value(value: &str) -> Option<InstanceRole> {
        InstanceRole::ALL
            .into_iter()
            .find(|r| r.tag_value() == value)
    }
}

impl std::fmt::Display for InstanceRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.tag_value())
    }
}

/// `[provider] kind = "ec2"`: how instances are launched. The defaults fit an AWS Academy lab.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Ec2Config {
    /// The custom AMI; empty reads `/autoscaler/<group>/ami` from Parameter Store at start.
    pub ami_id: String,
    pub instance_type: String,
    /// Key pair for SSH; empty for none.
    pub key_name: String,
    /// IAM instance profile (SSM access for the agent); empty for none.
    pub instance_profile: String,
    /// Security groups; empty uses the group's own, `autoscaler-<group>`.
    pub security_group_ids: Vec<String>,
    /// Subnets to spread instances over; empty uses the default VPC's default subnets.
    pub subnet_ids: Vec<String>,
    /// Size of the gp3 root volume, GiB.
    pub root_volume_gib: i32,
    /// The AMI's root device (`/dev/sda1` on Ubuntu).
    pub root_device_name: String,
}

impl Default for Ec2Config {
    fn default() -> Self {
        Ec2Config {
            ami_id: String::new(),
            instance_type: "t2.micro".to_string(),
            key_name: "vockey".to_string(),
            instance_profile: "LabInstanceProfile".to_string(),
            security_group_ids: Vec::new(),
            subnet_ids: Vec::new(),
            root_volume_gib: 8,
            root_device_name: "/dev/sda1".to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::InstanceRole;

    #[test]
    fn a_role_reads_back_from_its_tag_and_a_stranger_is_none() {
        for role in InstanceRole::ALL {
            assert_eq!(InstanceRole::from_tag_value(role.tag_value()), Some(role));
        }
        assert_eq!(InstanceRole::from_tag_value("Agent"), None);
        assert_eq!(format!("{:<8}|", InstanceRole::Seed), "seed    |");
    }
}
