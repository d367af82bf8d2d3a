//! An operator's client of the daemon: its Status service and the Operator service (steering an
//! agent's load through the monitor), over mutual TLS with the operator's certificate, with
//! short timeouts (the monitor may be out of reach).

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use autoscaler_proto::auth::{AttachToken, Credentials, Token};
use autoscaler_proto::tls::{Role, TlsMaterial, Transport};
use autoscaler_proto::v1;
use autoscaler_proto::v1::operator_client::OperatorClient;
use autoscaler_proto::v1::status_client::StatusClient;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

const TIMEOUT: Duration = Duration::from_secs(2);

/// An instance's load as the tables print it: `42.0%`, or `-` before its first poll.
pub fn load_text(load_percent: Option<f64>) -> String {
    load_percent.map_or("-".to_string(), |load| format!("{load:.1}%"))
}

/// The operator's credentials from a token and a TLS directory (`ca.pem`, `operator.pem`,
/// `operator.key`), or plaintext when asked for.
pub fn credentials(token: &str, tls_dir: Option<&Path>) -> anyhow::Result<Credentials> {
    let token = Token::new(token).context("group token")?;
    let transport = match tls_dir {
        Some(dir) => Transport::tls(TlsMaterial::load(dir, Role::Operator)?),
        None => Transport::Plaintext,
    };
    Ok(Credentials::new(token, transport))
}

/// A connection to one monitor, for both services.
pub struct Daemon {
    status: StatusClient<InterceptedService<Channel, AttachToken>>,
    operator: OperatorClient<InterceptedService<Channel, AttachToken>>,
}

impl Daemon {
    /// A client of the monitor at `address` (`host:port`); it connects on first use.
    pub fn new(address: &str, credentials: &Credentials) -> anyhow::Result<Daemon> {
        let channel = credentials
            .channel(address, Role::Monitor, TIMEOUT)
            .map_err(anyhow::Error::msg)?;
        Ok(Daemon {
            status: StatusClient::with_interceptor(channel.clone(), credentials.attach()),
            operator: OperatorClient::with_interceptor(channel, credentials.attach()),
        })
    }

    /// `GetStatus` with only the decisions after `decisions_after`.
    pub async fn status_after(
        &mut self,
        decisions_after: u64,
    ) -> anyhow::Result<v1::GetStatusResponse> {
        let call = self
            .status
            .get_status(v1::GetStatusRequest { decisions_after });
        Ok(tokio::time::timeout(TIMEOUT, call)
            .await
            .context("GetStatus timed out")??
            .into_inner())
    }

    /// Sets one instance's load target through the monitor.
    pub async fn set_load_target(
        &mut self,
        instance_id: &str,
        target_percent: f64,
        hold: bool,
    ) -> anyhow::Result<f64> {
        let call = self
            .operator
            .set_load_target(v1::OperatorLoadTargetRequest {
                instance_id: instance_id.to_string(),
                target_percent,
                hold,
            });
        Ok(tokio::time::timeout(TIMEOUT, call)
            .await
            .context("SetLoadTarget timed out")??
            .into_inner()
            .current_load_percent)
    }
}

/// `GetStatus` at `address` (`host:port`), all kept decisions.
pub async fn get_status(
    address: &str,
    credentials: &Credentials,
) -> anyhow::Result<v1::GetStatusResponse> {
    Daemon::new(address, credentials)?.status_after(0).await
}
