//! The Operator service: steering calls from operators (the demo, rehearsals) that the monitor
//! passes on to an agent under its own certificate, since agents take control calls only from
//! the monitor; and the group's schedules at run time, which the daemon keeps (`ScheduleBook`).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use autoscaler_proto::tls::{Role, require_caller};
use autoscaler_proto::v1;
use autoscaler_proto::v1::operator_server::Operator;
use tonic::{Request, Response, Status};

use crate::poller::SET_LOAD_TARGET;
use crate::registry::Registry;
use crate::unary::{AgentConnection, CallError};

/// How long the agent gets to answer a forwarded call.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(2);

/// An answer some time later.
pub type Answer<'a, T> = Pin<Box<dyn Future<Output = Result<T, Status>> + Send + 'a>>;

/// The group's schedules at run time: the daemon checks them as it checks its config, keeps
/// them in the group's store and gives them to the controller.
pub trait ScheduleBook: Send + Sync + 'static {
    /// Adds or replaces `entry`; true when it replaced one.
    fn put(&self, entry: v1::ScheduleEntry) -> Answer<'_, bool>;
    /// The config file's and those put at run time.
    fn list(&self) -> Vec<v1::ScheduleEntry>;
    fn delete(&self, name: String) -> Answer<'_, ()>;
}

/// The group's rollouts: its launch specification and instance refreshes, which the daemon's
/// controller carries out. Each answer's `Status` says what was refused and why.
pub trait Rollouts: Send + Sync + 'static {
    fn update_spec(&self, spec: v1::LaunchSpec) -> Answer<'_, v1::LaunchSpecVersion>;
    fn start_refresh(
        &self,
        request: v1::StartInstanceRefreshRequest,
    ) -> Answer<'_, v1::InstanceRefresh>;
    fn cancel_refresh(&self) -> Answer<'_, v1::InstanceRefresh>;
    fn roll_back_refresh(&self) -> Answer<'_, v1::InstanceRefresh>;
    fn describe(&self) -> Answer<'_, v1::DescribeInstanceRefreshResponse>;
    fn set_protection(&self, request: v1::SetInstanceProtectionRequest) -> Answer<'_, Vec<String>>;
    fn update_group(&self, request: v1::UpdateGroupRequest) -> Answer<'_, v1::UpdateGroupResponse>;
}

/// Serves `autoscaler.v1.Operator` over the monitor's registry.
#[derive(Clone)]
pub struct OperatorService {
    registry: Arc<Registry>,
    schedules: Option<Arc<dyn ScheduleBook>>,
    rollouts: Option<Arc<dyn Rollouts>>,
}

impl std::fmt::Debug for OperatorService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OperatorService")
            .field("registry", &self.registry)
            .field("schedules", &self.schedules.is_some())
            .field("rollouts", &self.rollouts.is_some())
            .finish()
    }
}

impl OperatorService {
    pub fn new(
        registry: Arc<Registry>,
        schedules: Option<Arc<dyn ScheduleBook>>,
        rollouts: Option<Arc<dyn Rollouts>>,
    ) -> OperatorService {
        OperatorService {
            registry,
            schedules,
            rollouts,
        }
    }

    fn rollouts(&self) -> Result<&Arc<dyn Rollouts>, Status> {
        self.rollouts.as_ref().ok_or_else(|| {
            Status::failed_precondition(
                "this monitor runs no controller: it has no launch specification",
            )
        })
    }

    fn book(&self) -> Result<&Arc<dyn ScheduleBook>, Status> {
        self.schedules.as_ref().ok_or_else(|| {
            Status::failed_precondition("this monitor runs no controller: it has no schedules")
        })
    }
}

#[tonic::async_trait]
impl Operator for OperatorService {
    async fn set_load_target(
        &self,
        request: Request<v1::OperatorLoadTargetRequest>,
    ) -> Result<Response<v1::OperatorLoadTargetResponse>, Status> {
        require_caller(&request, Role::Operator)?;
        let request = request.into_inner();
        if !(0.0..=100.0).contains(&request.target_percent) {
            return Err(Status::invalid_argument(format!(
                "target_percent {} is outside 0-100",
                request.target_percent
            )));
        }
        let address = self
            .registry
            .address_of(&request.instance_id)
            .ok_or_else(|| {
                Status::not_found(format!("no registered instance {:?}", request.instance_id))
            })?;
        let mut agent = AgentConnection::new(self.registry.connector().clone(), &address)
            .map_err(Status::internal)?;
        let forwarded = v1::SetLoadTargetRequest {
            target_percent: request.target_percent,
            hold: request.hold,
        };
        let deadline = tokio::time::Instant::now() + FORWARD_TIMEOUT;
        // The agent's answer, refusal included, is passed on with its code.
        let answer: v1::SetLoadTargetResponse = agent
            .call(SET_LOAD_TARGET, &forwarded, deadline)
            .await
            .map_err(|error| match error {
                CallError::TimedOut => Status::deadline_exceeded(format!(
                    "the agent of {} did not answer in {FORWARD_TIMEOUT:?}",
                    request.instance_id
                )),
                CallError::Status { code, message } => Status::new(code, message),
            })?;
        Ok(Response::new(v1::OperatorLoadTargetResponse {
            current_load_percent: answer.current_load_percent,
        }))
    }

