//! The `Cloud` trait: launch, terminate and list the group's instances. The provider is the
//! source of truth for what exists; the controller keeps no count of its own.

use std::future::Future;
use std::time::SystemTime;

/// What the provider says of one instance of the group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CloudInstance {
    pub instance_id: String,
    pub state: InstanceState,
    pub launched_at: SystemTime,
    /// Where the instance is (an availability zone; `local` for processes).
    pub zone: String,
    /// Why it is not running, when the provider says (EC2's state reason; a local agent's exit
    /// status and last log line).
    pub state_reason: Option<String>,
    /// Where its application serves, `host:port`, when the group runs one (what a load
    /// balancer sends requests to).
    pub app_address: Option<String>,
    /// The token of the launch that made it, where the provider keeps it (EC2: the
    /// `autoscaler:launch` tag): how a controller knows a launch whose answer it never had took
    /// effect.
    pub launch_token: Option<String>,
    /// The launch specification version it was launched with, where the provider keeps it
    /// (EC2: the `autoscaler:version` tag; the local instance record).
    pub version: Option<String>,
}

pub use autoscaler_policy::InstanceState;

use crate::spec::{LaunchSpec, SpecVersion};

/// The kinds of provider failure the controller tells apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CloudErrorKind {
    Throttled,
    /// 5xx or a transport failure.
    Unavailable,
    Timeout,
    InsufficientCapacity,
    /// The instance does not exist or is not this group's.
    NotFound,
    Other,
}

impl CloudErrorKind {
    /// Every kind, for counters that list each one, at zero too.
    pub const ALL: [CloudErrorKind; 6] = [
        CloudErrorKind::Throttled,
        CloudErrorKind::Unavailable,
        CloudErrorKind::Timeout,
        CloudErrorKind::InsufficientCapacity,
        CloudErrorKind::NotFound,
        CloudErrorKind::Other,
    ];

    /// The kebab-case name used in metrics labels and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            CloudErrorKind::Throttled => "throttled",
            CloudErrorKind::Unavailable => "unavailable",
            CloudErrorKind::Timeout => "timeout",
            CloudErrorKind::InsufficientCapacity => "insufficient-capacity",
            CloudErrorKind::NotFound => "not-found",
            CloudErrorKind::Other => "other",
        }
    }
}

/// A failed provider call.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
#[error("{}: {message}", kind.as_str())]
pub struct CloudError {
    pub kind: CloudErrorKind,
    pub message: String,
}

impl CloudError {
    pub fn new(kind: CloudErrorKind, message: impl Into<String>) -> CloudError {
        CloudError {
            kind,
            message: message.into(),
        }
    }

    /// Worth trying again after a pause.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self.kind,
            CloudErrorKind::Throttled
                | CloudErrorKind::Unavailable
                | CloudErrorKind::Timeout
                | CloudErrorKind::InsufficientCapacity
        )
    }
}

/// A place instances come from.
pub trait Cloud: Send + Sync + 'static {
    /// Every instance of the group that is not terminated.
    fn list(&self) -> impl Future<Output = Result<Vec<CloudInstance>, CloudError>> + Send;

    /// Launches one instance for each token; returns their ids, in the order of `tokens` (the
    /// first ones only, when a launch fails after others succeeded). A token is the launch's
    /// idempotency key: asked again (after a timeout, or by a new leader) a provider that keeps
    /// tokens returns the instance it already launched for it rather than a second one. EC2 does
    /// (the ClientToken); the local provider need not: its launches are never in doubt, a
    /// process runs and is listed or the call failed.
    fn launch(
        &self,
        tokens: &[String],
    ) -> impl Future<Output = Result<Vec<String>, CloudError>> + Send;

    /// Terminates the given instances of the group; an id that is not the group's is refused
    /// with `NotFound` and nothing is terminated.
    fn terminate(
        &self,
        instance_ids: &[String],
    ) -> impl Future<Output = Result<(), CloudError>> + Send;

    /// `launch` on a version of the group's launch specification: a provider that keeps
    /// versions launches with its settings and lists its instances with the version. One that
    /// does not (a test's scripted cloud) launches as `launch` does, its instances without one.
    fn launch_with(
        &self,
        tokens: &[String],
        spec: &SpecVersion,
    ) -> impl Future<Output = Result<Vec<String>, CloudError>> + Send {
        let _ = spec;
        self.launch(tokens)
    }

    /// Whether this provider can launch `spec`: the settings it has no use for are refused,
    /// named.
    fn check_spec(&self, spec: &LaunchSpec) -> Result<(), SpecError> {
        let _ = spec;
        Ok(())
    }
}

