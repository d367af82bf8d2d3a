//! The Operator service: steering calls from operators (the demo, rehearsals) that the monitor
//! passes on to an agent under its own certificate, since agents take control calls only from
//! the monitor.

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

/// Serves `autoscaler.v1.Operator` over the monitor's registry.
#[derive(Clone, Debug)]
pub struct OperatorService {
    registry: Arc<Registry>,
}

impl OperatorService {
    pub fn new(registry: Arc<Registry>) -> OperatorService {
        OperatorService { registry }
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
}
