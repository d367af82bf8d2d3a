//! A small IMDSv2 client: a session token by PUT, then metadata by GET, each call bounded by a
//! timeout. Small on purpose (plain HTTP/1.1 over a TCP stream) so the agent stays small, and
//! tolerant of emulators that do not echo the token's TTL header.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The instance metadata service.
#[derive(Clone, Debug)]
pub struct Imds {
    /// `host:port`, normally `169.254.169.254:80`.
    pub address: String,
    pub timeout: Duration,
}

impl Default for Imds {
    fn default() -> Self {
        Imds {
            address: std::env::var("AWS_EC2_METADATA_SERVICE_ENDPOINT")
                .ok()
                .map(|endpoint| {
                    endpoint
                        .trim_start_matches("http://")
                        .trim_end_matches('/')
                        .to_string()
                })
                .unwrap_or_else(|| "169.254.169.254:80".to_string()),
            timeout: Duration::from_secs(2),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ImdsError {
    #[error("instance metadata at {address}: {message}")]
    Failed { address: String, message: String },
}

impl Imds {
    fn fail(&self, message: impl Into<String>) -> ImdsError {
        ImdsError::Failed {
            address: self.address.clone(),
            message: message.into(),
        }
    }

    async fn request(&self, head: String) -> Result<String, ImdsError> {
        let exchange = async {
            let mut stream = TcpStream::connect(&self.address).await?;
            stream.write_all(head.as_bytes()).await?;
            let mut response = Vec::new();
            stream.take(64 * 1024).read_to_end(&mut response).await?;
            Ok::<_, std::io::Error>(response)
        };
        let response = tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| self.fail(format!("no answer within {:?}", self.timeout)))?
            .map_err(|error| self.fail(error.to_string()))?;
        let response = String::from_utf8_lossy(&response);
        let (head, body) = response
            .split_once("\r\n\r\n")
            .ok_or_else(|| self.fail("malformed HTTP response"))?;
        let status = head.split_whitespace().nth(1).unwrap_or("");
        if status != "200" {
            return Err(self.fail(format!("HTTP status {status}")));
        }
        Ok(body.trim().to_string())
    }

    /// A session token valid for six hours.
    pub async fn token(&self) -> Result<String, ImdsError> {
        self.request(format!(
            "PUT /latest/api/token HTTP/1.1\r\nHost: {}\r\nX-aws-ec2-metadata-token-ttl-seconds: 21600\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.address
        ))
        .await
    }

    /// One metadata item, for example `instance-id` or `local-ipv4`.
    pub async fn get(&self, token: &str, item: &str) -> Result<String, ImdsError> {
        self.request(format!(
            "GET /latest/meta-data/{item} HTTP/1.1\r\nHost: {}\r\nX-aws-ec2-metadata-token: {token}\r\nConnection: close\r\n\r\n",
            self.address
        ))
        .await
    }

    /// This instance's id and private IPv4 address.
    pub async fn identity(&self) -> Result<(String, String), ImdsError> {
        let token = self.token().await?;
        let instance_id = self.get(&token, "instance-id").await?;
        let private_ip = self.get(&token, "local-ipv4").await?;
        Ok((instance_id, private_ip))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// A fake metadata service that insists on the token, as IMDSv2 does.
    async fn fake_imds() -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            loop {
                let (mut socket, _) = listener.accept().await.unwrap();
                let mut buffer = vec![0u8; 4096];
                let read = socket.read(&mut buffer).await.unwrap();
                let request = String::from_utf8_lossy(&buffer[..read]).to_string();
                let (status, body) = if request.starts_with("PUT /latest/api/token") {
                    ("200 OK", "secret-session")
                } else if !request.contains("X-aws-ec2-metadata-token: secret-session") {
                    ("401 Unauthorized", "")
                } else if request.starts_with("GET /latest/meta-data/instance-id") {
                    ("200 OK", "i-0123456789abcdef0")
                } else if request.starts_with("GET /latest/meta-data/local-ipv4") {
                    ("200 OK", "10.0.1.7")
                } else {
                    ("404 Not Found", "")
                };
                let response = format!(
                    "HTTP/1.1 {status}\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
                socket.write_all(response.as_bytes()).await.unwrap();
            }
        });
        address
    }

    #[tokio::test]
    async fn identity_comes_from_imdsv2() {
        let imds = Imds {
            address: fake_imds().await,
            timeout: Duration::from_secs(2),
        };
        let (instance_id, ip) = imds.identity().await.unwrap();
        assert_eq!(instance_id, "i-0123456789abcdef0");
        assert_eq!(ip, "10.0.1.7");
        assert!(imds.get("wrong-token", "instance-id").await.is_err());
    }

    #[tokio::test]
    async fn a_silent_metadata_service_times_out() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let imds = Imds {
            address: listener.local_addr().unwrap().to_string(),
            timeout: Duration::from_millis(200),
        };
        let error = imds.token().await.unwrap_err().to_string();
        assert!(error.contains("no answer"), "{error}");
        drop(listener);
    }
}
