//! The `autoscaler.v1.Monitor` gRPC service: checks registrations at the edge, converts them into
//! domain types and hands them to the registry.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use autoscaler_proto::tls::{Role, require_caller};
use autoscaler_proto::v1;
use autoscaler_proto::v1::monitor_server::Monitor;
use tonic::{Request, Response, Status};

use crate::registry::{Registration, Registry};

/// Longest instance id accepted (EC2 ids are 19 characters).
pub const MAX_INSTANCE_ID_LEN: usize = 128;
/// Longest agent address accepted (a DNS name is at most 253 characters, plus the port).
pub const MAX_ADDRESS_LEN: usize = 260;
/// Longest agent version accepted.
pub const MAX_VERSION_LEN: usize = 64;

/// How long a registration of an instance the provider has not listed yet waits for the next
/// list before it is refused (below the agent's 2 s call timeout).
pub const ADMISSION_WAIT: Duration = Duration::from_millis(1_500);

/// Who may register. With a controller, the daemon answers from the provider's list; the
/// monitor alone admits every well-formed registration with the right token and certificate.
pub trait Admission: Send + Sync + 'static {
    /// Whether `instance_id` belongs to the group, waiting up to `wait` to know.
    fn admits<'a>(
        &'a self,
        instance_id: &'a str,
        wait: Duration,
    ) -> Pin<Box<dyn Future<Output = bool> + Send + 'a>>;
}

#[derive(Clone)]
pub struct MonitorService {
    registry: Arc<Registry>,
    /// With a controller, only instances its provider lists may register.
    admission: Option<Arc<dyn Admission>>,
}

impl std::fmt::Debug for MonitorService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MonitorService")
            .field("registry", &self.registry)
            .field("admission", &self.admission.is_some())
            .finish()
    }
}

impl MonitorService {
    pub fn new(registry: Arc<Registry>) -> MonitorService {
        MonitorService {
            registry,
            admission: None,
        }
    }

    /// Accepts registrations only from the instances `admission` admits.
    pub fn admitting(mut self, admission: Arc<dyn Admission>) -> MonitorService {
        self.admission = Some(admission);
        self
    }
}

/// Checks an instance id: 1-128 visible ASCII characters.
pub fn check_instance_id(instance_id: &str) -> Result<(), String> {
    if instance_id.is_empty() {
        return Err("instance_id is empty".into());
    }
    if instance_id.len() > MAX_INSTANCE_ID_LEN {
        return Err(format!(
            "instance_id is {} bytes long; at most {MAX_INSTANCE_ID_LEN} are accepted",
            instance_id.len()
        ));
    }
    if !instance_id.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("instance_id may hold only visible ASCII characters".into());
    }
    Ok(())
}

/// Checks an agent address: `host:port`, the host a name or an IP (IPv6 in brackets), the port
/// 1-65535.
pub fn check_address(address: &str) -> Result<(), String> {
    let bad = |why: &str| Err(format!("address {address:?} is not host:port: {why}"));
    if address.len() > MAX_ADDRESS_LEN {
        return Err(format!(
            "address is {} bytes long; at most {MAX_ADDRESS_LEN} are accepted",
            address.len()
        ));
    }
    let Some((host, port)) = address.rsplit_once(':') else {
        return bad("no port");
    };
    match port.parse::<u16>() {
        Ok(0) | Err(_) => return bad("the port must be a number within 1-65535"),
        Ok(_) => {}
    }
    let host_ok = if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        inner.parse::<std::net::Ipv6Addr>().is_ok()
    } else {
        !host.is_empty()
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
    };
    if !host_ok {
        return bad("the host must be a name, an IPv4 address or a bracketed IPv6 address");
    }
    Ok(())
}

/// Turns a Register request into a registration, or INVALID_ARGUMENT.
pub fn parse_registration(request: v1::RegisterRequest) -> Result<Registration, Status> {
    check_instance_id(&request.instance_id).map_err(Status::invalid_argument)?;
    check_address(&request.address).map_err(Status::invalid_argument)?;
    if request.agent_version.len() > MAX_VERSION_LEN
        || !request.agent_version.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err(Status::invalid_argument(format!(
            "agent_version must be at most {MAX_VERSION_LEN} visible ASCII characters"
        )));
    }
    Ok(Registration {
        instance_id: request.instance_id,
        address: request.address,
        agent_version: request.agent_version,
    })
}

#[tonic::async_trait]
impl Monitor for MonitorService {
    async fn register(
        &self,
        request: Request<v1::RegisterRequest>,
    ) -> Result<Response<v1::RegisterResponse>, Status> {
        require_caller(&request, Role::Agent)?;
        let registration = parse_registration(request.into_inner()).inspect_err(|status| {
            tracing::warn!(error = status.message(), "registration refused");
        })?;
        if let Some(admission) = &self.admission
            && !admission
                .admits(&registration.instance_id, ADMISSION_WAIT)
                .await
        {
            tracing::warn!(
                instance_id = %registration.instance_id,
                address = %registration.address,
                "registration refused: the provider does not list this instance in the group"
            );
            return Err(Status::permission_denied(format!(
                "instance {} is not an instance of this group as the provider lists it",
                registration.instance_id
            )));
        }
        self.registry.register(registration);
        let config = self.registry.config();
        Ok(Response::new(v1::RegisterResponse {
            monitor_id: config.monitor_id.clone(),
            poll_interval_ms: config.poll_interval.as_millis() as u64,
        }))
    }

    async fn deregister(
        &self,
        request: Request<v1::DeregisterRequest>,
    ) -> Result<Response<v1::DeregisterResponse>, Status> {
        require_caller(&request, Role::Agent)?;
        let instance_id = request.into_inner().instance_id;
        check_instance_id(&instance_id).map_err(Status::invalid_argument)?;
        self.registry
            .deregister(&instance_id)
            .map_err(|error| Status::not_found(error.to_string()))?;
        Ok(Response::new(v1::DeregisterResponse {}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        for good in [
            "127.0.0.1:50061",
            "ip-10-0-1-7.ec2.internal:1",
            "[::1]:8080",
        ] {
            assert_eq!(check_address(good), Ok(()), "{good}");
        }
        for bad in [
            "",
            "127.0.0.1",
            "127.0.0.1:0",
            "127.0.0.1:70000",
            ":80",
            "http://host:80",
            "host name:80",
            "[::zz]:80",
            "host:port",
        ] {
            assert!(check_address(bad).is_err(), "{bad}");
        }
        assert!(check_address(&format!("{}:1", "a".repeat(300))).is_err());
    }

    #[test]
    fn registrations() {
        let good = v1::RegisterRequest {
            instance_id: "i-0123456789abcdef0".into(),
            address: "10.0.0.1:50061".into(),
            agent_version: "0.1.0".into(),
        };
        assert!(parse_registration(good.clone()).is_ok());
        for bad in [
            v1::RegisterRequest {
                instance_id: String::new(),
                ..good.clone()
            },
            v1::RegisterRequest {
                instance_id: "has space".into(),
                ..good.clone()
            },
            v1::RegisterRequest {
                instance_id: "x".repeat(MAX_INSTANCE_ID_LEN + 1),
                ..good.clone()
            },
            v1::RegisterRequest {
                address: "nowhere".into(),
                ..good.clone()
            },
            v1::RegisterRequest {
                agent_version: "v".repeat(100),
                ..good.clone()
            },
        ] {
            let status = parse_registration(bad).unwrap_err();
            assert_eq!(status.code(), tonic::Code::InvalidArgument);
        }
    }
}
