//! The group's Application Load Balancer: `up --load-balancer` makes it (its security group,
//! the target group, the load balancer and its HTTP listener, and the rule that lets only the
//! load balancer reach the application's port), `status` shows its targets' health, `down`
//! removes it all. Every step finds what an earlier run made instead of making it twice.

use std::time::Duration;

use anyhow::{Context, bail};
use aws_sdk_ec2::types::{IpPermission, IpRange, UserIdGroupPair};
use aws_sdk_elasticloadbalancingv2::client::Waiters as _;
use aws_sdk_elasticloadbalancingv2::error::ProvideErrorMetadata;
use aws_sdk_elasticloadbalancingv2::types::{
    Action, ActionTypeEnum, LoadBalancerSchemeEnum, LoadBalancerTypeEnum, ProtocolEnum,
    TargetGroupAttribute, TargetTypeEnum,
};

use super::{Aws, explain, wait_for};
use autoscaler_controller::ec2::GROUP_TAG;

/// The application's port on every instance (autoscaler-app.service).
pub const APP_PORT: u16 = 8080;
/// Where clients send requests.
pub const LISTENER_PORT: i32 = 80;
/// How long ELB drains a deregistered target (its default is 300 s); the controller's
/// `drain_timeout_secs` must be at least this.
pub const DEREGISTRATION_DELAY_SECS: u32 = 30;

/// The names of the group's load balancer and target group: ELB allows 32 characters of a-z,
/// 0-9 and -, not ending with -.
fn elb_name(group: &str) -> String {
    let name: String = format!("autoscaler-{group}").chars().take(32).collect();
    name.trim_end_matches('-').to_string()
}

fn elb_tag() -> impl Fn(&str) -> aws_sdk_elasticloadbalancingv2::types::Tag {
    |group: &str| {
        aws_sdk_elasticloadbalancingv2::types::Tag::builder()
            .key(GROUP_TAG)
            .value(group)
            .build()
    }
}

/// What makes up the group's load balancer, as far as it exists.
#[derive(Debug, Default)]
pub struct Parts {
    pub load_balancer_arn: Option<String>,
    pub dns_name: Option<String>,
    pub target_group_arn: Option<String>,
    pub security_group_id: Option<String>,
}

impl Parts {
    pub fn is_empty(&self) -> bool {
        self.load_balancer_arn.is_none()
            && self.target_group_arn.is_none()
            && self.security_group_id.is_none()
    }
}

impl Aws {
    /// The load balancer's own security group's name.
    fn alb_security_group_name(&self) -> String {
        format!("autoscaler-{}-alb", self.group)
    }

    /// What of the group's load balancer exists.
    pub async fn balancer_parts(&self) -> anyhow::Result<Parts> {
        let name = elb_name(&self.group);
        let mut parts = Parts::default();
        match self.elb.describe_load_balancers().names(&name).send().await {
            Ok(found) => {
                if let Some(lb) = found.load_balancers().first() {
                    parts.load_balancer_arn = lb.load_balancer_arn().map(str::to_string);
                    parts.dns_name = lb.dns_name().map(str::to_string);
                }
            }
            Err(error) if error.code() == Some("LoadBalancerNotFound") => {}
            Err(error) => return Err(explain("describe load balancers", error)),
        }
        match self.elb.describe_target_groups().names(&name).send().await {
            Ok(found) => {
                parts.target_group_arn = found
                    .target_groups()
                    .first()
                    .and_then(|g| g.target_group_arn())
                    .map(str::to_string);
            }
            Err(error) if error.code() == Some("TargetGroupNotFound") => {}
            Err(error) => return Err(explain("describe target groups", error)),
        }
        parts.security_group_id = self
            .security_group_named(&self.alb_security_group_name())
            .await?;
        Ok(parts)
    }

