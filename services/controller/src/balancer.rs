//! The `Balancer` trait: the load balancer in front of the group (HAProxy locally, an Elastic
//! Load Balancing target group on AWS). The controller registers an instance when it enters
//! service and, before any termination, deregisters it and waits for its requests in flight to
//! drain, as EC2 Auto Scaling does with a target group.

use std::future::Future;
use std::pin::Pin;

use crate::cloud::CloudError;

/// An instance as the balancer sends it requests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub instance_id: String,
    /// Where its application listens, `host:port` (the local provider's own port per instance;
    /// on EC2 the private address and the application's port).
    pub address: String,
}

/// A target's state, as the balancer reports it (the names of ELB's target health states).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TargetState {
    /// Registered, its first health checks not passed yet.
    Initial,
    /// Receives requests.
    Healthy,
    /// Registered, failing its health checks: receives no requests.
    Unhealthy,
    /// Deregistered: receives no new requests, finishing those in flight.
    Draining,
    /// Deregistered and done, or held out of service.
    Unused,
}

impl TargetState {
    pub fn as_str(self) -> &'static str {
        match self {
            TargetState::Initial => "initial",
            TargetState::Healthy => "healthy",
            TargetState::Unhealthy => "unhealthy",
            TargetState::Draining => "draining",
            TargetState::Unused => "unused",
        }
    }
}

/// What the balancer says of one target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetStatus {
    pub instance_id: String,
    pub state: TargetState,
    /// Requests (or connections) in flight to it, when the balancer tells (HAProxy does; ELB
    /// says only whether draining is over).
    pub in_flight: Option<u32>,
    /// The balancer's reason, when it gives one (a failed health check's).
    pub reason: Option<String>,
}

impl TargetStatus {
    /// Whether a target that was deregistered has no request left in flight: the balancer
    /// says it is done (unused), or counts none in flight (HAProxy counts them; a target that
    /// failed its health checks while draining may show as unhealthy).
    pub fn drained(&self) -> bool {
        self.state == TargetState::Unused || self.in_flight == Some(0)
    }
}

/// A balancer's answer, some time later.
pub type Pending<'a, T> = Pin<Box<dyn Future<Output = Result<T, CloudError>> + Send + 'a>>;

/// The load balancer in front of the group. Every call is bounded in time by its
/// implementation, and idempotent. Object-safe: the daemon picks one at run time, and a
/// controller without one has none (`Option<Arc<dyn Balancer>>`).
pub trait Balancer: Send + Sync + 'static {
    /// Every target it knows of this group, registered or draining.
    fn targets(&self) -> Pending<'_, Vec<TargetStatus>>;

    /// Starts sending requests to `target` (once its health checks pass).
    fn register<'a>(&'a self, target: &'a Target) -> Pending<'a, ()>;

    /// Stops sending new requests to the instance; those in flight finish (draining).
    fn deregister<'a>(&'a self, instance_id: &'a str) -> Pending<'a, ()>;

    /// Forgets the instance altogether, once it is drained or gone.
    fn remove<'a>(&'a self, instance_id: &'a str) -> Pending<'a, ()>;
}
