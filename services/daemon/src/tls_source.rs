//! Where the daemon's TLS material comes from (a directory, made in the state dir, read from
//! SSM, or plaintext when asked), and the checks of the flags that name what agents are told
//! (`--advertise`, `--tls-dir`) before anything is launched.

use std::path::{Path, PathBuf};

use autoscaler_proto::tls::{self, Role, TlsMaterial, Transport};

use crate::config::{DaemonConfig, DaemonConfigError, ProviderSection};
use crate::daemon::DaemonError;

/// Where the daemon's TLS material comes from.
#[derive(Clone, Debug, Default)]
pub enum TlsSource {
    /// Local provider: `<state-dir>/tls`, made there (a new group CA) if absent. EC2 provider:
    /// the SSM parameters `up` wrote (`/autoscaler/<group>/tls/...`).
    #[default]
    Auto,
    /// A directory with `ca.pem`, `monitor.pem` and `monitor.key` (and, for local agents,
    /// `agent.pem` and `agent.key`).
    Dir(PathBuf),
    /// No TLS: refused with the EC2 provider; local runs only, and only when asked for.
    Plaintext,
}

impl TlsSource {
    /// The monitor's transport if its material is already there (never made): what a standby
    /// answers with before it leads. `None` when there is none yet, or it cannot be read.
    pub async fn existing(
        &self,
        group: &str,
        made_in: Option<&Path>,
        sdk: Option<&aws_config::SdkConfig>,
    ) -> Option<Transport> {
        match (self, made_in, sdk) {
            (TlsSource::Plaintext, _, _) => Some(Transport::Plaintext),
            (TlsSource::Dir(dir), _, _) => TlsMaterial::load(dir, Role::Monitor)
                .ok()
                .map(Transport::tls),
            (TlsSource::Auto, Some(dir), _) => TlsMaterial::load(dir, Role::Monitor)
                .ok()
                .map(Transport::tls),
            (TlsSource::Auto, None, Some(sdk)) => autoscaler_aws::tls_material(
                &autoscaler_aws::Parameters::new(sdk),
                &autoscaler_aws::GroupParameters::new(group),
                Role::Monitor,
            )
            .await
            .ok()
            .map(Transport::tls),
            (TlsSource::Auto, None, None) => None,
        }
    }

    /// The monitor's transport, resolved in one place for every way the daemon runs. `Auto`
    /// makes the material in `made_in` when given (the local provider's `<state-dir>/tls`),
    /// else reads it from SSM with `sdk` (on AWS), else is an error. Returns the directory
    /// the material is in, when there is one, for local agents.
    pub async fn resolve(
        &self,
        group: &str,
        made_in: Option<&Path>,
        sdk: Option<&aws_config::SdkConfig>,
    ) -> Result<(Transport, Option<PathBuf>), DaemonError> {
        match (self, made_in, sdk) {
            (TlsSource::Plaintext, _, _) => {
                tracing::warn!(
                    "plaintext gRPC, as asked: no TLS between the monitor and its agents"
                );
                Ok((Transport::Plaintext, None))
            }
            (TlsSource::Dir(dir), _, _) => Ok((
                Transport::tls(TlsMaterial::load(dir, Role::Monitor)?),
                Some(dir.clone()),
            )),
            (TlsSource::Auto, Some(dir), _) => {
                if tls::ensure_dir(dir, group)? {
                    tracing::info!(dir = %dir.display(), "made a new group CA and its certificates");
                }
                Ok((
                    Transport::tls(TlsMaterial::load(dir, Role::Monitor)?),
                    Some(dir.to_path_buf()),
                ))
            }
            (TlsSource::Auto, None, Some(sdk)) => {
                let material = autoscaler_aws::tls_material(
                    &autoscaler_aws::Parameters::new(sdk),
                    &autoscaler_aws::GroupParameters::new(group),
                    Role::Monitor,
                )
                .await
                .map_err(|error| DaemonError::TlsAt {
                    place: "the group's material in SSM (run `cargo xtask up`, which makes it)"
                        .to_string(),
                    source: Box::new(error),
                })?;
                Ok((Transport::tls(material), None))
            }
            (TlsSource::Auto, None, None) => Err(DaemonError::NoTls(
                "no TLS material, and no provider to make it or AWS to read it from: pass --tls-dir DIR or --plaintext",
            )),
        }
    }
}

/// Checks what the daemon tells its agents before it launches any: the address they reach the
/// monitor at (`--advertise`), as an agent will read it, and a `--tls-dir` holding the material
/// the monitor and (for the local provider, whose agents read it from there) the agents need.
/// Each error names the flag or the file; nothing is launched on a setting that cannot work.
pub fn check_flags(
    config: &DaemonConfig,
    advertise: &str,
    tls: &TlsSource,
) -> Result<(), DaemonError> {
    let bad = |why: String| {
        DaemonError::Config(DaemonConfigError::Parse(format!(
            "--advertise {advertise:?}: {why}; it must be the HOST:PORT agents reach the monitor at"
        )))
    };
    let uri: tonic::transport::Uri = format!("http://{}", advertise.trim())
        .parse()
        .map_err(|error| bad(format!("{error}")))?;
    let authority = uri
        .authority()
        .filter(|_| uri.path() == "/" && uri.query().is_none())
        .ok_or_else(|| bad("not a HOST:PORT".to_string()))?;
    match authority.port_u16() {
        None => return Err(bad("no port".to_string())),
        Some(0) => return Err(bad("port 0 is no port an agent can reach".to_string())),
        Some(_) => {}
    }
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    if host.is_empty() {
        return Err(bad("no host".to_string()));
    }
    if host
        .parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.is_unspecified())
    {
        return Err(bad(format!("{host} is no address an agent can reach")));
    }
    if let TlsSource::Dir(dir) = tls {
        TlsMaterial::load(dir, Role::Monitor).map_err(|error| DaemonError::TlsAt {
            place: format!("--tls-dir {}", dir.display()),
            source: Box::new(error),
        })?;
        if matches!(config.provider, ProviderSection::Local(_)) {
            TlsMaterial::load(dir, Role::Agent).map_err(|error| DaemonError::TlsAt {
                place: format!("--tls-dir {}: the local agents' material", dir.display()),
                source: Box::new(error),
            })?;
        }
    }
    Ok(())
}
