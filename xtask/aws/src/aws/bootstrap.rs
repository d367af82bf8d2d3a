//! `cargo xtask bootstrap`: the security group, the seed instance from a base image, and the
//! agent installed on it over SSM Run Command.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use autoscaler_controller::ec2::{Ec2Config, GROUP_TAG};
use aws_sdk_ec2::error::ProvideErrorMetadata;
use aws_sdk_ec2::types::{IpPermission, ResourceType, TagSpecification, UserIdGroupPair};
use aws_sdk_ssm::client::Waiters as _;

use super::{AGENT_PORT, Aws, GroupArgs, MONITOR_PORT, UBUNTU_PARAMETER, explain, tag, wait_for};
use crate::util;
use autoscaler_controller::ec2::InstanceRole;

/// Creates or reuses the security group, launches the seed instance from a base image, and
/// installs the agent on it over SSM Run Command.
#[derive(Debug, clap::Args)]
pub struct Bootstrap {
    #[command(flatten)]
    pub group: GroupArgs,
    /// The SSM parameter naming the base image.
    #[arg(long, default_value = UBUNTU_PARAMETER)]
    pub base_image_parameter: String,
    /// A base image id, instead of the parameter.
    #[arg(long)]
    pub base_image: Option<String>,
    #[arg(long, default_value = "t2.micro")]
    pub instance_type: String,
    /// Key pair for SSH (empty for none).
    #[arg(long, default_value = "vockey")]
    pub key_name: String,
    /// IAM instance profile that lets the SSM agent work (AWS Academy provides LabInstanceProfile).
    #[arg(long, default_value = "LabInstanceProfile")]
    pub instance_profile: String,
    /// Also open SSH (port 22) to this CIDR, for example 203.0.113.7/32.
    #[arg(long)]
    pub ssh_from: Option<String>,
    /// Deliver debug binaries (faster to build; for rehearsals) instead of release ones.
    #[arg(long)]
    pub debug_binaries: bool,
}

impl Bootstrap {
    pub async fn run(self) -> anyhow::Result<()> {
        let aws = Aws::connect(&self.group.group).await?;
        self.run_with(&aws).await
    }

    pub async fn run_with(self, aws: &Aws) -> anyhow::Result<()> {
        eprintln!("bootstrap of group {}", aws.group);
        let vpc = aws.default_vpc().await?;
        self.check_key_pair(aws).await?;
        self.check_instance_profile(aws).await?;
        let security_group = ensure_security_group(aws, &vpc, self.ssh_from.as_deref()).await?;
        let base_image = match &self.base_image {
            Some(image) => image.clone(),
            None => aws
                .parameters
                .get(&self.base_image_parameter)
                .await
                .with_context(|| {
                    format!(
                        "cannot resolve the base image from {}",
                        self.base_image_parameter
                    )
                })?,
        };
        eprintln!("  base image: {base_image}");

        let seed = match aws
            .instances(&[InstanceRole::Seed])
            .await?
            .into_iter()
            .find(|i| i.state != "shutting-down")
        {
            Some(seed) => {
                eprintln!("  reusing the seed instance {}", seed.instance_id);
                seed.instance_id
            }
            None => {
                let cloud = aws
                    .cloud(Ec2Config {
                        ami_id: base_image.clone(),
                        instance_type: self.instance_type.clone(),
                        key_name: self.key_name.clone(),
                        instance_profile: self.instance_profile.clone(),
                        security_group_ids: vec![security_group.clone()],
                        ..Ec2Config::default()
                    })
                    .await?;
                let subnet = cloud.config().subnet_ids[0].clone();
                let id = cloud
                    .run_instance(
                        InstanceRole::Seed,
                        &base_image,
                        &subnet,
                        None,
                        &cloud.fresh_token(),
                        None,
                    )
                    .await
                    .map_err(|e| anyhow!("cannot launch the seed instance: {e}"))?;
                eprintln!("  launched the seed instance {id}");
                id
            }
        };
        aws.wait_running(std::slice::from_ref(&seed), Duration::from_secs(600))
            .await?;

        let urls = deliver_binaries(aws, self.debug_binaries).await?;
        let commands = vec![
            "set -eu".to_string(),
            format!(
                "curl --fail --silent --show-error --location --retry 5 -o /tmp/autoscaler-install.sh '{}'",
                urls["install.sh"]
            ),
            format!(
                "sh /tmp/autoscaler-install.sh '{}' '{}' '{}' '{}' '{}' '{}' '{}'",
                aws.group,
                urls["autoscaler-agent"],
                urls["autoscaler-monitor"],
                urls["autoscaler-agent.service"],
                urls["autoscaler-monitor.service"],
                urls["autoscaler-app"],
                urls["autoscaler-app.service"]
            ),
        ];
        run_command(aws, &seed, commands).await?;
        eprintln!(
            "bootstrap done: seed {seed} has the agent installed; next: cargo xtask bake-ami --group {}",
            aws.group
        );
        Ok(())
    }

