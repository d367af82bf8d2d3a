//! The AWS workflow: `bootstrap`, `bake-ami`, `up`, `down` and `status`. Every command honours the
//! standard AWS settings (profile, region, `AWS_ENDPOINT_URL`), takes the group's name, can be run
//! again after a failure (it finds what an earlier run made instead of making it twice), shows a
//! spinner while it waits, and stops with a clear message when something is missing.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail, ensure};
use autoscaler_aws::{GroupParameters, Parameters, Timeouts};
use autoscaler_controller::ec2::{Ec2Cloud, Ec2Config, GROUP_TAG, ROLE_TAG};
use autoscaler_proto::auth::{Credentials, Token};
use autoscaler_proto::tls::{GroupCa, Role, Transport};
use aws_sdk_ec2::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_ec2::types::{
    Filter, IpPermission, ResourceType, Tag, TagSpecification, UserIdGroupPair,
};
use base64::Engine;
use indicatif::{ProgressBar, ProgressStyle};

use crate::util;

/// The monitor's and the agents' gRPC ports, open only inside the group's security group.
pub const MONITOR_PORT: i32 = 50051;
pub const AGENT_PORT: i32 = 50061;
/// Where Canonical publishes the current Ubuntu 24.04 LTS AMI.
pub const UBUNTU_PARAMETER: &str =
    "/aws/service/canonical/ubuntu/server/24.04/stable/current/amd64/hvm/ebs-gp3/ami-id";

/// Flags every AWS command takes.
#[derive(Clone, Debug, clap::Args)]
pub struct GroupArgs {
    /// The group's name (a-z, 0-9, -).
    #[arg(long, default_value = "default")]
    pub group: String,
}

/// The clients, built once from the standard chain.
pub struct Aws {
    pub sdk: aws_config::SdkConfig,
    pub ec2: aws_sdk_ec2::Client,
    pub ssm: aws_sdk_ssm::Client,
    pub parameters: Parameters,
    pub names: GroupParameters,
    pub group: String,
}

/// One of the group's instances as EC2 reports it.
#[derive(Clone, Debug)]
pub struct GroupInstance {
    pub instance_id: String,
    pub role: String,
    pub state: String,
    pub zone: String,
    pub private_ip: String,
}

/// Turns an SDK error into a message a user can act on.
pub fn explain<E, R>(what: &str, error: SdkError<E, R>) -> anyhow::Error
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug,
{
    match error.code() {
        Some(
            code @ ("UnauthorizedOperation"
            | "AccessDenied"
            | "AccessDeniedException"
            | "AuthFailure"
            | "InvalidClientTokenId"
            | "UnrecognizedClientException"
            | "ExpiredToken"
            | "ExpiredTokenException"),
        ) => anyhow!(
            "not authorised to {what} ({code}): check the AWS credentials (on AWS Academy, copy the lab's \
             credentials into ~/.aws/credentials) and that they allow it (provisioning/iam-policy.json)"
        ),
        _ => anyhow!("cannot {what}: {}", DisplayErrorContext(&error)),
    }
}

