//! What the agent, the monitor and the workflow share of AWS, without the EC2 SDK: one SDK
//! config with attempt and operation timeouts over one HTTP client, SSM Parameter Store helpers
//! and the parameter names of a group, and the instance's identity from IMDSv2. The group's TLS
//! material (feature `tls`) is read through the protocol crate; the controller reads only the
//! AMI's parameter and goes without it.

pub mod imds;

use std::time::Duration;

#[cfg(feature = "tls")]
use autoscaler_proto::tls::{Role, TlsError, TlsMaterial};
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, SdkConfig};
use aws_sdk_ssm::error::{DisplayErrorContext, ProvideErrorMetadata};
use aws_sdk_ssm::types::ParameterType;

/// Timeouts of every SDK call: a hung endpoint must not hang the caller.
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    pub connect: Duration,
    /// One HTTP attempt.
    pub attempt: Duration,
    /// The whole operation, retries included.
    pub operation: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(3),
            attempt: Duration::from_secs(10),
            operation: Duration::from_secs(30),
        }
    }
}

/// The loader both configs start from: timeouts on every call and the standard retry policy
/// (throttling and 5xx, with backoff, three attempts).
/// The one HTTP client of every AWS call (SDK clients, credential providers, IMDS): hyper 1 and
/// rustls with ring, the stack tonic uses, so a program links one TLS library.
pub fn http_client() -> aws_sdk_ssm::config::SharedHttpClient {
    use aws_smithy_http_client::tls;
    aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(
            tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https()
}

fn loader(timeouts: Timeouts) -> aws_config::ConfigLoader {
    aws_config::defaults(BehaviorVersion::latest())
        .http_client(http_client())
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(timeouts.connect)
                .read_timeout(timeouts.attempt)
                .operation_attempt_timeout(timeouts.attempt)
                .operation_timeout(timeouts.operation)
                .build(),
        )
        .retry_config(RetryConfig::standard().with_max_attempts(3))
}

/// The SDK config from the standard chain (profile, region, `AWS_ENDPOINT_URL`, credentials).
pub async fn sdk_config(timeouts: Timeouts) -> SdkConfig {
    loader(timeouts).load().await
}

/// An SDK config for a local emulator (moto server) at `endpoint`: region us-east-1 and dummy
/// credentials.
pub async fn emulator_config(endpoint: &str, timeouts: Timeouts) -> SdkConfig {
    loader(timeouts)
        .endpoint_url(endpoint)
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_ssm::config::Credentials::new(
            "testing", "testing", None, None, "emulator",
        ))
        .load()
        .await
}

/// The SSM parameter names of a group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupParameters {
    pub group: String,
}

impl GroupParameters {
    pub fn new(group: &str) -> GroupParameters {
        GroupParameters {
            group: group.to_string(),
        }
    }

    fn name(&self, leaf: &str) -> String {
        format!("/autoscaler/{}/{leaf}", self.group)
    }

    /// `host:port` of the monitor, published by the monitor at start.
    pub fn monitor(&self) -> String {
        self.name("monitor")
    }

    /// The group's shared token (SecureString).
    pub fn token(&self) -> String {
        self.name("token")
    }

    /// The group CA's certificate (public, but a SecureString like the rest), made by `up`
    /// (`xtask/aws/src/aws.rs`).
    pub fn tls_ca(&self) -> String {
        self.name("tls/ca")
    }

    /// One role's certificate and private key in one text (SecureString): `tls/monitor`,
    /// `tls/agent`, `tls/operator`.
    #[cfg(feature = "tls")]
    pub fn tls_identity(&self, role: Role) -> String {
        self.name(&format!("tls/{}", role.stem()))
    }

    /// Every TLS parameter of the group.
    #[cfg(feature = "tls")]
    pub fn tls_all(&self) -> Vec<String> {
        let mut names = vec![self.tls_ca()];
        names.extend(Role::ALL.map(|role| self.tls_identity(role)));
        names
    }

    /// The custom AMI's id, recorded by `bake-ami`.
    pub fn ami(&self) -> String {
        self.name("ami")
    }

    /// The bucket `bootstrap` delivers the binaries through.
    pub fn bucket(&self) -> String {
        self.name("bucket")
    }

    /// The ARN of the load balancer's target group, recorded by `up --load-balancer`.
    pub fn target_group(&self) -> String {
        self.name("target-group")
    }

    /// The load balancer's DNS name, where clients send requests, recorded by `up
    /// --load-balancer`.
    pub fn load_balancer(&self) -> String {
        self.name("load-balancer")
    }
}

/// A failed Parameter Store call.
#[derive(Debug, thiserror::Error)]
pub enum SsmError {
    #[error("parameter {0} does not exist")]
    NotFound(String),
    #[error("parameter {name}: {message}")]
    Call { name: String, message: String },
}

/// Parameter Store, with task-level methods.
#[derive(Clone, Debug)]
pub struct Parameters {
    client: aws_sdk_ssm::Client,
}

impl Parameters {
    pub fn new(config: &SdkConfig) -> Parameters {
        Parameters {
            client: aws_sdk_ssm::Client::new(config),
        }
    }

    /// The value of `name`, decrypted if it is a SecureString.
    pub async fn get(&self, name: &str) -> Result<String, SsmError> {
        match self
            .client
            .get_parameter()
            .name(name)
            .with_decryption(true)
            .send()
            .await
        {
            Ok(output) => output
                .parameter
                .and_then(|p| p.value)
                .ok_or_else(|| SsmError::NotFound(name.to_string())),
            Err(error) if error.code() == Some("ParameterNotFound") => {
                Err(SsmError::NotFound(name.to_string()))
            }
            Err(error) => Err(SsmError::Call {
                name: name.to_string(),
                message: DisplayErrorContext(&error).to_string(),
            }),
        }
    }

    /// Writes `name`, replacing any value; `secure` stores it as a SecureString.
    pub async fn put(&self, name: &str, value: &str, secure: bool) -> Result<(), SsmError> {
        self.client
            .put_parameter()
            .name(name)
            .value(value)
            .r#type(if secure {
                ParameterType::SecureString
            } else {
                ParameterType::String
            })
            .overwrite(true)
            .send()
            .await
            .map(drop)
            .map_err(|error| SsmError::Call {
                name: name.to_string(),
                message: DisplayErrorContext(&error).to_string(),
            })
    }

    /// Deletes `name`; true if it existed.
    pub async fn delete(&self, name: &str) -> Result<bool, SsmError> {
        match self.client.delete_parameter().name(name).send().await {
            Ok(_) => Ok(true),
            Err(error) if error.code() == Some("ParameterNotFound") => Ok(false),
            Err(error) => Err(SsmError::Call {
                name: name.to_string(),
                message: DisplayErrorContext(&error).to_string(),
            }),
        }
    }
}

/// Why a role's TLS material could not be read from Parameter Store.
#[cfg(feature = "tls")]
#[derive(Debug, thiserror::Error)]
pub enum TlsParameterError {
    #[error(transparent)]
    Ssm(#[from] SsmError),
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// A role's TLS material from Parameter Store (the CA certificate and the role's SecureString).
#[cfg(feature = "tls")]
pub async fn tls_material(
    ssm: &Parameters,
    names: &GroupParameters,
    role: Role,
) -> Result<TlsMaterial, TlsParameterError> {
    let ca = ssm.get(&names.tls_ca()).await?;
    let name = names.tls_identity(role);
    let bundle = ssm.get(&name).await?;
    Ok(TlsMaterial::from_bundle(role, &ca, &bundle, &name)?)
}