    async fn check_key_pair(&self, aws: &Aws) -> anyhow::Result<()> {
        if self.key_name.is_empty() {
            return Ok(());
        }
        match aws
            .ec2
            .describe_key_pairs()
            .key_names(&self.key_name)
            .send()
            .await
        {
            Ok(output) if !output.key_pairs().is_empty() => Ok(()),
            Ok(_) => bail!(
                "key pair {} not found: create or import it, or pass --key-name",
                self.key_name
            ),
            Err(error) if error.code() == Some("InvalidKeyPair.NotFound") => {
                bail!(
                    "key pair {} not found: create or import it, or pass --key-name",
                    self.key_name
                )
            }
            Err(error) => Err(explain("describe key pairs", error)),
        }
    }

    async fn check_instance_profile(&self, aws: &Aws) -> anyhow::Result<()> {
        if self.instance_profile.is_empty() {
            return Ok(());
        }
        let iam = aws_sdk_iam::Client::new(&aws.sdk);
        match iam
            .get_instance_profile()
            .instance_profile_name(&self.instance_profile)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(error) if error.code() == Some("NoSuchEntity") => bail!(
                "instance profile {} missing: create one with SSM access (AmazonSSMManagedInstanceCore and \
                 provisioning/iam-policy.json), or pass --instance-profile",
                self.instance_profile
            ),
            Err(error) => Err(explain("read the instance profile", error)),
        }
    }
}

/// Finds or creates `autoscaler-<group>` with the monitor and agent ports open inside the group.
async fn ensure_security_group(
    aws: &Aws,
    vpc: &str,
    ssh_from: Option<&str>,
) -> anyhow::Result<String> {
    let group_id = match aws.security_group().await? {
        Some(id) => {
            eprintln!("  reusing the security group {id}");
            id
        }
        None => {
            let output = aws
                .ec2
                .create_security_group()
                .group_name(format!("autoscaler-{}", aws.group))
                .description(format!(
                    "autoscaler group {}: monitor and agents",
                    aws.group
                ))
                .vpc_id(vpc)
                .tag_specifications(
                    TagSpecification::builder()
                        .resource_type(ResourceType::SecurityGroup)
                        .tags(tag(GROUP_TAG, &aws.group))
                        .build(),
                )
                .send()
                .await
                .map_err(|e| explain("create the security group", e))?;
            let id = output
                .group_id()
                .context("CreateSecurityGroup returned no id")?
                .to_string();
            eprintln!("  created the security group {id}");
            id
        }
    };
    let mut permissions: Vec<IpPermission> = [MONITOR_PORT, AGENT_PORT]
        .into_iter()
        .map(|port| {
            IpPermission::builder()
                .ip_protocol("tcp")
                .from_port(port)
                .to_port(port)
                .user_id_group_pairs(UserIdGroupPair::builder().group_id(&group_id).build())
                .build()
        })
        .collect();
    if let Some(cidr) = ssh_from {
        permissions.push(
            IpPermission::builder()
                .ip_protocol("tcp")
                .from_port(22)
                .to_port(22)
                .ip_ranges(aws_sdk_ec2::types::IpRange::builder().cidr_ip(cidr).build())
                .build(),
        );
    }
    for permission in permissions {
        match aws
            .ec2
            .authorize_security_group_ingress()
            .group_id(&group_id)
            .ip_permissions(permission)
            .send()
            .await
        {
            Ok(_) => {}
            Err(error) if error.code() == Some("InvalidPermission.Duplicate") => {}
            Err(error) => return Err(explain("open the group's ports", error)),
        }
    }
    Ok(group_id)
}

