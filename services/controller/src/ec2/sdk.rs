//! The EC2 provider itself, on the AWS SDK (see `ec2.rs`, which holds its configuration).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use aws_sdk_ec2::config::http::HttpResponse;
use aws_sdk_ec2::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_ec2::operation::describe_instances::DescribeInstancesError;
use aws_sdk_ec2::types::{
    BlockDeviceMapping, EbsBlockDevice, Filter, HttpTokensState, IamInstanceProfileSpecification,
    InstanceMetadataEndpointState, InstanceMetadataOptionsRequest, InstanceStateName, InstanceType,
    ResourceType, Tag, TagSpecification, VolumeType,
};

use super::{EPOCH_TAG, Ec2Config, GROUP_TAG, InstanceRole, LAUNCH_TAG, ROLE_TAG, VERSION_TAG};
use crate::cloud::SpecError;
use crate::cloud::{Cloud, CloudError, CloudErrorKind, CloudInstance, InstanceState};
use crate::spec::{LaunchSpec, SpecVersion, USER_DATA_LIMIT};

/// The group's instances (of one of `roles`, unless empty; among `ids`, unless empty) in one of
/// `states`, every page of DescribeInstances' answer: the one query by which the provider, the
/// AWS workflow and the rehearsal list a group.
pub async fn describe_group(
    client: &aws_sdk_ec2::Client,
    group: &str,
    roles: &[InstanceRole],
    states: &[&str],
    ids: &[String],
) -> Result<Vec<aws_sdk_ec2::types::Instance>, SdkError<DescribeInstancesError, HttpResponse>> {
    let mut request = client
        .describe_instances()
        .filters(
            Filter::builder()
                .name(format!("tag:{GROUP_TAG}"))
                .values(group)
                .build(),
        )
        .filters(
            Filter::builder()
                .name("instance-state-name")
                .set_values(Some(states.iter().map(|s| s.to_string()).collect()))
                .build(),
        );
    if !roles.is_empty() {
        request = request.filters(
            Filter::builder()
                .name(format!("tag:{ROLE_TAG}"))
                .set_values(Some(
                    roles.iter().map(|r| r.tag_value().to_string()).collect(),
                ))
                .build(),
        );
    }
    if !ids.is_empty() {
        request = request.set_instance_ids(Some(ids.to_vec()));
    }
    let mut found = Vec::new();
    let mut pages = request.into_paginator().send();
    while let Some(page) = pages.next().await {
        found.extend(
            page?
                .reservations()
                .iter()
                .flat_map(|r| r.instances())
                .cloned(),
        );
    }
    Ok(found)
}

/// Turns an SDK failure into a `CloudError` of the right kind, keeping the SDK's whole message.
pub fn classify<E, R>(error: SdkError<E, R>) -> CloudError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug,
{
    let status = error.raw_response().map(|_| ());
    let kind = match &error {
        SdkError::TimeoutError(_) => CloudErrorKind::Timeout,
        SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => CloudErrorKind::Unavailable,
        _ => match error.code() {
            Some("RequestLimitExceeded" | "Throttling" | "ThrottlingException") => {
                CloudErrorKind::Throttled
            }
            Some("InsufficientInstanceCapacity") => CloudErrorKind::InsufficientCapacity,
            Some(code) if code.starts_with("InvalidInstanceID") => CloudErrorKind::NotFound,
            Some("InternalError" | "InternalFailure" | "ServiceUnavailable" | "Unavailable") => {
                CloudErrorKind::Unavailable
            }
            _ if status.is_some() && error.code().is_none() => CloudErrorKind::Unavailable,
            _ => CloudErrorKind::Other,
        },
    };
    // The service's own words when it sent some (the raw response is noise in a decision
    // record); the whole chain for timeouts and transport failures.
    let message = match (error.code(), error.message()) {
        (Some(code), Some(message)) => format!("{code}: {message}"),
        (Some(code), None) => code.to_string(),
        _ => DisplayErrorContext(&error).to_string(),
    };
    CloudError::new(kind, message)
}

