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

    /// `GetActivity`: the activity history since `since_unix_ms`, oldest first.
    pub async fn activity(
        &mut self,
        since_unix_ms: i64,
    ) -> anyhow::Result<Vec<v1::DecisionRecord>> {
        let call = self.status.get_activity(v1::GetActivityRequest {
            since_unix_ms,
            limit: 0,
        });
        Ok(tokio::time::timeout(TIMEOUT, call)
            .await
            .context("GetActivity timed out")??
            .into_inner()
            .records)
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

impl Daemon {
    /// Changes the bounds and sets the desired capacity once.
    pub async fn update_group(
        &mut self,
        request: v1::UpdateGroupRequest,
    ) -> anyhow::Result<v1::UpdateGroupResponse> {
        let call = self.operator.update_group(request);
        Ok(tokio::time::timeout(REFRESH_TIMEOUT, call)
            .await
            .context("UpdateGroup timed out")??
            .into_inner())
    }

    /// Makes `spec` the group's current launch specification.
    pub async fn update_spec(
        &mut self,
        spec: v1::LaunchSpec,
    ) -> anyhow::Result<v1::LaunchSpecVersion> {
        let call = self
            .operator
            .update_launch_spec(v1::UpdateLaunchSpecRequest { spec: Some(spec) });
        tokio::time::timeout(TIMEOUT, call)
            .await
            .context("UpdateLaunchSpec timed out")??
            .into_inner()
            .current
            .context("UpdateLaunchSpec answered without the version")
    }

    /// Starts an instance refresh.
    pub async fn start_refresh(
        &mut self,
        request: v1::StartInstanceRefreshRequest,
    ) -> anyhow::Result<v1::InstanceRefresh> {
        let call = self.operator.start_instance_refresh(request);
        tokio::time::timeout(REFRESH_TIMEOUT, call)
            .await
            .context("StartInstanceRefresh timed out")??
            .into_inner()
            .refresh
            .context("StartInstanceRefresh answered without the refresh")
    }

    /// Cancels the running refresh (`rollback`: rolls it back instead).
    pub async fn stop_refresh(&mut self, rollback: bool) -> anyhow::Result<v1::InstanceRefresh> {
        let answer = if rollback {
            let call = self
                .operator
                .rollback_instance_refresh(v1::RollbackInstanceRefreshRequest {});
            tokio::time::timeout(REFRESH_TIMEOUT, call).await
        } else {
            let call = self
                .operator
                .cancel_instance_refresh(v1::CancelInstanceRefreshRequest {});
            tokio::time::timeout(REFRESH_TIMEOUT, call).await
        };
        answer
            .context("the refresh call timed out")??
            .into_inner()
            .refresh
            .context("answered without the refresh")
    }

    /// The launch specification's versions and the running (or last) refresh.
    pub async fn describe_refresh(
        &mut self,
    ) -> anyhow::Result<v1::DescribeInstanceRefreshResponse> {
        let call = self
            .operator
            .describe_instance_refresh(v1::DescribeInstanceRefreshRequest {});
        Ok(tokio::time::timeout(REFRESH_TIMEOUT, call)
            .await
            .context("DescribeInstanceRefresh timed out")??
            .into_inner())
    }
}

/// How long a rollout call may take: the controller answers between two evaluations.
const REFRESH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(35);

/// A span of time as people write it: `90s`, `30m`, `1h`, `7d` (a bare number is seconds).
pub fn parse_span(text: &str) -> anyhow::Result<std::time::Duration> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .with_context(|| format!("{text:?} is not a span of time (say 30m, 1h, 7d)"))?;
    let seconds = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        _ => anyhow::bail!("{text:?}: the unit is one of s, m, h, d"),
    };
    number
        .checked_mul(seconds)
        .map(std::time::Duration::from_secs)
        .with_context(|| format!("{text:?} is too long a span"))
}

/// One record of the activity history, as `status --activity` prints it.
pub fn print_activity(record: &v1::DecisionRecord) {
    let seconds = record.at_unix_ms.div_euclid(1_000);
    let (days, day_seconds) = (seconds.div_euclid(86_400), seconds.rem_euclid(86_400));
    println!(
        "{} {:02}:{:02}:{:02}Z  term {} ({})  {}{}",
        civil_date(days),
        day_seconds / 3_600,
        day_seconds % 3_600 / 60,
        day_seconds % 60,
        record.epoch,
        record.leader,
        record.summary,
        if record.repeated > 0 {
            format!(" (x{})", record.repeated + 1)
        } else {
            String::new()
        }
    );
    for outcome in &record.outcome {
        println!("      -> {outcome}");
    }
}

/// The proleptic Gregorian date of a day counted from 1970-01-01 (Howard Hinnant's algorithm).
fn civil_date(days: i64) -> String {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

/// `GetStatus` at `address` (`host:port`), all kept decisions.
pub async fn get_status(
    address: &str,
    credentials: &Credentials,
) -> anyhow::Result<v1::GetStatusResponse> {
    Daemon::new(address, credentials)?.status_after(0).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_and_dates_read_as_people_write_them() {
        assert_eq!(parse_span("90s").unwrap().as_secs(), 90);
        assert_eq!(parse_span("30m").unwrap().as_secs(), 1_800);
        assert_eq!(parse_span("1h").unwrap().as_secs(), 3_600);
        assert_eq!(parse_span("7d").unwrap().as_secs(), 604_800);
        assert_eq!(parse_span("5").unwrap().as_secs(), 5);
        for bad in ["", "h", "1y", "-1h", "1.5h", "99999999999999999999d"] {
            assert!(parse_span(bad).is_err(), "{bad:?}");
        }
        assert_eq!(civil_date(0), "1970-01-01");
        assert_eq!(civil_date(20_791), "2026-12-04");
        assert_eq!(civil_date(-1), "1969-12-31");
    }
}
