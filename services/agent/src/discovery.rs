//! Where the monitor is. The agent asks a [`MonitorLocator`] for the monitor's address whenever it
//! (re)registers: a fixed address from a flag ([`StaticLocator`]), or the parameter the monitor
//! publishes in SSM Parameter Store ([`SsmLocator`]), or the file the leading daemon of a local
//! group writes in its state dir ([`FileLocator`]), read again at every registration so an agent
//! follows a monitor that restarted elsewhere, or a standby that took over.

use std::future::Future;
use std::pin::Pin;

/// A failure to find the monitor; the caller retries with backoff.
#[derive(Debug, thiserror::Error)]
#[error("cannot locate the monitor: {0}")]
pub struct LocateError(pub String);

/// The monitor's gRPC endpoint, for example `http://10.0.1.5:50051`.
pub type MonitorEndpoint = String;

/// Finds the monitor. Called before every registration attempt, so a source can return a new
/// address after the monitor moved.
pub trait MonitorLocator: Send + Sync + 'static {
    fn locate(
        &self,
    ) -> Pin<Box<dyn Future<Output = Result<MonitorEndpoint, LocateError>> + Send + '_>>;
}

/// A monitor at a fixed address, from a flag or config.
#[derive(Clone, Debug)]
pub struct StaticLocator {
    endpoint: MonitorEndpoint,
}

impl StaticLocator {
    /// Accepts `host:port` or `http://host:port`.
    pub fn new(address: &str) -> Result<StaticLocator, LocateError> {
        let address = address.trim();
        let endpoint = if address.contains("://") {
            address.to_string()
        } else {
            format!("http://{address}")
        };
        endpoint
            .parse::<tonic::transport::Uri>()
            .map_err(|error| LocateError(format!("monitor address {address:?}: {error}")))?;
        Ok(StaticLocator { endpoint })
    }
}

impl MonitorLocator for StaticLocator {
    fn locate(
        &self,
    ) -> Pin<Box<dyn Future<Output = Result<MonitorEndpoint, LocateError>> + Send + '_>> {
        Box::pin(std::future::ready(Ok(self.endpoint.clone())))
    }
}

/// The monitor's address from a file (one line, `host:port`): the leading daemon of a local group
/// writes its address there when it takes the lease (`<state-dir>/leader`).
#[derive(Clone, Debug)]
pub struct FileLocator {
    path: std::path::PathBuf,
}

impl FileLocator {
    /// Checks that the file holds an address now (an agent started with a bad one stops at
    /// once, saying why, as with a bad `--monitor`); it is read again at every registration.
    pub fn new(path: impl Into<std::path::PathBuf>) -> Result<FileLocator, LocateError> {
        let path = path.into();
        let text = std::fs::read(&path)
            .map_err(|error| LocateError(format!("{}: {error}", path.display())))?;
        let text = String::from_utf8_lossy(&text[..text.len().min(1024)]);
        StaticLocator::new(&text)?;
        Ok(FileLocator { path })
    }
}

impl MonitorLocator for FileLocator {
    fn locate(
        &self,
    ) -> Pin<Box<dyn Future<Output = Result<MonitorEndpoint, LocateError>> + Send + '_>> {
        Box::pin(async move {
            use tokio::io::AsyncReadExt;
            // A real one is a line; more is not an address.
            let mut text = String::new();
            tokio::fs::File::open(&self.path)
                .await
                .map_err(|error| LocateError(format!("{}: {error}", self.path.display())))?
                .take(1024)
                .read_to_string(&mut text)
                .await
                .map_err(|error| LocateError(format!("{}: {error}", self.path.display())))?;
            Ok(StaticLocator::new(&text)?.endpoint)
        })
    }
}

/// The monitor's address from SSM Parameter Store (`/autoscaler/<group>/monitor`, `host:port`).
#[derive(Clone, Debug)]
pub struct SsmLocator {
    parameters: autoscaler_aws::Parameters,
    name: String,
}

impl SsmLocator {
    pub fn new(parameters: autoscaler_aws::Parameters, name: String) -> SsmLocator {
        SsmLocator { parameters, name }
    }
}

impl MonitorLocator for SsmLocator {
    fn locate(
        &self,
    ) -> Pin<Box<dyn Future<Output = Result<MonitorEndpoint, LocateError>> + Send + '_>> {
        Box::pin(async move {
            let address = self
                .parameters
                .get(&self.name)
                .await
                .map_err(|error| LocateError(error.to_string()))?;
            let locator = StaticLocator::new(&address)?;
            Ok(locator.endpoint)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn static_locator_adds_the_scheme() {
        let locator = StaticLocator::new("127.0.0.1:50051").unwrap();
        assert_eq!(locator.locate().await.unwrap(), "http://127.0.0.1:50051");
        let locator = StaticLocator::new("http://monitor:1").unwrap();
        assert_eq!(locator.locate().await.unwrap(), "http://monitor:1");
        assert!(StaticLocator::new("http://bad host:1").is_err());
    }
}