/// The default VPC's default subnets (one per availability zone), sorted.
pub async fn default_subnets(client: &aws_sdk_ec2::Client) -> Result<Vec<String>, CloudError> {
    let subnets = client
        .describe_subnets()
        .filters(
            Filter::builder()
                .name("default-for-az")
                .values("true")
                .build(),
        )
        .send()
        .await
        .map_err(classify)?;
    let mut ids: Vec<String> = subnets
        .subnets()
        .iter()
        .filter_map(|s| s.subnet_id().map(str::to_string))
        .collect();
    ids.sort();
    Ok(ids)
}

/// Instances of one group on EC2.
#[derive(Debug)]
pub struct Ec2Cloud {
    client: aws_sdk_ec2::Client,
    group: String,
    config: Ec2Config,
    /// Launches of `fresh_token`, to tell its tokens apart.
    launches: AtomicU64,
    /// With a load balancer: the application's port on every instance, and the user-data that
    /// starts it (base64) given to every instance launched.
    app: Option<(u16, String)>,
    /// The leader's lease epoch (0 without one), carried into every launch: its ClientToken and
    /// the `autoscaler:epoch` tag say which term launched an instance.
    epoch: u64,
}

impl Ec2Cloud {
    /// Every instance launched from now on runs `user_data` at boot (the script that has its
    /// agent report the application's load), and serves its application on `port`, where the
    /// load balancer sends requests (`CloudInstance::app_address`).
    /// Launches as the leader of term `epoch`.
    pub fn with_epoch(mut self, epoch: u64) -> Ec2Cloud {
        self.epoch = epoch;
        self
    }

    pub fn with_app(mut self, port: u16, user_data: &str) -> Ec2Cloud {
        use base64::Engine as _;
        let encoded = base64::engine::general_purpose::STANDARD.encode(user_data);
        self.app = Some((port, encoded));
        self
    }

    /// Resolves what the config leaves out (AMI, security group, subnets) and checks it exists.
    pub async fn open(
        sdk: &aws_config::SdkConfig,
        group: &str,
        mut config: Ec2Config,
    ) -> Result<Ec2Cloud, CloudError> {
        let client = aws_sdk_ec2::Client::new(sdk);
        if config.ami_id.is_empty() {
            let parameters = autoscaler_aws::Parameters::new(sdk);
            let name = autoscaler_aws::GroupParameters::new(group).ami();
            config.ami_id = parameters.get(&name).await.map_err(|error| {
                CloudError::new(
                    CloudErrorKind::Other,
                    format!("no AMI configured and {error}: run `cargo xtask bake-ami` first"),
                )
            })?;
        }
        if config.security_group_ids.is_empty() {
            let name = format!("autoscaler-{group}");
            let groups = client
                .describe_security_groups()
                .filters(Filter::builder().name("group-name").values(&name).build())
                .send()
                .await
                .map_err(classify)?;
            config.security_group_ids = groups
                .security_groups()
                .iter()
                .filter_map(|g| g.group_id().map(str::to_string))
                .collect();
            if config.security_group_ids.is_empty() {
                return Err(CloudError::new(
                    CloudErrorKind::Other,
                    format!("security group {name} not found: run `cargo xtask bootstrap` first"),
                ));
            }
        }
        if config.subnet_ids.is_empty() {
            config.subnet_ids = default_subnets(&client).await?;
            if config.subnet_ids.is_empty() {
                return Err(CloudError::new(
                    CloudErrorKind::Other,
                    "no default subnets (no default VPC?): set provider.subnet_ids",
                ));
            }
        }
        Ok(Ec2Cloud {
            client,
            group: group.to_string(),
            config,
            launches: AtomicU64::new(0),
            app: None,
            epoch: 0,
        })
    }

    pub fn config(&self) -> &Ec2Config {
        &self.config
    }