/// A launch specification a provider cannot launch, naming the field.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("`{field}` {problem}")]
pub struct SpecError {
    pub field: &'static str,
    pub problem: String,
}

impl SpecError {
    pub fn new(field: &'static str, problem: impl Into<String>) -> SpecError {
        SpecError {
            field,
            problem: problem.into(),
        }
    }
}

/// A provider's answer, boxed: what [`DynCloud`] returns.
pub type CloudFuture<'a, T> =
    std::pin::Pin<Box<dyn Future<Output = Result<T, CloudError>> + Send + 'a>>;

/// [`Cloud`] as an object, for a caller that picks its provider at run time (the daemon's
/// platforms): every `Cloud` is one.
pub trait DynCloud: Send + Sync + 'static {
    fn list_boxed(&self) -> CloudFuture<'_, Vec<CloudInstance>>;
    fn launch_boxed<'a>(&'a self, tokens: &'a [String]) -> CloudFuture<'a, Vec<String>>;
    fn terminate_boxed<'a>(&'a self, instance_ids: &'a [String]) -> CloudFuture<'a, ()>;
    fn launch_with_boxed<'a>(
        &'a self,
        tokens: &'a [String],
        spec: &'a SpecVersion,
    ) -> CloudFuture<'a, Vec<String>>;
    fn check_spec_dyn(&self, spec: &LaunchSpec) -> Result<(), SpecError>;
}

impl<C: Cloud> DynCloud for C {
    fn list_boxed(&self) -> CloudFuture<'_, Vec<CloudInstance>> {
        Box::pin(self.list())
    }

    fn launch_boxed<'a>(&'a self, tokens: &'a [String]) -> CloudFuture<'a, Vec<String>> {
        Box::pin(self.launch(tokens))
    }

    fn terminate_boxed<'a>(&'a self, instance_ids: &'a [String]) -> CloudFuture<'a, ()> {
        Box::pin(self.terminate(instance_ids))
    }

    fn launch_with_boxed<'a>(
        &'a self,
        tokens: &'a [String],
        spec: &'a SpecVersion,
    ) -> CloudFuture<'a, Vec<String>> {
        Box::pin(self.launch_with(tokens, spec))
    }

    fn check_spec_dyn(&self, spec: &LaunchSpec) -> Result<(), SpecError> {
        self.check_spec(spec)
    }
}

/// Any provider, behind one type: the controller of a platform chosen at run time.
#[derive(Clone)]
pub struct AnyCloud(pub std::sync::Arc<dyn DynCloud>);

impl std::fmt::Debug for AnyCloud {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AnyCloud").finish_non_exhaustive()
    }
}

impl Cloud for AnyCloud {
    async fn list(&self) -> Result<Vec<CloudInstance>, CloudError> {
        self.0.list_boxed().await
    }

    async fn launch(&self, tokens: &[String]) -> Result<Vec<String>, CloudError> {
        self.0.launch_boxed(tokens).await
    }

    async fn terminate(&self, instance_ids: &[String]) -> Result<(), CloudError> {
        self.0.terminate_boxed(instance_ids).await
    }

    async fn launch_with(
        &self,
        tokens: &[String],
        spec: &SpecVersion,
    ) -> Result<Vec<String>, CloudError> {
        self.0.launch_with_boxed(tokens, spec).await
    }

    fn check_spec(&self, spec: &LaunchSpec) -> Result<(), SpecError> {
        self.0.check_spec_dyn(spec)
    }
}