/// Waits until `check` returns a value, polling every `every`, with a spinner; fails after
/// `timeout` with a message naming what it waited for.
pub async fn wait_for<T, F, Fut>(
    what: &str,
    timeout: Duration,
    every: Duration,
    mut check: F,
) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Option<T>>>,
{
    let spinner = ProgressBar::new_spinner();
    spinner.set_style(
        ProgressStyle::with_template("{spinner} {msg} ({elapsed})").expect("a valid template"),
    );
    spinner.set_message(what.to_string());
    spinner.enable_steady_tick(Duration::from_millis(120));
    let started = Instant::now();
    loop {
        if let Some(value) = check().await? {
            spinner.finish_and_clear();
            eprintln!("  done: {what} ({:.1}s)", started.elapsed().as_secs_f64());
            return Ok(value);
        }
        if started.elapsed() > timeout {
            spinner.finish_and_clear();
            bail!("gave up after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(every).await;
    }
}

fn tag(key: &str, value: &str) -> Tag {
    Tag::builder().key(key).value(value).build()
}

impl Aws {
    /// The operator's credentials: the group token and the operator's certificate, both from
    /// Parameter Store (written by `up`).
    pub async fn operator_credentials(&self) -> anyhow::Result<Credentials> {
        let token = self.parameters.get(&self.names.token()).await?;
        let material = autoscaler_aws::tls_material(&self.parameters, &self.names, Role::Operator)
            .await
            .context("the operator's TLS material (made by `cargo xtask up`)")?;
        Ok(Credentials::new(
            Token::new(&token).context("the group token")?,
            Transport::tls(material),
        ))
    }

    pub async fn connect(group: &str) -> anyhow::Result<Aws> {
        let sdk = autoscaler_aws::sdk_config(Timeouts::default()).await;
        if sdk.region().is_none() {
            bail!(
                "no AWS region: set AWS_REGION (or a region in ~/.aws/config), for example us-east-1"
            );
        }
        Ok(Aws::with_config(sdk, group))
    }

    pub fn with_config(sdk: aws_config::SdkConfig, group: &str) -> Aws {
        Aws {
            ec2: aws_sdk_ec2::Client::new(&sdk),
            ssm: aws_sdk_ssm::Client::new(&sdk),
            parameters: Parameters::new(&sdk),
            names: GroupParameters::new(group),
            group: group.to_string(),
            sdk,
        }
    }

    /// The group's instances in `roles` (all roles when empty) that are not terminated.
    pub async fn instances(&self, roles: &[&str]) -> anyhow::Result<Vec<GroupInstance>> {
        let mut request = self
            .ec2
            .describe_instances()
            .filters(
                Filter::builder()
                    .name(format!("tag:{GROUP_TAG}"))
                    .values(&self.group)
                    .build(),
            )
            .filters(
                Filter::builder()
                    .name("instance-state-name")
                    .set_values(Some(
                        ["pending", "running", "stopping", "stopped", "shutting-down"]
                            .map(String::from)
                            .to_vec(),
                    ))
                    .build(),
            );
        if !roles.is_empty() {
            request = request.filters(
                Filter::builder()
                    .name(format!("tag:{ROLE_TAG}"))
                    .set_values(Some(roles.iter().map(|r| r.to_string()).collect()))
                    .build(),
            );
        }
        let output = request
            .send()
            .await
            .map_err(|e| explain("describe instances", e))?;
        let mut found = Vec::new();
        for instance in output.reservations().iter().flat_map(|r| r.instances()) {
            let role = instance
                .tags()
                .iter()
                .find(|t| t.key() == Some(ROLE_TAG))
                .and_then(|t| t.value())
                .unwrap_or("")
                .to_string();
            found.push(GroupInstance {
                instance_id: instance.instance_id().unwrap_or("").to_string(),
                role,
                state: instance
                    .state()
                    .and_then(|s| s.name())
                    .map_or("", |n| n.as_str())
                    .to_string(),
                zone: instance
                    .placement()
                    .and_then(|p| p.availability_zone())
                    .unwrap_or("")
                    .to_string(),
                private_ip: instance.private_ip_address().unwrap_or("").to_string(),
            });
        }
        found.sort_by(|a, b| (&a.role, &a.instance_id).cmp(&(&b.role, &b.instance_id)));
        Ok(found)
    }

    /// Waits until every one of `instance_ids` is in `state`.
    pub async fn wait_state(
        &self,
        instance_ids: &[String],
        state: &str,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        if instance_ids.is_empty() {
            return Ok(());
        }
        let what = format!("{} to be {state}", instance_ids.join(", "));
        wait_for(&what, timeout, Duration::from_secs(2), || async {
            let output = self
                .ec2
                .describe_instances()
                .set_instance_ids(Some(instance_ids.to_vec()))
                .send()
                .await
                .map_err(|e| explain("describe instances", e))?;
            let all = output
                .reservations()
                .iter()
                .flat_map(|r| r.instances())
                .all(|i| i.state().and_then(|s| s.name()).map(|n| n.as_str()) == Some(state));
            Ok(all.then_some(()))
        })
        .await
    }

    /// The id of the group's security group, if it exists.
    pub async fn security_group(&self) -> anyhow::Result<Option<String>> {
        let output = self
            .ec2
            .describe_security_groups()
            .filters(
                Filter::builder()
                    .name("group-name")
                    .values(format!("autoscaler-{}", self.group))
                    .build(),
            )
            .send()
            .await
            .map_err(|e| explain("describe security groups", e))?;
        Ok(output
            .security_groups()
            .first()
            .and_then(|g| g.group_id())
            .map(str::to_string))
    }

    /// The default VPC's id, or a clear error.
    pub async fn default_vpc(&self) -> anyhow::Result<String> {
        let output = self
            .ec2
            .describe_vpcs()
            .filters(Filter::builder().name("is-default").values("true").build())
            .send()
            .await
            .map_err(|e| explain("describe VPCs", e))?;
        output
            .vpcs()
            .first()
            .and_then(|v| v.vpc_id())
            .map(str::to_string)
            .context("this region has no default VPC: create one (aws ec2 create-default-vpc) or use a region that has one")
    }

    /// The group's images (owned by this account and tagged with the group).
    pub async fn images(&self) -> anyhow::Result<Vec<aws_sdk_ec2::types::Image>> {
        let output = self
            .ec2
            .describe_images()
            .owners("self")
            .filters(
                Filter::builder()
                    .name(format!("tag:{GROUP_TAG}"))
                    .values(&self.group)
                    .build(),
            )
            .send()
            .await
            .map_err(|e| explain("describe images", e))?;
        Ok(output.images().to_vec())
    }

    /// An `Ec2Cloud` for launching the group's instances with `ec2` settings.
    pub async fn cloud(&self, ec2: Ec2Config) -> anyhow::Result<Ec2Cloud> {
        Ec2Cloud::open(&self.sdk, &self.group, ec2)
            .await
            .map_err(|e| anyhow!("{e}"))
    }
}

// ---------------------------------------------------------------------------------------------
// bootstrap

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
            .instances(&["seed"])
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
                    .run_instance("seed", &base_image, &subnet, None)
                    .await
                    .map_err(|e| anyhow!("cannot launch the seed instance: {e}"))?;
                eprintln!("  launched the seed instance {id}");
                id
            }
        };
        aws.wait_state(
            std::slice::from_ref(&seed),
            "running",
            Duration::from_secs(600),
        )
        .await?;

        let urls = deliver_binaries(aws, self.debug_binaries).await?;
        let commands = vec![
            "set -eu".to_string(),
            format!(
                "curl --fail --silent --show-error --location --retry 5 -o /tmp/autoscaler-install.sh '{}'",
                urls["install.sh"]
            ),
            format!(
                "sh /tmp/autoscaler-install.sh '{}' '{}' '{}' '{}' '{}'",
                aws.group,
                urls["autoscaler-agent"],
                urls["autoscaler-monitor"],
                urls["autoscaler-agent.service"],
                urls["autoscaler-monitor.service"]
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
    let profile = if debug { "dev" } else { "release" };
    if debug {
        // The same build as the tests and the rehearsal: nothing is compiled twice.
        util::build_binaries()?;
    } else {
        util::run(util::cargo().args([
            "build",
            "--quiet",
            "--release",
            "--package",
            "autoscaler-agent",
            "--package",
            "autoscaler-daemon",
        ]))?;
    }
    let target = util::root()
        .join("target")
        .join(if debug { "debug" } else { "release" });
    let provisioning = util::root().join("provisioning");
    let files: [(&'static str, std::path::PathBuf); 5] = [
        ("autoscaler-agent", target.join("autoscaler-agent")),
        ("autoscaler-monitor", target.join("autoscaler-monitor")),
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
            std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut suffix)?;
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
    eprintln!("  uploaded the binaries ({profile}), units and install script to s3://{bucket}");
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
    let status = wait_for(
        &format!("the install command {command_id} to finish"),
        Duration::from_secs(900),
        Duration::from_secs(3),
        || async {
            match aws
                .ssm
                .get_command_invocation()
                .command_id(&command_id)
                .instance_id(instance_id)
                .send()
                .await
            {
                Ok(output) => {
                    let status = output
                        .status()
                        .map(|s| s.as_str().to_string())
                        .unwrap_or_default();
                    let done =
                        ["Success", "Failed", "Cancelled", "TimedOut"].contains(&status.as_str());
                    Ok(done.then(|| {
                        (
                            status,
                            output.standard_error_content().unwrap_or("").to_string(),
                        )
                    }))
                }
                Err(error) if error.code() == Some("InvocationDoesNotExist") => Ok(None),
                Err(error) => Err(explain("read the install command's result", error)),
            }
        },
    )
    .await?;
    if status.0 != "Success" {
        bail!(
            "the install command on {instance_id} ended {}: {}",
            status.0,
            status.1
        );
    }
    eprintln!("  the install command succeeded on {instance_id}");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// bake-ami

/// Creates the custom AMI from the seed, waits until it is available, tags it and records its id
/// in `/autoscaler/<group>/ami`.
#[derive(Debug, clap::Args)]
pub struct BakeAmi {
    #[command(flatten)]
    pub group: GroupArgs,
    /// Terminate the seed instance once the AMI is available.
    #[arg(long)]
    pub terminate_seed: bool,
}

impl BakeAmi {
    pub async fn run(self) -> anyhow::Result<()> {
        let aws = Aws::connect(&self.group.group).await?;
        self.run_with(&aws).await
    }

    pub async fn run_with(self, aws: &Aws) -> anyhow::Result<()> {
        eprintln!("bake-ami of group {}", aws.group);
        let seeds = aws.instances(&["seed"]).await?;
        let existing = aws
            .images()
            .await?
            .into_iter()
            .find(|i| i.state().map(|s| s.as_str()) != Some("deregistered"));
        let image_id = match existing {
            Some(image) => {
                let id = image.image_id().unwrap_or("").to_string();
                eprintln!("  reusing the group's image {id}");
                id
            }
            None => {
                let seed = seeds
                    .iter()
                    .find(|s| s.state == "running" || s.state == "stopped")
                    .with_context(|| {
                        format!(
                            "no seed instance: run `cargo xtask bootstrap --group {}` first",
                            aws.group
                        )
                    })?;
                let stamp = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)?
                    .as_secs();
                let output = aws
                    .ec2
                    .create_image()
                    .instance_id(&seed.instance_id)
                    .name(format!("autoscaler-{}-{stamp}", aws.group))
                    .description(format!("autoscaler agent for group {}", aws.group))
                    .tag_specifications(
                        TagSpecification::builder()
                            .resource_type(ResourceType::Image)
                            .tags(tag(GROUP_TAG, &aws.group))
                            .tags(tag("Name", &format!("autoscaler-{}", aws.group)))
                            .build(),
                    )
                    .send()
                    .await
                    .map_err(|e| explain("create the image", e))?;
                let id = output
                    .image_id()
                    .context("CreateImage returned no id")?
                    .to_string();
                eprintln!("  creating the image {id} from {}", seed.instance_id);
                id
            }
        };
        wait_for(
            &format!("the image {image_id} to be available"),
            Duration::from_secs(1800),
            Duration::from_secs(5),
            || async {
                let output = aws
                    .ec2
                    .describe_images()
                    .image_ids(&image_id)
                    .send()
                    .await
                    .map_err(|e| explain("describe the image", e))?;
                match output
                    .images()
                    .first()
                    .and_then(|i| i.state())
                    .map(|s| s.as_str())
                {
                    Some("available") => Ok(Some(())),
                    Some("failed") => bail!("the image {image_id} failed"),
                    _ => Ok(None),
                }
            },
        )
        .await?;
        aws.parameters
            .put(&aws.names.ami(), &image_id, false)
            .await?;
        eprintln!("  recorded {image_id} in {}", aws.names.ami());
        if self.terminate_seed {
            let ids: Vec<String> = seeds.iter().map(|s| s.instance_id.clone()).collect();
            if !ids.is_empty() {
                aws.ec2
                    .terminate_instances()
                    .set_instance_ids(Some(ids.clone()))
                    .send()
                    .await
                    .map_err(|e| explain("terminate the seed", e))?;
                aws.wait_state(&ids, "terminated", Duration::from_secs(600))
                    .await?;
            }
        }
        eprintln!(
            "bake-ami done: {image_id}; next: cargo xtask up --group {}",
            aws.group
        );
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// up

/// Starts the monitor host (monitor and controller) from the AMI, then waits until it has
/// published its address and the fleet has reached its minimum.
#[derive(Debug, clap::Args)]
pub struct Up {
    #[command(flatten)]
    pub group: GroupArgs,
    /// The monitor's config (its `group` is set to --group).
    #[arg(long, default_value = "provisioning/aws.toml")]
    pub config: std::path::PathBuf,
    /// How long to wait for the fleet, in seconds.
    #[arg(long, default_value_t = 900)]
    pub timeout: u64,
}

/// In the monitor host's user-data (provisioning/monitor-user-data.sh), the config sits between
/// these two lines.
pub const CONFIG_BEGIN: &str = "cat > /etc/autoscaler/autoscaler.toml <<'AUTOSCALER_CONFIG'\n";
pub const CONFIG_END: &str = "AUTOSCALER_CONFIG\n";

/// The monitor's config for the group, checked.
pub fn monitor_config(
    path: &Path,
    group: &str,
) -> anyhow::Result<(String, autoscaler_daemon::daemon::DaemonConfig)> {
    let path = if path.is_absolute() {
        path.to_path_buf()
    } else {
        util::root().join(path)
    };
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let mut table: toml::Table = text
        .parse()
        .with_context(|| format!("{}", path.display()))?;
    table.insert("group".to_string(), toml::Value::String(group.to_string()));
    let text = toml::to_string(&table)?;
    let config = autoscaler_daemon::daemon::DaemonConfig::from_toml(&text)
        .map_err(|e| anyhow!("{}: {e}", path.display()))?;
    if !matches!(
        config.provider,
        autoscaler_daemon::daemon::ProviderSection::Ec2(_)
    ) {
        bail!(
            "{}: the monitor host needs `[provider] kind = \"ec2\"`",
            path.display()
        );
    }
    Ok((text, config))
}

impl Up {
    pub async fn run(self) -> anyhow::Result<()> {
        let aws = Aws::connect(&self.group.group).await?;
        self.run_with(&aws).await
    }

    pub async fn run_with(self, aws: &Aws) -> anyhow::Result<()> {
        eprintln!("up of group {}", aws.group);
        let (config_text, config) = monitor_config(&self.config, &aws.group)?;
        let autoscaler_daemon::daemon::ProviderSection::Ec2(ec2) = config.provider.clone() else {
            unreachable!("checked by monitor_config")
        };
        let ami = aws
            .parameters
            .get(&aws.names.ami())
            .await
            .with_context(|| {
                format!(
                    "no custom AMI: run `cargo xtask bake-ami --group {}` first",
                    aws.group
                )
            })?;
        if let Err(autoscaler_aws::SsmError::NotFound(_)) =
            aws.parameters.get(&aws.names.token()).await
        {
            let mut bytes = [0u8; 24];
            std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut bytes)?;
            let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            aws.parameters.put(&aws.names.token(), &token, true).await?;
            eprintln!(
                "  created the group token in {} (SecureString)",
                aws.names.token()
            );
        }
        ensure_tls(aws).await?;

        let monitors = aws.instances(&["monitor"]).await?;
        let monitor = match monitors
            .iter()
            .find(|m| m.state == "pending" || m.state == "running")
        {
            Some(monitor) => {
                eprintln!("  reusing the monitor host {}", monitor.instance_id);
                monitor.instance_id.clone()
            }
            None => {
                // A stale address from an earlier monitor would mislead the wait below.
                aws.parameters.delete(&aws.names.monitor()).await?;
                let cloud = aws
                    .cloud(Ec2Config {
                        ami_id: ami.clone(),
                        ..ec2
                    })
                    .await?;
                let template_path = util::root().join("provisioning/monitor-user-data.sh");
                let template = std::fs::read_to_string(&template_path)
                    .with_context(|| format!("cannot read {}", template_path.display()))?;
                ensure!(
                    template.contains(CONFIG_BEGIN) && template.contains("@CONFIG@"),
                    "{} lost its config placeholder",
                    template_path.display()
                );
                let user_data = template.replace("@CONFIG@", &config_text);
                let encoded = base64::engine::general_purpose::STANDARD.encode(user_data);
                let subnet = cloud.config().subnet_ids[0].clone();
                let id = cloud
                    .run_instance("monitor", &ami, &subnet, Some(encoded))
                    .await
                    .map_err(|e| anyhow!("cannot launch the monitor host: {e}"))?;
                eprintln!("  launched the monitor host {id}");
                id
            }
        };
        aws.wait_state(
            std::slice::from_ref(&monitor),
            "running",
            Duration::from_secs(600),
        )
        .await?;
        let timeout = Duration::from_secs(self.timeout);
        let address = wait_for(
            "the monitor to publish its address",
            timeout,
            Duration::from_secs(2),
            || async {
                match aws.parameters.get(&aws.names.monitor()).await {
                    Ok(address) => Ok(Some(address)),
                    Err(autoscaler_aws::SsmError::NotFound(_)) => Ok(None),
                    Err(error) => Err(error.into()),
                }
            },
        )
        .await?;
        eprintln!("  the monitor listens at {address}");
        let min = config.controller.min_instances as usize;
        let credentials = aws.operator_credentials().await?;
        let unreachable_since = std::sync::Mutex::new(None::<Instant>);
        wait_for(&format!("{min} healthy instances"), timeout, Duration::from_secs(2), || async {
            match crate::status_client::get_status(&address, &credentials).await {
                Ok(status) => {
                    *unreachable_since.lock().expect("not poisoned") = None;
                    let healthy = status.instances.iter().filter(|i| i.health == "healthy").count();
                    Ok((healthy >= min).then_some(()))
                }
                Err(_) => {
                    // From outside the VPC the monitor is out of reach: after half a minute of
                    // that, count running agents instead.
                    let since = *unreachable_since.lock().expect("not poisoned").get_or_insert_with(Instant::now);
                    if since.elapsed() < Duration::from_secs(30) {
                        return Ok(None);
                    }
                    let agents = aws.instances(&["agent"]).await?;
                    let running = agents.iter().filter(|i| i.state == "running").count();
                    if running >= min {
                        eprintln!("  the monitor at {address} is not reachable from here; {running} agents run");
                    }
                    Ok((running >= min).then_some(()))
                }
            }
        })
        .await?;
        eprintln!(
            "up done: monitor host {monitor}; `cargo xtask status --group {}` shows the fleet",
            aws.group
        );
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// down

/// Stops the controller first (the monitor host), then terminates the group's instances and
/// deletes its parameters. `--purge` also removes the AMI, its snapshots and what bootstrap made.
#[derive(Debug, clap::Args)]
pub struct Down {
    #[command(flatten)]
    pub group: GroupArgs,
    /// Also deregister the AMI, delete its snapshots, the bucket, the seed and the security group.
    #[arg(long)]
    pub purge: bool,
    /// Show what would go, and change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

impl Down {
    pub async fn run(self) -> anyhow::Result<()> {
        let aws = Aws::connect(&self.group.group).await?;
        self.run_with(&aws).await
    }

    pub async fn run_with(self, aws: &Aws) -> anyhow::Result<()> {
        let verb = if self.dry_run {
            "would remove"
        } else {
            "removing"
        };
        eprintln!(
            "down of group {}{}",
            aws.group,
            if self.dry_run { " (dry run)" } else { "" }
        );
        let instances = aws.instances(&[]).await?;
        let monitors: Vec<String> = instances
            .iter()
            .filter(|i| i.role == "monitor")
            .map(|i| i.instance_id.clone())
            .collect();
        let agents: Vec<String> = instances
            .iter()
            .filter(|i| i.role == "agent")
            .map(|i| i.instance_id.clone())
            .collect();
        let seeds: Vec<String> = instances
            .iter()
            .filter(|i| i.role == "seed")
            .map(|i| i.instance_id.clone())
            .collect();
        for (what, ids) in [("monitor host", &monitors), ("instance", &agents)] {
            for id in ids {
                eprintln!("  {verb} {what} {id}");
            }
        }
        let mut parameters = vec![aws.names.monitor(), aws.names.token()];
        parameters.extend(aws.names.tls_all());
        let images = if self.purge {
            aws.images().await?
        } else {
            Vec::new()
        };
        if self.purge {
            for id in &seeds {
                eprintln!("  {verb} seed instance {id}");
            }
            for image in &images {
                eprintln!(
                    "  {verb} image {} and its snapshots",
                    image.image_id().unwrap_or("")
                );
            }
            parameters.push(aws.names.ami());
            parameters.push(aws.names.bucket());
            if let Ok(bucket) = aws.parameters.get(&aws.names.bucket()).await {
                eprintln!("  {verb} bucket {bucket}");
            }
            if let Some(group_id) = aws.security_group().await? {
                eprintln!("  {verb} security group {group_id}");
            }
        }
        for name in &parameters {
            eprintln!("  {verb} parameter {name}");
        }
        if self.dry_run {
            return Ok(());
        }

        // The controller first, so that nothing is replaced while the fleet goes: its host
        // terminated, then its address silent (a terminated host cannot answer; from outside
        // the VPC the private address does not answer either), and only then the agents.
        let monitor_address = match aws.parameters.get(&aws.names.monitor()).await {
            Ok(address) => Some(address),
            Err(autoscaler_aws::SsmError::NotFound(_)) => None,
            Err(error) => return Err(error.into()),
        };
        terminate(aws, &monitors).await?;
        if let Some(address) = monitor_address {
            wait_for(
                "the monitor to stop answering",
                Duration::from_secs(120),
                Duration::from_millis(500),
                || async { Ok((!answers(&address).await).then_some(())) },
            )
            .await?;
        }
        let mut rest = agents;
        if self.purge {
            rest.extend(seeds);
        }
        terminate(aws, &rest).await?;
        // A launch the controller made just before it stopped shows up only now: sweep
        // until a listing of the group finds nothing running.
        for _ in 0..5 {
            let roles: &[&str] = if self.purge {
                &["monitor", "agent", "seed"]
            } else {
                &["monitor", "agent"]
            };
            let left: Vec<String> = aws
                .instances(roles)
                .await?
                .into_iter()
                .filter(|i| i.state != "terminated" && i.state != "shutting-down")
                .map(|i| i.instance_id)
                .collect();
            if left.is_empty() {
                break;
            }
            for id in &left {
                eprintln!("  removing instance {id} (launched while the group went down)");
            }
            terminate(aws, &left).await?;
        }
        for name in &parameters {
            if name == &aws.names.bucket() {
                continue;
            }
            aws.parameters.delete(name).await?;
        }
        if self.purge {
            for image in &images {
                let image_id = image.image_id().unwrap_or("");
                aws.ec2
                    .deregister_image()
                    .image_id(image_id)
                    .send()
                    .await
                    .map_err(|e| explain("deregister the image", e))?;
                for snapshot in image
                    .block_device_mappings()
                    .iter()
                    .filter_map(|m| m.ebs().and_then(|e| e.snapshot_id()))
                {
                    aws.ec2
                        .delete_snapshot()
                        .snapshot_id(snapshot)
                        .send()
                        .await
                        .map_err(|e| explain("delete a snapshot", e))?;
                }
            }
            delete_bucket(aws).await?;
            aws.parameters.delete(&aws.names.bucket()).await?;
            if let Some(group_id) = aws.security_group().await? {
                wait_for(
                    "the security group to be free",
                    Duration::from_secs(300),
                    Duration::from_secs(5),
                    || async {
                        match aws
                            .ec2
                            .delete_security_group()
                            .group_id(&group_id)
                            .send()
                            .await
                        {
                            Ok(_) => Ok(Some(())),
                            Err(error) if error.code() == Some("DependencyViolation") => Ok(None),
                            Err(error) => Err(explain("delete the security group", error)),
                        }
                    },
                )
                .await?;
            }
        }
        eprintln!(
            "down done: group {} {}",
            aws.group,
            if self.purge { "purged" } else { "stopped" }
        );
        Ok(())
    }
}

/// Whether something accepts TCP connections at `address` within a second.
async fn answers(address: &str) -> bool {
    matches!(
        tokio::time::timeout(
            Duration::from_secs(1),
            tokio::net::TcpStream::connect(address)
        )
        .await,
        Ok(Ok(_))
    )
}

async fn terminate(aws: &Aws, ids: &[String]) -> anyhow::Result<()> {
    if ids.is_empty() {
        return Ok(());
    }
    aws.ec2
        .terminate_instances()
        .set_instance_ids(Some(ids.to_vec()))
        .send()
        .await
        .map_err(|e| explain("terminate instances", e))?;
    aws.wait_state(ids, "terminated", Duration::from_secs(600))
        .await
}

async fn delete_bucket(aws: &Aws) -> anyhow::Result<()> {
    let Ok(bucket) = aws.parameters.get(&aws.names.bucket()).await else {
        return Ok(());
    };
    let mut s3_config = aws_sdk_s3::config::Builder::from(&aws.sdk);
    if aws.sdk.endpoint_url().is_some() {
        s3_config = s3_config.force_path_style(true);
    }
    let s3 = aws_sdk_s3::Client::from_conf(s3_config.build());
    let listed = match s3.list_objects_v2().bucket(&bucket).send().await {
        Ok(listed) => listed,
        Err(error) if error.code() == Some("NoSuchBucket") => return Ok(()),
        Err(error) => return Err(explain("list the bucket", error)),
    };
    for object in listed.contents() {
        if let Some(key) = object.key() {
            s3.delete_object()
                .bucket(&bucket)
                .key(key)
                .send()
                .await
                .map_err(|e| explain("empty the bucket", e))?;
        }
    }
    s3.delete_bucket()
        .bucket(&bucket)
        .send()
        .await
        .map_err(|e| explain("delete the bucket", e))?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// status

/// The group as the cloud sees it, beside what the monitor knows when it is reachable; or, with
/// `--monitor`, the fleet straight from a monitor (the local demo, or a monitor in reach).
#[derive(Debug, clap::Args)]
pub struct Status {
    #[command(flatten)]
    pub group: GroupArgs,
    /// Ask this monitor (`host:port`) directly instead of AWS; the token comes from
    /// --token-file or AUTOSCALER_TOKEN, the operator's certificate from --tls-dir.
    #[arg(long)]
    pub monitor: Option<String>,
    /// File holding the group token, with --monitor.
    #[arg(long)]
    pub token_file: Option<std::path::PathBuf>,
    /// With --monitor: the group's TLS directory (`ca.pem`, `operator.pem`, `operator.key`);
    /// the demo prints it.
    #[arg(long, env = "AUTOSCALER_TLS_DIR")]
    pub tls_dir: Option<std::path::PathBuf>,
    /// With --monitor: talk plaintext, to a monitor started with --plaintext.
    #[arg(long, conflicts_with = "tls_dir")]
    pub plaintext: bool,
    /// Keep printing decisions as they happen (Ctrl-C to stop).
    #[arg(long)]
    pub follow: bool,
}

impl Status {
    pub async fn run(self) -> anyhow::Result<()> {
        let (address, credentials) = match &self.monitor {
            Some(address) => {
                let token = match &self.token_file {
                    Some(path) => std::fs::read_to_string(path)
                        .with_context(|| format!("cannot read {}", path.display()))?,
                    None => std::env::var("AUTOSCALER_TOKEN")
                        .context("no group token: pass --token-file or set AUTOSCALER_TOKEN")?,
                };
                if self.tls_dir.is_none() && !self.plaintext {
                    bail!(
                        "no TLS material: pass --tls-dir DIR (the demo prints it), or --plaintext for a monitor started with --plaintext"
                    );
                }
                let credentials =
                    crate::status_client::credentials(token.trim(), self.tls_dir.as_deref())?;
                (address.clone(), credentials)
            }
            None => {
                let aws = Aws::connect(&self.group.group).await?;
                print_status(&aws).await?;
                if !self.follow {
                    return Ok(());
                }
                let address = aws.parameters.get(&aws.names.monitor()).await?;
                (address, aws.operator_credentials().await?)
            }
        };
        let mut daemon = crate::status_client::Daemon::new(&address, &credentials)?;
        let report = daemon.status_after(0).await?;
        if self.monitor.is_some() {
            print_fleet(&report);
        }
        if !self.follow {
            return Ok(());
        }
        let mut seen = 0;
        loop {
            let report = daemon.status_after(seen).await?;
            for record in &report.decisions {
                seen = seen.max(record.sequence);
                let at = record.at_unix_ms as f64 / 1000.0;
                println!("#{:<4} {at:.1} {}", record.sequence, record.summary);
                for outcome in &record.outcome {
                    println!("      -> {outcome}");
                }
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

/// The fleet as one monitor reports it.
pub fn print_fleet(report: &autoscaler_proto::v1::GetStatusResponse) {
    println!(
        "group {}: {} instances, desired {}, bounds [{}, {}]",
        report.group,
        report
            .instances
            .iter()
            .filter(|i| i.state != "unlisted")
            .count(),
        report.desired_instances,
        report.min_instances,
        report.max_instances
    );
    println!(
        "{:<20} {:<9} {:<12} {:>7}  {:<21} {:>6}",
        "INSTANCE", "STATE", "HEALTH", "LOAD", "ADDRESS", "MISSES"
    );
    for instance in &report.instances {
        println!(
            "{:<20} {:<9} {:<12} {:>7}  {:<21} {:>6}",
            instance.instance_id,
            instance.state,
            instance.health,
            instance
                .load_percent
                .map_or("-".to_string(), |l| format!("{l:.1}%")),
            instance.address,
            instance.consecutive_misses
        );
    }
    if let Some(failing) = &report.launch_failures {
        println!(
            "launches failing: {} in a row, next attempt in {:.0} s; last: {}",
            failing.consecutive,
            (failing.next_attempt_in_ms as f64 / 1000.0).ceil(),
            failing.last_reason
        );
    }
    if let Some(last) = report.decisions.last() {
        println!("last decision: {}", last.summary);
    }
}

pub async fn print_status(aws: &Aws) -> anyhow::Result<()> {
    let instances = aws.instances(&[]).await?;
    let monitor = match (
        aws.parameters.get(&aws.names.monitor()).await,
        aws.operator_credentials().await,
    ) {
        (Ok(address), Ok(credentials)) => {
            match crate::status_client::get_status(&address, &credentials).await {
                Ok(status) => Some(status),
                Err(error) => {
                    println!("(the monitor at {address} is not reachable from here: {error})");
                    None
                }
            }
        }
        _ => {
            println!("(no monitor address published for group {})", aws.group);
            None
        }
    };
    println!(
        "{:<20} {:<8} {:<14} {:<12} {:<15} {:<10} {:>6}",
        "INSTANCE", "ROLE", "STATE", "ZONE", "PRIVATE IP", "HEALTH", "LOAD"
    );
    for instance in &instances {
        let seen = monitor.as_ref().and_then(|s| {
            s.instances
                .iter()
                .find(|i| i.instance_id == instance.instance_id)
        });
        println!(
            "{:<20} {:<8} {:<14} {:<12} {:<15} {:<10} {:>6}",
            instance.instance_id,
            instance.role,
            instance.state,
            instance.zone,
            instance.private_ip,
            seen.map_or("-", |i| i.health.as_str()),
            seen.and_then(|i| i.load_percent)
                .map_or("-".to_string(), |l| format!("{l:.1}%"))
        );
    }
    if let Some(last) = monitor.as_ref().and_then(|s| s.decisions.last()) {
        println!("last decision: {}", last.summary);
    }
    Ok(())
}

/// Makes the group's CA and its three identities unless every TLS parameter is there: the CA
/// certificate, and each role's certificate and key as one text, all SecureStrings. The CA's key
/// is used here and thrown away; it is never stored.
async fn ensure_tls(aws: &Aws) -> anyhow::Result<()> {
    let mut missing = false;
    for name in aws.names.tls_all() {
        if let Err(autoscaler_aws::SsmError::NotFound(_)) = aws.parameters.get(&name).await {
            missing = true;
        }
    }
    if !missing {
        return Ok(());
    }
    let ca = GroupCa::generate(&aws.group)?;
    for role in Role::ALL {
        let issued = ca.issue(role)?;
        aws.parameters
            .put(&aws.names.tls_identity(role), &issued.bundle(), true)
            .await?;
    }
    // The CA certificate last: agents wait for it, and then find their identity there too. It is
    // public, but kept as a SecureString like the rest of the group's TLS material.
    aws.parameters
        .put(&aws.names.tls_ca(), &ca.cert_pem(), true)
        .await?;
    eprintln!(
        "  created the group CA and the monitor, agent and operator certificates in {} (SecureStrings)",
        aws.names.tls_ca().trim_end_matches("/ca")
    );
    Ok(())
}
