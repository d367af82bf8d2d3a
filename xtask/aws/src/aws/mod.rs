//! The AWS workflow: `bootstrap`, `bake-ami`, `up`, `down` and `status`. Every command honours the
//! standard AWS settings (profile, region, `AWS_ENDPOINT_URL`), takes the group's name, can be run
//! again after a failure (it finds what an earlier run made instead of making it twice), shows a
//! spinner while it waits, and stops with a clear message when something is missing.

use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use autoscaler_aws::{GroupParameters, Parameters, Timeouts};
use autoscaler_controller::ec2::{Ec2Cloud, Ec2Config, GROUP_TAG, InstanceRole, ROLE_TAG};
use autoscaler_proto::auth::{Credentials, Token};
use autoscaler_proto::tls::{GroupCa, Role, Transport};
use aws_sdk_ec2::client::Waiters;
use aws_sdk_ec2::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_ec2::types::{Filter, Tag};
use indicatif::{ProgressBar, ProgressStyle};

mod bake_ami;
mod balancer;
mod bootstrap;
mod down;
mod refresh;
mod status;
mod up;

pub use bake_ami::BakeAmi;
pub use balancer::{APP_PORT, DEREGISTRATION_DELAY_SECS};
pub use bootstrap::Bootstrap;
pub use down::Down;
pub use refresh::{Refresh, SetDesired, Update};
pub use status::refresh_text;
pub use status::{MonitorArgs, Status, print_status};
pub use up::{CONFIG_BEGIN, CONFIG_END, Up};

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
    pub elb: aws_sdk_elasticloadbalancingv2::Client,
    pub parameters: Parameters,
    pub names: GroupParameters,
    pub group: String,
}

/// One of the group's instances as EC2 reports it.
#[derive(Clone, Debug)]
pub struct GroupInstance {
    pub instance_id: String,
    /// `None` for a role tag this version does not know.
    pub role: Option<InstanceRole>,
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

/// Runs `work` under a spinner that names `what`, and says how long it took.
pub async fn spinning<T>(
    what: &str,
    work: impl Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    let spinner = ProgressBar::new_spinner();
    spinner.set_style(
        ProgressStyle::with_template("{spinner} {msg} ({elapsed})").expect("a valid template"),
    );
    spinner.set_message(what.to_string());
    spinner.enable_steady_tick(Duration::from_millis(120));
    let started = Instant::now();
    let result = work.await;
    spinner.finish_and_clear();
    if result.is_ok() {
        eprintln!("  done: {what} ({:.1}s)", started.elapsed().as_secs_f64());
    }
    result
}

/// The end of an SDK waiter as an error that names what was awaited (a failure state, such as
/// an instance terminated while it was awaited running, ends it at once).
pub fn waited<T, O, E>(
    what: &str,
    timeout: Duration,
    result: Result<T, aws_smithy_runtime_api::client::waiters::error::WaiterError<O, E>>,
) -> anyhow::Result<()>
where
    E: std::error::Error + Send + Sync + 'static,
    O: std::fmt::Debug + Send + Sync + 'static,
{
    use aws_smithy_runtime_api::client::waiters::error::WaiterError;
    match result {
        Ok(_) => Ok(()),
        Err(WaiterError::ExceededMaxWait(_)) => {
            bail!("gave up after {timeout:?} waiting for {what}")
        }
        Err(error) => bail!("waiting for {what}: {}", DisplayErrorContext(&error)),
    }
}

/// Waits until `check` returns a value, polling every `every`, with a spinner; fails after
/// `timeout` with a message naming what it waited for. Where the SDK has a waiter, use it.
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
    spinning(what, async {
        let started = Instant::now();
        loop {
            if let Some(value) = check().await? {
                return Ok(value);
            }
            if started.elapsed() > timeout {
                bail!("gave up after {timeout:?} waiting for {what}");
            }
            tokio::time::sleep(every).await;
        }
    })
    .await
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
            elb: aws_sdk_elasticloadbalancingv2::Client::new(&sdk),
            parameters: Parameters::new(&sdk),
            names: GroupParameters::new(group),
            group: group.to_string(),
            sdk,
        }
    }

    /// The group's instances in one of `states` (and of one of `roles`, unless empty), as
    /// DescribeInstances returns them, every page of the answer.
    pub async fn described(
        &self,
        roles: &[InstanceRole],
        states: &[&str],
    ) -> anyhow::Result<Vec<aws_sdk_ec2::types::Instance>> {
        autoscaler_controller::ec2::describe_group(&self.ec2, &self.group, roles, states, &[])
            .await
            .map_err(|e| explain("describe instances", e))
    }

    /// The group's instances in `roles` (all roles when empty) that are not terminated.
    pub async fn instances(&self, roles: &[InstanceRole]) -> anyhow::Result<Vec<GroupInstance>> {
        let described = self
            .described(
                roles,
                &["pending", "running", "stopping", "stopped", "shutting-down"],
            )
            .await?;
        let mut found = Vec::new();
        for instance in &described {
            let role = instance
                .tags()
                .iter()
                .find(|t| t.key() == Some(ROLE_TAG))
                .and_then(|t| t.value())
                .and_then(InstanceRole::from_tag_value);
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

    /// Waits, with the SDK's waiter, until every one of `instance_ids` runs.
    pub async fn wait_running(
        &self,
        instance_ids: &[String],
        timeout: Duration,
    ) -> anyhow::Result<()> {
        self.wait_instances(instance_ids, true, timeout).await
    }

    /// Waits, with the SDK's waiter, until every one of `instance_ids` is terminated.
    pub async fn wait_terminated(
        &self,
        instance_ids: &[String],
        timeout: Duration,
    ) -> anyhow::Result<()> {
        self.wait_instances(instance_ids, false, timeout).await
    }

    async fn wait_instances(
        &self,
        instance_ids: &[String],
        running: bool,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        if instance_ids.is_empty() {
            return Ok(());
        }
        let ids = Some(instance_ids.to_vec());
        let state = if running { "running" } else { "terminated" };
        let what = format!("{} to be {state}", instance_ids.join(", "));
        spinning(&what, async {
            if running {
                let waiter = self.ec2.wait_until_instance_running().set_instance_ids(ids);
                waited(&what, timeout, waiter.wait(timeout).await)
            } else {
                let waiter = self
                    .ec2
                    .wait_until_instance_terminated()
                    .set_instance_ids(ids);
                waited(&what, timeout, waiter.wait(timeout).await)
            }
        })
        .await
    }

    /// The id of the group's security group, if it exists.
    pub async fn security_group(&self) -> anyhow::Result<Option<String>> {
        self.security_group_named(&format!("autoscaler-{}", self.group))
            .await
    }

    /// The id of the security group called `name`, if there is one.
    pub async fn security_group_named(&self, name: &str) -> anyhow::Result<Option<String>> {
        let output = self
            .ec2
            .describe_security_groups()
            .filters(Filter::builder().name("group-name").values(name).build())
            .send()
            .await
            .map_err(|e| explain("describe security groups", e))?;
        Ok(output
            .security_groups()
            .first()
            .and_then(|g| g.group_id())
            .map(str::to_string))
    }

    /// The default VPC's default subnets (one per availability zone).
    pub async fn default_subnets(&self) -> anyhow::Result<Vec<String>> {
        autoscaler_controller::ec2::default_subnets(&self.ec2)
            .await
            .map_err(|error| anyhow!("cannot list the default subnets: {error}"))
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
