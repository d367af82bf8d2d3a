//! A client of the daemon's Status service, with a short timeout (the monitor may be out of reach).

use std::time::Duration;

use autoscaler_proto::auth::{AttachToken, Token};
use autoscaler_proto::v1;
use autoscaler_proto::v1::status_client::StatusClient;
use tonic::transport::Endpoint;

/// `GetStatus` at `address` (`host:port`) with the group `token`, all kept decisions.
pub async fn get_status(address: &str, token: &str) -> anyhow::Result<v1::GetStatusResponse> {
    get_status_after(address, token, 0).await
}

/// `GetStatus` with only the decisions after `decisions_after`.
pub async fn get_status_after(
    address: &str,
    token: &str,
    decisions_after: u64,
) -> anyhow::Result<v1::GetStatusResponse> {
    let token = Token::new(token)?;
    let timeout = Duration::from_secs(2);
    let channel = Endpoint::from_shared(format!("http://{address}"))?
        .connect_timeout(timeout)
        .timeout(timeout)
        .connect()
        .await?;
    let mut client = StatusClient::with_interceptor(channel, AttachToken::new(&token));
    Ok(client
        .get_status(v1::GetStatusRequest { decisions_after })
        .await?
        .into_inner())
}
