//! The EC2 provider's load balancer: an Elastic Load Balancing target group (an Application Load
//! Balancer's), on the AWS SDK. Instances are its targets by instance id and the application's
//! port; ELB drains a deregistered target for the group's deregistration delay and then forgets
//! it, and it reports no requests in flight (only whether draining is over).

use aws_sdk_elasticloadbalancingv2::error::ProvideErrorMetadata;
use aws_sdk_elasticloadbalancingv2::types::{TargetDescription, TargetHealthStateEnum};

use super::sdk::classify;
use crate::balancer::{Balancer, Pending, Target, TargetState, TargetStatus};
use crate::cloud::{CloudError, CloudErrorKind};

/// The group's target group.
#[derive(Debug, Clone)]
pub struct TargetGroup {
    client: aws_sdk_elasticloadbalancingv2::Client,
    arn: String,
    /// The application's port on every instance.
    port: i32,
}

impl TargetGroup {
    /// The target group `arn`; empty reads it from `/autoscaler/<group>/target-group`, where
    /// `cargo xtask up --load-balancer` records it.
    pub async fn open(
        sdk: &aws_config::SdkConfig,
        group: &str,
        arn: &str,
        port: u16,
    ) -> Result<TargetGroup, CloudError> {
        let arn = if arn.is_empty() {
            let name = autoscaler_aws::GroupParameters::new(group).target_group();
            autoscaler_aws::Parameters::new(sdk)
                .get(&name)
                .await
                .map_err(|error| {
                    CloudError::new(
                        CloudErrorKind::Other,
                        format!(
                            "no target group given and none recorded ({error}): run `cargo xtask up --load-balancer`, or set load_balancer.target_group_arn"
                        ),
                    )
                })?
        } else {
            arn.to_string()
        };
        Ok(TargetGroup {
            client: aws_sdk_elasticloadbalancingv2::Client::new(sdk),
            arn,
            port: i32::from(port),
        })
    }

    pub fn arn(&self) -> &str {
        &self.arn
    }

    fn target(&self, instance_id: &str) -> TargetDescription {
        TargetDescription::builder()
            .id(instance_id)
            .port(self.port)
            .build()
    }
}

/// A target's state as this crate names it.
pub fn target_state(state: &TargetHealthStateEnum) -> TargetState {
    match state {
        TargetHealthStateEnum::Initial => TargetState::Initial,
        TargetHealthStateEnum::Healthy => TargetState::Healthy,
        TargetHealthStateEnum::Draining | TargetHealthStateEnum::UnhealthyDraining => {
            TargetState::Draining
        }
        TargetHealthStateEnum::Unused => TargetState::Unused,
        _ => TargetState::Unhealthy,
    }
}

impl Balancer for TargetGroup {
    fn targets(&self) -> Pending<'_, Vec<TargetStatus>> {
        Box::pin(async move {
            let answer = self
                .client
                .describe_target_health()
                .target_group_arn(&self.arn)
                .send()
                .await
                .map_err(classify)?;
            Ok(answer
                .target_health_descriptions()
                .iter()
                .filter_map(|description| {
                    let instance_id = description.target()?.id()?.to_string();
                    let health = description.target_health();
                    let state = health
                        .and_then(|h| h.state())
                        .map_or(TargetState::Unhealthy, target_state);
                    let reason = health
                        .and_then(|h| h.description().or(h.reason().map(|r| r.as_str())))
                        .map(str::to_string);
                    Some(TargetStatus {
                        instance_id,
                        state,
                        in_flight: None,
                        reason,
                    })
                })
                .collect())
        })
    }

    fn register<'a>(&'a self, target: &'a Target) -> Pending<'a, ()> {
        Box::pin(async move {
            self.client
                .register_targets()
                .target_group_arn(&self.arn)
                .targets(self.target(&target.instance_id))
                .send()
                .await
                .map_err(classify)?;
            Ok(())
        })
    }

    fn deregister<'a>(&'a self, instance_id: &'a str) -> Pending<'a, ()> {
        Box::pin(async move {
            match self
                .client
                .deregister_targets()
                .target_group_arn(&self.arn)
                .targets(self.target(instance_id))
                .send()
                .await
            {
                Ok(_) => Ok(()),
                // Not registered (or gone): nothing to deregister.
                Err(error) if error.code() == Some("InvalidTarget") => Ok(()),
                Err(error) => Err(classify(error)),
            }
        })
    }

    /// ELB forgets a deregistered target once its draining is over: deregistering again is
    /// all there is to do.
    fn remove<'a>(&'a self, instance_id: &'a str) -> Pending<'a, ()> {
        self.deregister(instance_id)
    }
}
