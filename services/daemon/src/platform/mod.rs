//! One room per platform: where a group's instances, balancer and store come from, and how its
//! monitor is found. A platform is built once from the `[provider]` section (`open`, the one
//! place that looks at the provider's kind); `daemon::run` then goes through the same sequence
//! on every platform: stand by on its store, begin a term (`Platform::begin`: the TLS material,
//! the address published, the cloud and the balancer), serve, and when the term ends stand by
//! again.
//!
//! How to add a provider: a module here with a struct implementing `Platform` (its store choice,
//! where a standby finds the TLS material, and `begin`), its `[provider]` section in
//! `config.rs`, and one arm in `open`. Its `Cloud` (and `Balancer`, if any) implement the
//! controller's traits; nothing else in the daemon changes.

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;

use autoscaler_controller::balancer::Balancer;
use autoscaler_controller::cloud::AnyCloud;
use autoscaler_proto::auth::{Credentials, Token};
use autoscaler_store::Store;

use crate::config::{DaemonConfig, ProviderSection};
use crate::daemon::{DaemonError, Leadership, RunOptions};

#[cfg(feature = "ec2")]
pub mod aws;
pub mod local;

/// A platform's answer, some time later.
pub type Pending<'a, T> = Pin<Box<dyn Future<Output = Result<T, DaemonError>> + Send + 'a>>;

/// What the daemon does when a term ends: `true` when the lease went to another daemon (the
/// instances are its now), `false` when the daemon stops for good.
pub type Leaving = Box<dyn FnOnce(bool) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send>;

/// What one term leads with.
pub struct TermParts {
    /// The monitor's transport and the group's token.
    pub credentials: Credentials,
    pub cloud: AnyCloud,
    pub balancer: Option<Arc<dyn Balancer>>,
    pub leaving: Leaving,
}

/// Where a standby finds the TLS material before it leads.
#[derive(Clone, Copy, Debug)]
pub struct TlsPlace<'a> {
    /// The directory the material is made in when there is none (the local state dir's `tls`).
    pub made_in: Option<&'a Path>,
    /// The AWS settings to read it from SSM with.
    pub sdk: Option<&'a aws_config::SdkConfig>,
}

/// A platform: the group's store, where its TLS material is, and what begins a term.
pub trait Platform: Send + Sync {
    /// The group's store, when daemons share one (then a daemon leads only while it holds the
    /// lease).
    fn store(&self) -> Option<Arc<dyn Store>>;

    /// Where the TLS material is found (and made, locally).
    fn tls_place(&self) -> TlsPlace<'_>;

    /// Begins a term (`leadership` is `None` without a store): the TLS material resolved, the
    /// monitor's address published where agents look, the cloud and the balancer opened.
    fn begin<'a>(
        &'a self,
        config: &'a DaemonConfig,
        options: &'a RunOptions,
        token: &'a Token,
        leadership: Option<&'a Leadership>,
    ) -> Pending<'a, TermParts>;
}

/// The platform the config's `[provider]` section names, its store opened.
pub fn open(config: &DaemonConfig, options: &RunOptions) -> Result<Box<dyn Platform>, DaemonError> {
    match &config.provider {
        ProviderSection::Local(section) => Ok(Box::new(local::LocalPlatform::open(
            config, section, options,
        )?)),
        #[cfg(not(feature = "ec2"))]
        ProviderSection::Ec2(_) => Err(DaemonError::Unsupported(
            "this monitor was built without the EC2 provider (the `ec2` feature, on by default)",
        )),
        #[cfg(feature = "ec2")]
        ProviderSection::Ec2(section) => Ok(Box::new(aws::AwsPlatform::open(
            config,
            section.clone(),
            options,
        )?)),
    }
}