    /// A launch token not used before, for a launch made outside the controller (the seed
    /// instance, a monitor host). Reused when that launch is tried again, it launches nothing
    /// twice.
    pub fn fresh_token(&self) -> String {
        let launch = self.launches.fetch_add(1, Ordering::Relaxed);
        let stamp = autoscaler_policy::time::unix_ms(SystemTime::now());
        format!("e{}-{stamp}-{launch}", self.epoch)
    }

    /// The ClientToken of launch `token` in `role`: at most 64 characters, as EC2 allows (the
    /// group's name is cut to fit).
    fn client_token(&self, role: InstanceRole, token: &str) -> String {
        let tail = format!("-{role}-{token}");
        let group: String = self
            .group
            .chars()
            .take(64usize.saturating_sub(tail.len()))
            .collect();
        format!("{group}{tail}").chars().take(64).collect()
    }

    /// The group's instances in `role`, not terminated, with their subnet.
    async fn describe(
        &self,
        role: InstanceRole,
        ids: &[String],
    ) -> Result<Vec<(CloudInstance, String)>, CloudError> {
        let described = describe_group(
            &self.client,
            &self.group,
            &[role],
            &["pending", "running", "stopping", "stopped"],
            ids,
        )
        .await
        .map_err(classify)?;
        let mut found = Vec::new();
        for instance in &described {
            let Some(instance_id) = instance.instance_id() else {
                continue;
            };
            let state = match instance.state().and_then(|s| s.name()) {
                Some(InstanceStateName::Pending) => InstanceState::Pending,
                Some(InstanceStateName::Running) => InstanceState::Running,
                _ => InstanceState::Stopped,
            };
            let launched_at = instance
                .launch_time()
                .and_then(|t| SystemTime::try_from(*t).ok())
                .unwrap_or(UNIX_EPOCH);
            let zone = instance
                .placement()
                .and_then(|p| p.availability_zone())
                .unwrap_or("")
                .to_string();
            // EC2 says why an instance stopped or terminated early (for example
            // "Server.InternalError: Internal error on launch").
            let state_reason = (state == InstanceState::Stopped)
                .then(|| {
                    instance
                        .state_reason()
                        .and_then(|r| r.message())
                        .or(instance.state_transition_reason())
                        .filter(|m| !m.is_empty())
                        .map(str::to_string)
                })
                .flatten();
            found.push((
                CloudInstance {
                    instance_id: instance_id.to_string(),
                    state,
                    launched_at,
                    zone,
                    state_reason,
                    app_address: self.app.as_ref().and_then(|(port, _)| {
                        Some(format!("{}:{port}", instance.private_ip_address()?))
                    }),
                    launch_token: instance
                        .tags()
                        .iter()
                        .find(|t| t.key() == Some(LAUNCH_TAG))
                        .and_then(|t| t.value())
                        .map(str::to_string),
                    version: instance
                        .tags()
                        .iter()
                        .find(|t| t.key() == Some(VERSION_TAG))
                        .and_then(|t| t.value())
                        .map(str::to_string),
                },
                instance.subnet_id().unwrap_or("").to_string(),
            ));
        }
        Ok(found)
    }