    /// Makes the load balancer (or finds what an earlier run made) in the default VPC, lets
    /// it reach the application's port on the group's instances (and nothing else reach it),
    /// and records the target group's ARN and the DNS name in Parameter Store.
    pub async fn ensure_balancer(&self, from: &str) -> anyhow::Result<Parts> {
        let vpc = self.default_vpc().await?;
        let subnets = self.default_subnets().await?;
        if subnets.len() < 2 {
            bail!(
                "an Application Load Balancer needs subnets in two availability zones; the default VPC has {}",
                subnets.len()
            );
        }
        let instances_group = self.security_group().await?.with_context(|| {
            format!(
                "security group autoscaler-{} not found: run `cargo xtask bootstrap` first",
                self.group
            )
        })?;
        let name = elb_name(&self.group);
        let tag = elb_tag();

        // The load balancer's security group: HTTP from `from`.
        let alb_group_name = self.alb_security_group_name();
        let alb_group = match self.security_group_named(&alb_group_name).await? {
            Some(id) => id,
            None => {
                let created = self
                    .ec2
                    .create_security_group()
                    .group_name(&alb_group_name)
                    .description(format!(
                        "autoscaler group {}: its load balancer",
                        self.group
                    ))
                    .vpc_id(&vpc)
                    .send()
                    .await
                    .map_err(|e| explain("create the load balancer's security group", e))?;
                let id = created.group_id().unwrap_or_default().to_string();
                eprintln!("  created security group {alb_group_name} ({id})");
                id
            }
        };
        self.allow(
            &alb_group,
            IpPermission::builder()
                .ip_protocol("tcp")
                .from_port(LISTENER_PORT)
                .to_port(LISTENER_PORT)
                .ip_ranges(IpRange::builder().cidr_ip(from).build())
                .build(),
            "open the load balancer's HTTP port",
        )
        .await?;
        // The application's port on the instances, from the load balancer only.
        self.allow(
            &instances_group,
            IpPermission::builder()
                .ip_protocol("tcp")
                .from_port(i32::from(APP_PORT))
                .to_port(i32::from(APP_PORT))
                .user_id_group_pairs(UserIdGroupPair::builder().group_id(&alb_group).build())
                .build(),
            "let the load balancer reach the application",
        )
        .await?;

        // The target group: the application's port, its health path, a short drain.
        let target_group = self
            .elb
            .create_target_group()
            .name(&name)
            .protocol(ProtocolEnum::Http)
            .port(i32::from(APP_PORT))
            .vpc_id(&vpc)
            .target_type(TargetTypeEnum::Instance)
            .health_check_protocol(ProtocolEnum::Http)
            .health_check_path("/healthz")
            .health_check_interval_seconds(10)
            .health_check_timeout_seconds(5)
            .healthy_threshold_count(2)
            .unhealthy_threshold_count(2)
            .tags(tag(&self.group))
            .send()
            .await
            .map_err(|e| explain("create the target group", e))?;
        let target_group_arn = target_group
            .target_groups()
            .first()
            .and_then(|g| g.target_group_arn())
            .context("CreateTargetGroup returned no target group")?
            .to_string();
        self.elb
            .modify_target_group_attributes()
            .target_group_arn(&target_group_arn)
            .attributes(
                TargetGroupAttribute::builder()
                    .key("deregistration_delay.timeout_seconds")
                    .value(DEREGISTRATION_DELAY_SECS.to_string())
                    .build(),
            )
            .send()
            .await
            .map_err(|e| explain("set the target group's deregistration delay", e))?;

        // The load balancer and its listener.
        let balancer = self
            .elb
            .create_load_balancer()
            .name(&name)
            .r#type(LoadBalancerTypeEnum::Application)
            .scheme(LoadBalancerSchemeEnum::InternetFacing)
            .set_subnets(Some(subnets))
            .security_groups(&alb_group)
            .tags(tag(&self.group))
            .send()
            .await
            .map_err(|e| explain("create the load balancer", e))?;
        let lb = balancer
            .load_balancers()
            .first()
            .context("CreateLoadBalancer returned no load balancer")?;
        let load_balancer_arn = lb.load_balancer_arn().unwrap_or_default().to_string();
        let dns_name = lb.dns_name().unwrap_or_default().to_string();
        let listeners = self
            .elb
            .describe_listeners()
            .load_balancer_arn(&load_balancer_arn)
            .send()
            .await
            .map_err(|e| explain("describe the listeners", e))?;
        if !listeners
            .listeners()
            .iter()
            .any(|l| l.port() == Some(LISTENER_PORT))
        {
            self.elb
                .create_listener()
                .load_balancer_arn(&load_balancer_arn)
                .protocol(ProtocolEnum::Http)
                .port(LISTENER_PORT)
                .default_actions(
                    Action::builder()
                        .r#type(ActionTypeEnum::Forward)
                        .target_group_arn(&target_group_arn)
                        .build(),
                )
                .send()
                .await
                .map_err(|e| explain("create the listener", e))?;
        }
        self.parameters
            .put(&self.names.target_group(), &target_group_arn, false)
            .await?;
        self.parameters
            .put(&self.names.load_balancer(), &dns_name, false)
            .await?;
        eprintln!(
            "  load balancer {name}: http://{dns_name}/ -> target group {name} (port {APP_PORT}, health /healthz, deregistration delay {DEREGISTRATION_DELAY_SECS} s)"
        );
        Ok(Parts {
            load_balancer_arn: Some(load_balancer_arn),
            dns_name: Some(dns_name),
            target_group_arn: Some(target_group_arn),
            security_group_id: Some(alb_group),
        })
    }

