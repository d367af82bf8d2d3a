//! The Operator service's rollout calls, answered by the controller: the launch specification
//! and instance refreshes between the wire's types and the controller's commands
//! (`autoscaler_controller::reconciler::Commands`), and a refresh on the wire for the Status
//! service.

use autoscaler_controller::reconciler::{CommandError, Commands, GroupUpdate};
use autoscaler_controller::spec::{LaunchSpec, SpecVersion};
use autoscaler_monitor::operator::{Answer, Rollouts};
use autoscaler_policy::refresh::{Refresh, RefreshPreferences};
use autoscaler_proto::v1;
use tonic::Status;

/// The controller's commands as the Operator service's `Rollouts`.
#[derive(Clone, Debug)]
pub struct ControllerRollouts(pub Commands);

fn status(error: CommandError) -> Status {
    match error {
        CommandError::Invalid { .. } => Status::invalid_argument(error.to_string()),
        CommandError::Precondition(_) => Status::failed_precondition(error.to_string()),
        CommandError::Unavailable(_) => Status::unavailable(error.to_string()),
    }
}

/// A launch specification from the wire.
pub fn spec_of(wire: v1::LaunchSpec) -> LaunchSpec {
    LaunchSpec {
        image_id: wire.image_id,
        instance_type: wire.instance_type,
        agent_args: wire.agent_args,
        app_args: wire.app_args,
        user_data: wire.user_data,
    }
}

fn wire_spec(spec: &LaunchSpec) -> v1::LaunchSpec {
    v1::LaunchSpec {
        image_id: spec.image_id.clone(),
        instance_type: spec.instance_type.clone(),
        agent_args: spec.agent_args.clone(),
        app_args: spec.app_args.clone(),
        user_data: spec.user_data.clone(),
    }
}

fn wire_version(version: &SpecVersion) -> v1::LaunchSpecVersion {
    v1::LaunchSpecVersion {
        version: version.version(),
        counter: version.counter,
        spec: Some(wire_spec(&version.spec)),
        since_ms: version.since_ms,
    }
}

/// Preferences from the wire, EC2's defaults where unset.
pub fn preferences_of(wire: v1::RefreshPreferences) -> RefreshPreferences {
    let defaults = RefreshPreferences::default();
    RefreshPreferences {
        min_healthy_percentage: wire
            .min_healthy_percentage
            .unwrap_or(defaults.min_healthy_percentage),
        max_healthy_percentage: wire
            .max_healthy_percentage
            .unwrap_or(defaults.max_healthy_percentage),
        instance_warmup_secs: wire.instance_warmup_secs,
        skip_matching: wire.skip_matching,
        checkpoints: wire.checkpoints,
        checkpoint_delay_secs: wire
            .checkpoint_delay_secs
            .unwrap_or(defaults.checkpoint_delay_secs),
        bake_time_secs: wire.bake_time_secs.unwrap_or(defaults.bake_time_secs),
        auto_rollback: wire.auto_rollback.unwrap_or(defaults.auto_rollback),
        failures_to_roll_back: wire
            .failures_to_roll_back
            .unwrap_or(defaults.failures_to_roll_back),
        progress_timeout_secs: wire
            .progress_timeout_secs
            .unwrap_or(defaults.progress_timeout_secs),
        include_protected: wire.include_protected,
    }
}

fn wire_preferences(preferences: &RefreshPreferences) -> v1::RefreshPreferences {
    v1::RefreshPreferences {
        min_healthy_percentage: Some(preferences.min_healthy_percentage),
        max_healthy_percentage: Some(preferences.max_healthy_percentage),
        instance_warmup_secs: preferences.instance_warmup_secs,
        skip_matching: preferences.skip_matching,
        checkpoints: preferences.checkpoints.clone(),
        checkpoint_delay_secs: Some(preferences.checkpoint_delay_secs),
        bake_time_secs: Some(preferences.bake_time_secs),
        auto_rollback: Some(preferences.auto_rollback),
        failures_to_roll_back: Some(preferences.failures_to_roll_back),
        progress_timeout_secs: Some(preferences.progress_timeout_secs),
        include_protected: preferences.include_protected,
    }
}

/// A refresh on the wire.
pub fn wire_refresh(refresh: &Refresh) -> v1::InstanceRefresh {
    v1::InstanceRefresh {
        id: refresh.id,
        status: refresh.status.as_str().to_string(),
        target: refresh.target.clone(),
        previous: refresh.previous.clone().unwrap_or_default(),
        percent_complete: refresh.percent_complete,
        instances_left: refresh.instances_left,
        reason: refresh.reason.clone(),
        started_ms: refresh.started_ms,
        ended_ms: refresh.ended_ms.unwrap_or(0),
        replaced: refresh.replaced,
        paused_until_ms: refresh.paused_until_ms.unwrap_or(0),
        checkpoints_passed: refresh.checkpoints_passed,
        preferences: Some(wire_preferences(&refresh.preferences)),
    }
}

impl Rollouts for ControllerRollouts {
    fn update_spec(&self, spec: v1::LaunchSpec) -> Answer<'_, v1::LaunchSpecVersion> {
        Box::pin(async move {
            let current = self.0.update_spec(spec_of(spec)).await.map_err(status)?;
            Ok(wire_version(&current))
        })
    }

    fn start_refresh(
        &self,
        request: v1::StartInstanceRefreshRequest,
    ) -> Answer<'_, v1::InstanceRefresh> {
        Box::pin(async move {
            let preferences = preferences_of(request.preferences.unwrap_or_default());
            let refresh = self
                .0
                .start_refresh(request.spec.map(spec_of), preferences)
                .await
                .map_err(status)?;
            Ok(wire_refresh(&refresh))
        })
    }

    fn cancel_refresh(&self) -> Answer<'_, v1::InstanceRefresh> {
        Box::pin(async move {
            let refresh = self.0.cancel_refresh().await.map_err(status)?;
            Ok(wire_refresh(&refresh))
        })
    }

    fn roll_back_refresh(&self) -> Answer<'_, v1::InstanceRefresh> {
        Box::pin(async move {
            let refresh = self.0.roll_back_refresh().await.map_err(status)?;
            Ok(wire_refresh(&refresh))
        })
    }

    fn set_protection(&self, request: v1::SetInstanceProtectionRequest) -> Answer<'_, Vec<String>> {
        Box::pin(async move {
            self.0
                .set_protection(request.instance_ids, request.protected_from_scale_in)
                .await
                .map_err(status)
        })
    }

    fn update_group(&self, request: v1::UpdateGroupRequest) -> Answer<'_, v1::UpdateGroupResponse> {
        Box::pin(async move {
            let settings = self
                .0
                .update_group(GroupUpdate {
                    min_instances: request.min_instances,
                    max_instances: request.max_instances,
                    desired_capacity: request.desired_capacity,
                    policy_toml: request.policy_toml,
                })
                .await
                .map_err(status)?;
            Ok(v1::UpdateGroupResponse {
                min_instances: settings.min_instances,
                max_instances: settings.max_instances,
                policy_toml: settings.policy_toml.unwrap_or_default(),
            })
        })
    }

    fn describe(&self) -> Answer<'_, v1::DescribeInstanceRefreshResponse> {
        Box::pin(async move {
            let rollout = self.0.describe().await.map_err(status)?;
            Ok(v1::DescribeInstanceRefreshResponse {
                refresh: rollout.refresh.as_ref().map(wire_refresh),
                versions: rollout.specs.versions.iter().map(wire_version).collect(),
            })
        })
    }
}