/// Builds the binaries and uploads them, the units and the install script to the group's bucket;
/// returns presigned download URLs (an hour), so nothing is hosted publicly.
async fn deliver_binaries(
    aws: &Aws,
    debug: bool,
) -> anyhow::Result<BTreeMap<&'static str, String>> {
    let sh = util::shell()?;
    if debug {
        // The same build as the tests and the rehearsal: nothing is compiled twice.
        util::build_binaries(&sh)?;
    } else {
        util::cargo(&sh)
            .args(["build", "--release", "--package", "autoscaler-daemon"])
            .run()?;
        // The agent as it ships: the `agent` profile, small for a t2.micro.
        util::cargo(&sh)
            .args([
                "build",
                "--profile",
                "agent",
                "--package",
                "autoscaler-agent",
            ])
            .run()?;
    }
    let (agent_profile, monitor_profile) = if debug {
        ("dev", "dev")
    } else {
        ("agent", "release")
    };
    let provisioning = util::root().join("provisioning");
    let files: [(&'static str, std::path::PathBuf); 7] = [
        (
            "autoscaler-agent",
            util::profile_dir(agent_profile)?.join("autoscaler-agent"),
        ),
        (
            "autoscaler-app",
            util::profile_dir(agent_profile)?.join("autoscaler-app"),
        ),
        (
            "autoscaler-app.service",
            provisioning.join("systemd/autoscaler-app.service"),
        ),
        (
            "autoscaler-monitor",
            util::profile_dir(monitor_profile)?.join("autoscaler-monitor"),
        ),
        (
            "autoscaler-agent.service",
            provisioning.join("systemd/autoscaler-agent.service"),
        ),
        (
            "autoscaler-monitor.service",
            provisioning.join("systemd/autoscaler-monitor.service"),
        ),
        ("install.sh", provisioning.join("install.sh")),
    ];

    let mut s3_config = aws_sdk_s3::config::Builder::from(&aws.sdk);
    if aws.sdk.endpoint_url().is_some() {
        s3_config = s3_config.force_path_style(true);
    }
    let s3 = aws_sdk_s3::Client::from_conf(s3_config.build());
    let bucket = match aws.parameters.get(&aws.names.bucket()).await {
        Ok(bucket) => bucket,
        Err(autoscaler_aws::SsmError::NotFound(_)) => {
            let mut suffix = [0u8; 6];
            getrandom::fill(&mut suffix)
                .map_err(|error| anyhow::anyhow!("cannot draw the bucket's suffix: {error}"))?;
            let suffix: String = suffix.iter().map(|b| format!("{b:02x}")).collect();
            format!("autoscaler-{}-{suffix}", aws.group)
        }
        Err(error) => return Err(error.into()),
    };
    let exists = s3.head_bucket().bucket(&bucket).send().await.is_ok();
    if !exists {
        let mut create = s3.create_bucket().bucket(&bucket);
        let region = aws
            .sdk
            .region()
            .map(|r| r.as_ref().to_string())
            .unwrap_or_default();
        if region != "us-east-1" {
            create = create.create_bucket_configuration(
                aws_sdk_s3::types::CreateBucketConfiguration::builder()
                    .location_constraint(aws_sdk_s3::types::BucketLocationConstraint::from(
                        region.as_str(),
                    ))
                    .build(),
            );
        }
        create
            .send()
            .await
            .map_err(|e| explain("create the delivery bucket", e))?;
        eprintln!("  created the bucket {bucket}");
    }
    aws.parameters
        .put(&aws.names.bucket(), &bucket, false)
        .await?;

    let mut urls = BTreeMap::new();
    for (key, path) in files {
        let body = aws_sdk_s3::primitives::ByteStream::from_path(&path)
            .await
            .with_context(|| format!("cannot read {}", path.display()))?;
        s3.put_object()
            .bucket(&bucket)
            .key(key)
            .body(body)
            .send()
            .await
            .map_err(|e| explain(&format!("upload {key}"), e))?;
        let presigned = s3
            .get_object()
            .bucket(&bucket)
            .key(key)
            .presigned(aws_sdk_s3::presigning::PresigningConfig::expires_in(
                Duration::from_secs(3600),
            )?)
            .await
            .map_err(|e| explain(&format!("presign {key}"), e))?;
        urls.insert(key, presigned.uri().to_string());
    }
    eprintln!(
        "  uploaded the binaries (agent: {agent_profile}, monitor: {monitor_profile}), units and install script to s3://{bucket}"
    );
    Ok(urls)
}

/// Runs shell commands on an instance with SSM Run Command and waits for their success. Sending
/// is retried while the instance's SSM agent is not online yet (InvalidInstanceId).
async fn run_command(aws: &Aws, instance_id: &str, commands: Vec<String>) -> anyhow::Result<()> {
    let command_id = wait_for(
        &format!("{instance_id} to be reachable by SSM"),
        Duration::from_secs(900),
        Duration::from_secs(5),
        || async {
            match aws
                .ssm
                .send_command()
                .instance_ids(instance_id)
                .document_name("AWS-RunShellScript")
                .comment(format!("autoscaler install for group {}", aws.group))
                .parameters("commands", commands.clone())
                .timeout_seconds(600)
                .send()
                .await
            {
                Ok(output) => Ok(output
                    .command()
                    .and_then(|c| c.command_id())
                    .map(str::to_string)),
                Err(error) if error.code() == Some("InvalidInstanceId") => Ok(None),
                Err(error) => Err(explain("send the install command", error)),
            }
        },
    )
    .await?;
    // The SDK's waiter: it polls GetCommandInvocation (every 5 s at first, backing off), waits
    // out InvocationDoesNotExist, and ends at once on Failed, Cancelled or TimedOut.
    eprintln!("  waiting for the install command {command_id} to finish");
    let waited = aws
        .ssm
        .wait_until_command_executed()
        .command_id(&command_id)
        .instance_id(instance_id)
        .wait(Duration::from_secs(900))
        .await;
    if let Err(error) = waited {
        let ended = match &error {
            aws_smithy_runtime_api::client::waiters::error::WaiterError::FailureState(failed) => {
                failed.final_poll().as_result().ok()
            }
            _ => None,
        }
        .map(|output| {
            format!(
                "{}: {}",
                output
                    .status()
                    .map_or("in an unknown state", |s| s.as_str()),
                output.standard_error_content().unwrap_or("")
            )
        });
        match ended {
            Some(ended) => bail!("the install command on {instance_id} ended {ended}"),
            None => bail!(
                "cannot wait for the install command on {instance_id}: {}",
                aws_sdk_ssm::error::DisplayErrorContext(&error)
            ),
        }
    }
    eprintln!("  the install command succeeded on {instance_id}");
    Ok(())
}
