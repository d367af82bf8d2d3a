//! This instance's identity from the instance metadata service (IMDSv2), through the SDK's own
//! client (`aws_config::imds`): a session token, then metadata, every call bounded in time. The
//! SDK resolves the endpoint (`AWS_EC2_METADATA_SERVICE_ENDPOINT`, the profile), as it does for
//! credentials.

use std::time::Duration;

use aws_config::imds::Client;
use aws_sdk_ssm::error::DisplayErrorContext;

/// The instance metadata service.
#[derive(Clone, Debug)]
pub struct Imds {
    client: Client,
}

/// Why the metadata service could not say who this instance is.
#[derive(Debug, thiserror::Error)]
#[error("instance metadata: {0}")]
pub struct ImdsError(String);

impl Default for Imds {
    /// The SDK's endpoint, each attempt bounded by 2 s.
    fn default() -> Self {
        Imds {
            client: bounded(Client::builder(), Duration::from_secs(2)).build(),
        }
    }
}

/// Timeouts and retries for a service that answers in milliseconds when it is there at all, and
/// the HTTP client of every AWS call.
fn bounded(
    builder: aws_config::imds::client::Builder,
    timeout: Duration,
) -> aws_config::imds::client::Builder {
    let provider = aws_config::provider_config::ProviderConfig::default()
        .with_http_client(crate::http_client());
    builder
        .configure(&provider)
        .connect_timeout(timeout)
        .read_timeout(timeout)
        .operation_attempt_timeout(timeout)
        .operation_timeout(timeout * 3)
        .max_attempts(3)
}

impl Imds {
    /// The service at `endpoint` (`http://host:port`), each attempt bounded by `timeout`.
    pub fn at(endpoint: &str, timeout: Duration) -> Result<Imds, ImdsError> {
        let builder = Client::builder()
            .endpoint(endpoint)
            .map_err(|error| ImdsError(format!("endpoint {endpoint}: {error}")))?;
        Ok(Imds {
            client: bounded(builder, timeout).build(),
        })
    }

    async fn get(&self, item: &str) -> Result<String, ImdsError> {
        let value = self
            .client
            .get(format!("/latest/meta-data/{item}"))
            .await
            .map_err(|error| ImdsError(format!("{item}: {}", DisplayErrorContext(&error))))?;
        Ok(String::from(value).trim().to_string())
    }

    /// This instance's id and private IPv4 address.
    pub async fn identity(&self) -> Result<(String, String), ImdsError> {
        let instance_id = self.get("instance-id").await?;
        let private_ip = self.get("local-ipv4").await?;
        Ok((instance_id, private_ip))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A fake metadata service that insists on the session token, as IMDSv2 does.
    async fn fake_imds() -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            loop {
                let (mut socket, _) = listener.accept().await.unwrap();
                tokio::spawn(async move {
                    let mut buffer = vec![0u8; 8192];
                    loop {
                        let Ok(read) = socket.read(&mut buffer).await else {
                            return;
                        };
                        if read == 0 {
                            return;
                        }
                        let request = String::from_utf8_lossy(&buffer[..read]).to_lowercase();
                        let (status, headers, body) = if request
                            .starts_with("put /latest/api/token")
                        {
                            (
                                "200 OK",
                                "x-aws-ec2-metadata-token-ttl-seconds: 21600\r\n",
                                "secret-session",
                            )
                        } else if !request.contains("x-aws-ec2-metadata-token: secret-session") {
                            ("401 Unauthorized", "", "")
                        } else if request.starts_with("get /latest/meta-data/instance-id") {
                            ("200 OK", "", "i-0123456789abcdef0")
                        } else if request.starts_with("get /latest/meta-data/local-ipv4") {
                            ("200 OK", "", "10.0.1.7")
                        } else {
                            ("404 Not Found", "", "")
                        };
                        let response = format!(
                            "HTTP/1.1 {status}\r\n{headers}Content-Length: {}\r\n\r\n{body}",
                            body.len()
                        );
                        if socket.write_all(response.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        format!("http://{address}")
    }

    #[tokio::test]
    async fn identity_comes_from_imdsv2() {
        let imds = Imds::at(&fake_imds().await, Duration::from_secs(2)).unwrap();
        let (instance_id, ip) = imds.identity().await.unwrap();
        assert_eq!(instance_id, "i-0123456789abcdef0");
        assert_eq!(ip, "10.0.1.7");
        let missing = imds.get("no-such-item").await.unwrap_err().to_string();
        assert!(missing.contains("no-such-item"), "{missing}");
    }

    #[tokio::test]
    async fn a_silent_metadata_service_fails_within_its_bound() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let imds = Imds::at(&endpoint, Duration::from_millis(200)).unwrap();
        let started = std::time::Instant::now();
        let error = imds.identity().await.unwrap_err().to_string();
        assert!(started.elapsed() < Duration::from_secs(10), "{error}");
        assert!(error.contains("instance-id"), "{error}");
        drop(listener);
    }

    #[test]
    fn a_bad_endpoint_is_refused() {
        assert!(Imds::at("not a url", Duration::from_secs(1)).is_err());
    }
}