    /// Launches one instance in `role` from `image_id` in `subnet_id` for launch `token`
    /// (`Cloud::launch`); returns its id. Asked again with the same token, EC2 returns the
    /// instance of the first request if that took effect.
    pub async fn run_instance(
        &self,
        role: InstanceRole,
        image_id: &str,
        subnet_id: &str,
        user_data: Option<String>,
        token: &str,
        spec: Option<&SpecVersion>,
    ) -> Result<String, CloudError> {
        let client_token = self.client_token(role, token);
        let tags = TagSpecification::builder()
            .resource_type(ResourceType::Instance)
            .tags(
                Tag::builder()
                    .key("Name")
                    .value(format!("autoscaler-{}-{role}", self.group))
                    .build(),
            )
            .tags(Tag::builder().key(GROUP_TAG).value(&self.group).build())
            .tags(Tag::builder().key(ROLE_TAG).value(role.tag_value()).build())
            .tags(
                Tag::builder()
                    .key(EPOCH_TAG)
                    .value(self.epoch.to_string())
                    .build(),
            )
            .tags(Tag::builder().key(LAUNCH_TAG).value(token).build());
        let tags = match spec {
            Some(spec) => tags.tags(
                Tag::builder()
                    .key(VERSION_TAG)
                    .value(spec.version())
                    .build(),
            ),
            None => tags,
        }
        .build();
        let instance_type = spec
            .and_then(|spec| spec.spec.instance_type.as_deref())
            .unwrap_or(self.config.instance_type.as_str());
        let mut request = self
            .client
            .run_instances()
            .image_id(image_id)
            .instance_type(InstanceType::from(instance_type))
            .min_count(1)
            .max_count(1)
            .subnet_id(subnet_id)
            .set_security_group_ids(Some(self.config.security_group_ids.clone()))
            .client_token(&client_token)
            .tag_specifications(tags)
            .metadata_options(
                InstanceMetadataOptionsRequest::builder()
                    .http_tokens(HttpTokensState::Required)
                    .http_endpoint(InstanceMetadataEndpointState::Enabled)
                    .build(),
            )
            .block_device_mappings(
                BlockDeviceMapping::builder()
                    .device_name(&self.config.root_device_name)
                    .ebs(
                        EbsBlockDevice::builder()
                            .volume_type(VolumeType::Gp3)
                            .volume_size(self.config.root_volume_gib)
                            .delete_on_termination(true)
                            .build(),
                    )
                    .build(),
            );
        if !self.config.key_name.is_empty() {
            request = request.key_name(&self.config.key_name);
        }
        if !self.config.instance_profile.is_empty() {
            request = request.iam_instance_profile(
                IamInstanceProfileSpecification::builder()
                    .name(&self.config.instance_profile)
                    .build(),
            );
        }
        if let Some(user_data) = user_data {
            request = request.user_data(user_data);
        }
        let output = request.send().await.map_err(classify)?;
        output
            .instances()
            .first()
            .and_then(|i| i.instance_id())
            .map(str::to_string)
            .ok_or_else(|| {
                CloudError::new(CloudErrorKind::Other, "RunInstances returned no instance")
            })
    }

    /// The subnet with the fewest of the group's instances, to spread them over zones.
    fn emptiest_subnet(&self, counts: &BTreeMap<String, usize>) -> String {
        self.config
            .subnet_ids
            .iter()
            .min_by_key(|subnet| counts.get(*subnet).copied().unwrap_or(0))
            .cloned()
            .expect("open() guarantees at least one subnet")
    }
}

impl Cloud for Ec2Cloud {
    async fn list(&self) -> Result<Vec<CloudInstance>, CloudError> {
        Ok(self
            .describe(InstanceRole::Agent, &[])
            .await?
            .into_iter()
            .map(|(i, _)| i)
            .collect())
    }

    async fn launch(&self, tokens: &[String]) -> Result<Vec<String>, CloudError> {
        self.launch_on(tokens, None).await
    }

    async fn launch_with(
        &self,
        tokens: &[String],
        spec: &SpecVersion,
    ) -> Result<Vec<String>, CloudError> {
        self.launch_on(tokens, Some(spec)).await
    }