    /// Removes the load balancer, its listener, the target group, the application's rule and
    /// the load balancer's security group, and their parameters.
    pub async fn delete_balancer(&self, parts: &Parts) -> anyhow::Result<()> {
        if let Some(arn) = &parts.load_balancer_arn {
            self.elb
                .delete_load_balancer()
                .load_balancer_arn(arn)
                .send()
                .await
                .map_err(|e| explain("delete the load balancer", e))?;
            // Its listeners go with it; its network interfaces take a while.
            let _ = self
                .elb
                .wait_until_load_balancers_deleted()
                .load_balancer_arns(arn)
                .wait(Duration::from_secs(600))
                .await;
        }
        if let Some(arn) = &parts.target_group_arn {
            wait_for(
                "the target group to be free",
                Duration::from_secs(300),
                Duration::from_secs(5),
                || async {
                    match self
                        .elb
                        .delete_target_group()
                        .target_group_arn(arn)
                        .send()
                        .await
                    {
                        Ok(_) => Ok(Some(())),
                        Err(error) if error.code() == Some("ResourceInUse") => Ok(None),
                        Err(error) => Err(explain("delete the target group", error)),
                    }
                },
            )
            .await?;
        }
        if let Some(alb_group) = &parts.security_group_id {
            if let Some(instances_group) = self.security_group().await? {
                let revoked = self
                    .ec2
                    .revoke_security_group_ingress()
                    .group_id(&instances_group)
                    .ip_permissions(
                        IpPermission::builder()
                            .ip_protocol("tcp")
                            .from_port(i32::from(APP_PORT))
                            .to_port(i32::from(APP_PORT))
                            .user_id_group_pairs(
                                UserIdGroupPair::builder().group_id(alb_group).build(),
                            )
                            .build(),
                    )
                    .send()
                    .await;
                if let Err(error) = revoked
                    && error.code() != Some("InvalidPermission.NotFound")
                {
                    return Err(explain("revoke the application's rule", error));
                }
            }
            wait_for(
                "the load balancer's security group to be free",
                Duration::from_secs(300),
                Duration::from_secs(5),
                || async {
                    match self
                        .ec2
                        .delete_security_group()
                        .group_id(alb_group)
                        .send()
                        .await
                    {
                        Ok(_) => Ok(Some(())),
                        Err(error) if error.code() == Some("DependencyViolation") => Ok(None),
                        Err(error) => {
                            Err(explain("delete the load balancer's security group", error))
                        }
                    }
                },
            )
            .await?;
        }
        self.parameters.delete(&self.names.target_group()).await?;
        self.parameters.delete(&self.names.load_balancer()).await?;
        Ok(())
    }

    /// Each target's health, as the target group reports it: (instance id, state, reason).
    pub async fn target_health(
        &self,
        target_group_arn: &str,
    ) -> anyhow::Result<Vec<(String, String, String)>> {
        let answer = self
            .elb
            .describe_target_health()
            .target_group_arn(target_group_arn)
            .send()
            .await
            .map_err(|e| explain("describe the targets' health", e))?;
        Ok(answer
            .target_health_descriptions()
            .iter()
            .map(|d| {
                let health = d.target_health();
                (
                    d.target()
                        .and_then(|t| t.id())
                        .unwrap_or_default()
                        .to_string(),
                    health
                        .and_then(|h| h.state())
                        .map_or("unknown".to_string(), |s| s.as_str().to_string()),
                    health
                        .and_then(|h| h.description())
                        .unwrap_or_default()
                        .to_string(),
                )
            })
            .collect())
    }

    /// Adds `permission` to security group `group_id` (already there is fine).
    async fn allow(
        &self,
        group_id: &str,
        permission: IpPermission,
        what: &str,
    ) -> anyhow::Result<()> {
        match self
            .ec2
            .authorize_security_group_ingress()
            .group_id(group_id)
            .ip_permissions(permission)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(error) if error.code() == Some("InvalidPermission.Duplicate") => Ok(()),
            Err(error) => Err(explain(what, error)),
        }
    }
}