    async fn put_schedule(
        &self,
        request: Request<v1::PutScheduleRequest>,
    ) -> Result<Response<v1::PutScheduleResponse>, Status> {
        require_caller(&request, Role::Operator)?;
        let entry = request
            .into_inner()
            .entry
            .ok_or_else(|| Status::invalid_argument("entry is missing"))?;
        let replaced = self.book()?.put(entry).await?;
        Ok(Response::new(v1::PutScheduleResponse { replaced }))
    }

    async fn list_schedules(
        &self,
        request: Request<v1::ListSchedulesRequest>,
    ) -> Result<Response<v1::ListSchedulesResponse>, Status> {
        require_caller(&request, Role::Operator)?;
        Ok(Response::new(v1::ListSchedulesResponse {
            entries: self.book()?.list(),
        }))
    }

    async fn delete_schedule(
        &self,
        request: Request<v1::DeleteScheduleRequest>,
    ) -> Result<Response<v1::DeleteScheduleResponse>, Status> {
        require_caller(&request, Role::Operator)?;
        let name = request.into_inner().name;
        self.book()?.delete(name).await?;
        Ok(Response::new(v1::DeleteScheduleResponse {}))
    }

    async fn update_launch_spec(
        &self,
        request: Request<v1::UpdateLaunchSpecRequest>,
    ) -> Result<Response<v1::UpdateLaunchSpecResponse>, Status> {
        require_caller(&request, Role::Operator)?;
        let spec = request
            .into_inner()
            .spec
            .ok_or_else(|| Status::invalid_argument("spec is missing"))?;
        let current = self.rollouts()?.update_spec(spec).await?;
        Ok(Response::new(v1::UpdateLaunchSpecResponse {
            current: Some(current),
        }))
    }

    async fn start_instance_refresh(
        &self,
        request: Request<v1::StartInstanceRefreshRequest>,
    ) -> Result<Response<v1::InstanceRefreshResponse>, Status> {
        require_caller(&request, Role::Operator)?;
        let refresh = self.rollouts()?.start_refresh(request.into_inner()).await?;
        Ok(Response::new(v1::InstanceRefreshResponse {
            refresh: Some(refresh),
        }))
    }

    async fn cancel_instance_refresh(
        &self,
        request: Request<v1::CancelInstanceRefreshRequest>,
    ) -> Result<Response<v1::InstanceRefreshResponse>, Status> {
        require_caller(&request, Role::Operator)?;
        let refresh = self.rollouts()?.cancel_refresh().await?;
        Ok(Response::new(v1::InstanceRefreshResponse {
            refresh: Some(refresh),
        }))
    }

    async fn rollback_instance_refresh(
        &self,
        request: Request<v1::RollbackInstanceRefreshRequest>,
    ) -> Result<Response<v1::InstanceRefreshResponse>, Status> {
        require_caller(&request, Role::Operator)?;
        let refresh = self.rollouts()?.roll_back_refresh().await?;
        Ok(Response::new(v1::InstanceRefreshResponse {
            refresh: Some(refresh),
        }))
    }

    async fn describe_instance_refresh(
        &self,
        request: Request<v1::DescribeInstanceRefreshRequest>,
    ) -> Result<Response<v1::DescribeInstanceRefreshResponse>, Status> {
        require_caller(&request, Role::Operator)?;
        Ok(Response::new(self.rollouts()?.describe().await?))
    }

    async fn update_group(
        &self,
        request: Request<v1::UpdateGroupRequest>,
    ) -> Result<Response<v1::UpdateGroupResponse>, Status> {
        require_caller(&request, Role::Operator)?;
        let answer = self.rollouts()?.update_group(request.into_inner()).await?;
        Ok(Response::new(answer))
    }

    async fn set_instance_protection(
        &self,
        request: Request<v1::SetInstanceProtectionRequest>,
    ) -> Result<Response<v1::SetInstanceProtectionResponse>, Status> {
        require_caller(&request, Role::Operator)?;
        let protected = self
            .rollouts()?
            .set_protection(request.into_inner())
            .await?;
        Ok(Response::new(v1::SetInstanceProtectionResponse {
            protected,
        }))
    }
}