    fn check_spec(&self, spec: &LaunchSpec) -> Result<(), SpecError> {
        if let Some(image) = &spec.image_id
            && !valid_ami_id(image)
        {
            return Err(SpecError::new(
                "launch_spec.image_id",
                format!("{image:?} is not an AMI id (ami- and 8 or 17 hex digits)"),
            ));
        }
        if let Some(kind) = &spec.instance_type
            && (kind.is_empty()
                || !kind.contains('.')
                || !kind
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-'))
        {
            return Err(SpecError::new(
                "launch_spec.instance_type",
                format!("{kind:?} is not an instance type (like t2.micro)"),
            ));
        }
        if !spec.agent_args.is_empty() || !spec.app_args.is_empty() {
            return Err(SpecError::new(
                "launch_spec.agent_args",
                "EC2 instances run what their AMI installed: bake a new AMI and set image_id, \
                 or set their settings in user_data",
            ));
        }
        if let Some(user_data) = &spec.user_data
            && (user_data.trim().is_empty() || user_data.len() > USER_DATA_LIMIT)
        {
            return Err(SpecError::new(
                "launch_spec.user_data",
                format!(
                    "is {} bytes: it must hold a script of at most {USER_DATA_LIMIT} bytes",
                    user_data.len()
                ),
            ));
        }
        Ok(())
    }
    async fn terminate(&self, instance_ids: &[String]) -> Result<(), CloudError> {
        if instance_ids.is_empty() {
            return Ok(());
        }
        let ours: Vec<String> = self
            .describe(InstanceRole::Agent, instance_ids)
            .await?
            .into_iter()
            .map(|(i, _)| i.instance_id)
            .collect();
        if let Some(stranger) = instance_ids.iter().find(|id| !ours.contains(id)) {
            return Err(CloudError::new(
                CloudErrorKind::NotFound,
                format!("{stranger} is not a live instance of group {}", self.group),
            ));
        }
        self.client
            .terminate_instances()
            .set_instance_ids(Some(instance_ids.to_vec()))
            .send()
            .await
            .map_err(classify)?;
        Ok(())
    }
}

/// `ami-` and 8 or 17 lowercase hex digits.
fn valid_ami_id(id: &str) -> bool {
    id.strip_prefix("ami-").is_some_and(|hex| {
        (hex.len() == 8 || hex.len() == 17)
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

impl Ec2Cloud {
    async fn launch_on(
        &self,
        tokens: &[String],
        spec: Option<&SpecVersion>,
    ) -> Result<Vec<String>, CloudError> {
        let image_id = spec
            .and_then(|spec| spec.spec.image_id.as_deref())
            .unwrap_or(self.config.ami_id.as_str());
        // The version's user data, else the group's (the application's, with a balancer).
        let user_data = match spec.and_then(|spec| spec.spec.user_data.as_deref()) {
            Some(script) => {
                use base64::Engine as _;
                Some(base64::engine::general_purpose::STANDARD.encode(script))
            }
            None => self.app.as_ref().map(|(_, user_data)| user_data.clone()),
        };
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        let mut made: BTreeMap<String, String> = BTreeMap::new();
        for (instance, subnet) in self.describe(InstanceRole::Agent, &[]).await? {
            *counts.entry(subnet).or_default() += 1;
            if let Some(token) = instance.launch_token {
                made.insert(token, instance.instance_id);
            }
        }
        let mut launched = Vec::new();
        for token in tokens {
            // A launch asked before whose instance is there (its answer was lost): that one,
            // and no second (whatever the subnet would be now, which EC2 would refuse as an
            // IdempotentParameterMismatch).
            if let Some(instance_id) = made.get(token) {
                tracing::info!(%instance_id, %token, "the launch asked before had taken effect");
                launched.push(instance_id.clone());
                continue;
            }
            let subnet = self.emptiest_subnet(&counts);
            match self
                .run_instance(
                    InstanceRole::Agent,
                    image_id,
                    &subnet,
                    user_data.clone(),
                    token,
                    spec,
                )
                .await
            {
                Ok(instance_id) => {
                    tracing::info!(%instance_id, %subnet, "instance launched");
                    *counts.entry(subnet).or_default() += 1;
                    launched.push(instance_id);
                }
                Err(error) if launched.is_empty() => return Err(error),
                Err(error) => {
                    tracing::warn!(%error, launched = launched.len(), "a launch failed after others succeeded");
                    break;
                }
            }
        }
        Ok(launched)
    }
}
