//! The test group: its token, its CA and the three identities it issues (made once per test
//! process and kept in memory), and gRPC clients that speak as one of them.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

use autoscaler_proto::auth::{AttachToken, Credentials, Token};
use autoscaler_proto::tls::{GroupCa, Issued, Role, TlsMaterial, Transport};
use autoscaler_proto::v1::agent_client::AgentClient;
use autoscaler_proto::v1::monitor_client::MonitorClient;
use autoscaler_proto::v1::status_client::StatusClient;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

/// The test group's token.
pub const TOKEN: &str = "test-token-0123456789";

pub fn token() -> Token {
    Token::new(TOKEN).expect("the test token is long enough")
}

struct TestPki {
    ca: String,
    issued: Vec<(Role, Issued)>,
}

fn pki() -> &'static TestPki {
    static PKI: OnceLock<TestPki> = OnceLock::new();
    PKI.get_or_init(|| {
        let ca = GroupCa::generate("test").expect("a test CA");
        let issued = Role::ALL
            .iter()
            .map(|&role| (role, ca.issue(role).expect("a test certificate")))
            .collect();
        TestPki {
            ca: ca.cert_pem(),
            issued,
        }
    })
}

/// The test group's TLS material for `role`.
pub fn material(role: Role) -> TlsMaterial {
    let pki = pki();
    let (_, issued) = pki
        .issued
        .iter()
        .find(|(r, _)| *r == role)
        .expect("every role is issued");
    TlsMaterial::from_pems(
        role,
        &pki.ca,
        &issued.cert_pem,
        &issued.key_pem,
        "test material",
    )
    .expect("the test material is valid")
}

/// The token and mutual TLS as `role`.
pub fn credentials(role: Role) -> Credentials {
    Credentials::new(token(), Transport::tls(material(role)))
}

/// Writes every role's material into `dir`, as the daemon and `autoscaler-agent --tls-dir` read it.
pub fn write_tls_dir(dir: &Path) {
    for role in Role::ALL {
        material(role)
            .write_dir(dir)
            .expect("writing test TLS material");
    }
}

/// A channel to `peer` at `address`, with the test group's certificate for `me`.
pub fn channel_as(address: SocketAddr, me: Role, peer: Role) -> Channel {
    credentials(me)
        .channel(&address.to_string(), peer, Duration::from_secs(5))
        .expect("a channel to a loopback address")
}

/// Sends `token` (none when `None`).
fn interceptor(token: Option<&str>) -> AttachToken {
    match token {
        Some(token) => AttachToken::new(&Token::new(token).expect("test tokens are long enough")),
        None => AttachToken::none(),
    }
}

/// An agent's client to a monitor, sending `token`.
pub fn monitor_client(
    address: SocketAddr,
    token: Option<&str>,
) -> MonitorClient<InterceptedService<Channel, AttachToken>> {
    MonitorClient::with_interceptor(
        channel_as(address, Role::Agent, Role::Monitor),
        interceptor(token),
    )
}

/// The monitor's client to an agent, sending `token`.
pub fn agent_client(
    address: SocketAddr,
    token: Option<&str>,
) -> AgentClient<InterceptedService<Channel, AttachToken>> {
    AgentClient::with_interceptor(
        channel_as(address, Role::Monitor, Role::Agent),
        interceptor(token),
    )
}

/// An operator's client to the daemon's Status service.
pub type Status = StatusClient<InterceptedService<Channel, AttachToken>>;

/// An operator's client to the daemon's Operator service.
pub type Operator =
    autoscaler_proto::v1::operator_client::OperatorClient<InterceptedService<Channel, AttachToken>>;

/// An operator's Operator client, with the group's token.
pub fn operator_client(address: SocketAddr) -> Operator {
    autoscaler_proto::v1::operator_client::OperatorClient::with_interceptor(
        channel_as(address, Role::Operator, Role::Monitor),
        AttachToken::new(&token()),
    )
}

/// An operator's Status client, with the group's token.
pub fn status_client(address: SocketAddr) -> Status {
    StatusClient::with_interceptor(
        channel_as(address, Role::Operator, Role::Monitor),
        AttachToken::new(&token()),
    )
}
