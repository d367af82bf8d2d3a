//! The monitor's one gRPC client to agents: unary calls to one agent over one HTTP/2 connection,
//! made with the `h2` crate directly and driven by the calling task itself (no tasks, channels or
//! buffers of its own), so a poll costs one task wake-up to send and one to read the answer.
//! Every Agent RPC the monitor makes goes through it (the polls, AttachMonitor, DetachMonitor,
//! NotifyRemoval and the operator's SetLoadTarget), under one TLS path.
//!
//! tonic's client is the reference for everything here (the request headers, the message
//! framing, the status in the trailers or in a trailers-only answer); the Reach benchmark
//! measured it at about twice the CPU per poll of a bare RPC, most of it in the layers between
//! the caller and the connection (a buffer task, a dispatch channel, a connection task).

use std::future::poll_fn;
use std::sync::Arc;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue, TE};
use http::uri::{Authority, PathAndQuery, Scheme};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::Instant;

use autoscaler_proto::auth::Credentials;
use autoscaler_proto::tls::{Role, TlsError, Transport};

/// The largest answer accepted from an agent (tonic's default limit is 4 MiB; ours are tiny).
const MAX_MESSAGE: usize = 64 * 1024;

/// The largest header block accepted from an agent (hyper's default for HTTP/2 clients).
const MAX_HEADERS: u32 = 16 * 1024;

/// What every connection of one monitor shares: the TLS settings (and their session cache) and
/// the token header.
pub(crate) struct Connector {
    tls: Option<(tokio_rustls::TlsConnector, ServerName<'static>)>,
    authorization: HeaderValue,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector")
            .field("tls", &self.tls.as_ref().map(|(_, name)| name))
            .finish_non_exhaustive()
    }
}

impl Connector {
    /// For calls to `peer`s, showing `credentials`.
    pub(crate) fn new(credentials: &Credentials, peer: Role) -> Result<Connector, TlsError> {
        let tls = match &credentials.transport {
            Transport::Plaintext => None,
            Transport::Tls(material) => {
                let name = ServerName::try_from(peer.dns_name())
                    .map_err(|e| TlsError::ClientConfig(e.to_string()))?;
                Some((material.client_config()?.into(), name))
            }
        };
        let mut authorization =
            HeaderValue::try_from(format!("Bearer {}", credentials.token.expose()))
                .map_err(|e| TlsError::ClientConfig(format!("the token header: {e}")))?;
        authorization.set_sensitive(true);
        Ok(Connector { tls, authorization })
    }
}

/// Why a call failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum CallError {
    /// The deadline passed first.
    TimedOut,
    /// The agent answered with a gRPC error, or the answer was not a valid one (`Internal`,
    /// `Unknown`, `ResourceExhausted`), or the connection failed (`Unavailable`).
    Status { code: tonic::Code, message: String },
}

impl CallError {
    /// The gRPC code: `DeadlineExceeded` for a call past its deadline.
    pub(crate) fn code(&self) -> tonic::Code {
        match self {
            CallError::TimedOut => tonic::Code::DeadlineExceeded,
            CallError::Status { code, .. } => *code,
        }
    }
}

/// `Code: message`, as tonic describes a status.
impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::TimedOut => write!(f, "DeadlineExceeded: no answer in time"),
            CallError::Status { code, message } if message.is_empty() => write!(f, "{code:?}"),
            CallError::Status { code, message } => write!(f, "{code:?}: {message}"),
        }
    }
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send + Sync {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + Sync> Io for T {}

struct Live {
    send: h2::client::SendRequest<Bytes>,
    connection: h2::client::Connection<Box<dyn Io>, Bytes>,
}

/// One agent's connection: made on the first call, made again on the call after a failure.
pub(crate) struct AgentConnection {
    connector: Arc<Connector>,
    address: String,
    authority: Authority,
    live: Option<Live>,
}

impl std::fmt::Debug for AgentConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentConnection")
            .field("address", &self.address)
            .field("connected", &self.live.is_some())
            .finish()
    }
}

impl AgentConnection {
    /// For the agent at `address` (`host:port`); connects on first use.
    pub(crate) fn new(connector: Arc<Connector>, address: &str) -> Result<AgentConnection, String> {
        let authority = Authority::try_from(address)
            .map_err(|e| format!("the address {address:?} is not host:port: {e}"))?;
        if authority.port_u16().is_none() {
            return Err(format!("the address {address:?} has no port"));
        }
        Ok(AgentConnection {
            connector,
            address: address.to_string(),
            authority,
            live: None,
        })
    }

    /// Waits until `when`, meanwhile reading what the agent sends unasked (settings, pings,
    /// a goodbye), so a closed connection is dropped before the next call needs it.
    pub(crate) async fn idle_until(&mut self, when: Instant) {
        if let Some(live) = &mut self.live {
            tokio::select! {
                _ = tokio::time::sleep_until(when) => return,
                _ = &mut live.connection => {}
            }
            self.live = None;
        }
        tokio::time::sleep_until(when).await;
    }

    /// Calls `path` (`/package.Service/Method`) with `request`, all of it (connecting too) by
    /// `deadline`.
    pub(crate) async fn call<Q: prost::Message, R: prost::Message + Default>(
        &mut self,
        path: &'static str,
        request: &Q,
        deadline: Instant,
    ) -> Result<R, CallError> {
        match tokio::time::timeout_at(deadline, self.call_unbounded(path, request)).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(Failure::Status(code, message))) => Err(CallError::Status { code, message }),
            Ok(Err(Failure::Connection(message))) => {
                self.live = None;
                Err(CallError::Status {
                    code: tonic::Code::Unavailable,
                    message,
                })
            }
            // The connection is kept, as tonic keeps it: a slow agent is not a broken one.
            Err(_) => Err(CallError::TimedOut),
        }
    }

    async fn call_unbounded<Q: prost::Message, R: prost::Message + Default>(
        &mut self,
        path: &'static str,
        request: &Q,
    ) -> Result<R, Failure> {
        let http_request = self.http_request(path)?;
        let live = match self.live.take() {
            Some(live) => live,
            None => self.connect().await?,
        };
        let Live { send, connection } = self.live.insert(live);
        let body = frame(request);
        let exchange = async move {
            poll_fn(|cx| send.poll_ready(cx))
                .await
                .map_err(connection_failure)?;
            let (answer, mut stream) = send
                .send_request(http_request, false)
                .map_err(connection_failure)?;
            stream.send_data(body, true).map_err(connection_failure)?;
            read_answer(answer.await.map_err(connection_failure)?).await
        };
        tokio::select! {
            biased;
            answer = exchange => answer,
            closed = connection => Err(Failure::Connection(match closed {
                Ok(()) => "the agent closed the connection".to_string(),
                Err(error) => describe_h2(&error),
            })),
        }
    }

    fn http_request(&self, path: &'static str) -> Result<http::Request<()>, Failure> {
        let scheme = if self.connector.tls.is_some() {
            Scheme::HTTPS
        } else {
            Scheme::HTTP
        };
        let uri = http::Uri::builder()
            .scheme(scheme)
            .authority(self.authority.clone())
            .path_and_query(PathAndQuery::from_static(path))
            .build()
            .map_err(|e| {
                Failure::Status(tonic::Code::Internal, format!("the request's URI: {e}"))
            })?;
        let mut request = http::Request::new(());
        *request.method_mut() = http::Method::POST;
        *request.uri_mut() = uri;
        *request.version_mut() = http::Version::HTTP_2;
        let headers = request.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        headers.insert(TE, HeaderValue::from_static("trailers"));
        headers.insert(AUTHORIZATION, self.connector.authorization.clone());
        Ok(request)
    }

    async fn connect(&self) -> Result<Live, Failure> {
        let fail = |what: &str, error: &dyn std::fmt::Display| {
            Failure::Connection(format!("{what} {}: {error}", self.address))
        };
        let tcp = TcpStream::connect(self.address.as_str())
            .await
            .map_err(|e| fail("cannot connect to", &e))?;
        tcp.set_nodelay(true)
            .map_err(|e| fail("cannot set up", &e))?;
        let io: Box<dyn Io> = match &self.connector.tls {
            None => Box::new(tcp),
            Some((tls, name)) => Box::new(
                tls.connect(name.clone(), tcp)
                    .await
                    .map_err(|e| fail("TLS handshake with", &e))?,
            ),
        };
        let (send, connection) = h2::client::Builder::new()
            .enable_push(false)
            // As hyper's client (tonic's) bounds an agent's answer headers.
            .max_header_list_size(MAX_HEADERS)
            .handshake(io)
            .await
            .map_err(|e| fail("HTTP/2 handshake with", &e))?;
        Ok(Live { send, connection })
    }
}

#[derive(Debug)]
enum Failure {
    /// The agent answered with an error; the connection is fine.
    Status(tonic::Code, String),
    /// The connection is broken (`Unavailable`): make a new one for the next call.
    Connection(String),
}

fn connection_failure(error: h2::Error) -> Failure {
    Failure::Connection(describe_h2(&error))
}

fn describe_h2(error: &h2::Error) -> String {
    format!("the connection failed: {error}")
}

/// The gRPC framing of one message: uncompressed, its length, the message.
fn frame<Q: prost::Message>(request: &Q) -> Bytes {
    let length = request.encoded_len();
    let mut buffer = BytesMut::with_capacity(5 + length);
    buffer.put_u8(0);
    buffer.put_u32(length as u32);
    request
        .encode(&mut buffer)
        .expect("the buffer was sized for the message");
    buffer.freeze()
}

/// Reads an answer: its headers (where an error may already stand, a trailers-only answer),
/// one message, then the trailers with the status.
async fn read_answer<R: prost::Message + Default>(
    answer: http::Response<h2::RecvStream>,
) -> Result<R, Failure> {
    let (head, mut body) = answer.into_parts();
    if head.status != http::StatusCode::OK {
        return Err(Failure::Status(
            tonic::Code::Unknown,
            format!("the agent answered HTTP {}", head.status),
        ));
    }
    if let Some(status) = grpc_status(&head.headers) {
        // Trailers-only: there is no message.
        let (code, message) = status.unwrap_or_else(|| {
            (
                tonic::Code::Unknown,
                "a trailers-only answer with status OK and no message".to_string(),
            )
        });
        return Err(Failure::Status(code, message));
    }
    let mut message = BytesMut::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.map_err(connection_failure)?;
        let _ = body.flow_control().release_capacity(chunk.len());
        if message.len() + chunk.len() > 5 + MAX_MESSAGE {
            return Err(Failure::Status(
                tonic::Code::ResourceExhausted,
                format!("the answer is larger than {MAX_MESSAGE} bytes"),
            ));
        }
        message.extend_from_slice(&chunk);
    }
    let trailers = body.trailers().await.map_err(connection_failure)?;
    match trailers.as_ref().and_then(grpc_status) {
        Some(None) => {}
        Some(Some((code, message))) => return Err(Failure::Status(code, message)),
        None => {
            return Err(Failure::Status(
                tonic::Code::Unknown,
                "the answer ended without a grpc-status".to_string(),
            ));
        }
    }
    decode(message.freeze())
}

fn decode<R: prost::Message + Default>(mut message: Bytes) -> Result<R, Failure> {
    let bad = |what: &str| Failure::Status(tonic::Code::Internal, format!("the answer {what}"));
    if message.len() < 5 {
        return Err(bad("holds no message"));
    }
    if message.get_u8() != 0 {
        return Err(bad("is compressed, which was not asked for"));
    }
    let length = message.get_u32() as usize;
    if message.len() != length {
        return Err(bad(&format!(
            "frames {length} bytes but holds {}",
            message.len()
        )));
    }
    R::decode(message).map_err(|e| bad(&format!("cannot be decoded: {e}")))
}

/// The gRPC status in `headers`: None if there is none, Some(None) if it is OK, else
/// Some(Some((code, message))).
fn grpc_status(headers: &http::HeaderMap) -> Option<Option<(tonic::Code, String)>> {
    let code = tonic::Code::from_bytes(headers.get("grpc-status")?.as_bytes());
    if code == tonic::Code::Ok {
        return Some(None);
    }
    let message = headers
        .get("grpc-message")
        .map(|value| percent_decode(value.as_bytes()))
        .unwrap_or_default();
    Some(Some((code, message)))
}

/// Undoes gRPC's percent-encoding of `grpc-message` (invalid escapes are kept as they are).
fn percent_decode(bytes: &[u8]) -> String {
    percent_encoding::percent_decode(bytes)
        .decode_utf8_lossy()
        .into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_messages_are_percent_decoded_and_bad_escapes_kept() {
        assert_eq!(percent_decode(b"wrong%20group token"), "wrong group token");
        assert_eq!(percent_decode(b"100%"), "100%");
        assert_eq!(percent_decode(b"%zz%4"), "%zz%4");
        assert_eq!(percent_decode("é%C3%A9".as_bytes()), "éé");
    }

    #[test]
    fn a_status_is_read_from_headers_as_tonic_describes_it() {
        let mut headers = http::HeaderMap::new();
        assert_eq!(grpc_status(&headers), None);
        headers.insert("grpc-status", HeaderValue::from_static("0"));
        assert_eq!(grpc_status(&headers), Some(None));
        headers.insert("grpc-status", HeaderValue::from_static("16"));
        headers.insert(
            "grpc-message",
            HeaderValue::from_static("wrong%20group%20token"),
        );
        assert_eq!(
            grpc_status(&headers),
            Some(Some((
                tonic::Code::Unauthenticated,
                "wrong group token".to_string()
            )))
        );
    }

    #[test]
    fn a_call_error_reads_as_tonic_describes_a_status() {
        let refused = CallError::Status {
            code: tonic::Code::PermissionDenied,
            message: "only the monitor may make this call".into(),
        };
        assert_eq!(refused.code(), tonic::Code::PermissionDenied);
        assert_eq!(
            refused.to_string(),
            "PermissionDenied: only the monitor may make this call"
        );
        assert_eq!(CallError::TimedOut.code(), tonic::Code::DeadlineExceeded);
    }

    #[test]
    fn framing_round_trips_and_bad_frames_are_refused() {
        let ping = autoscaler_proto::v1::PingRequest { sequence: 7 };
        let framed = frame(&ping);
        assert_eq!(&framed[..5], &[0, 0, 0, 0, 2]);
        let back: autoscaler_proto::v1::PingRequest = decode(framed.clone()).ok().unwrap();
        assert_eq!(back, ping);
        for bad in [
            Bytes::from_static(&[0, 0, 0]),
            Bytes::from_static(&[1, 0, 0, 0, 0]),
            Bytes::from_static(&[0, 0, 0, 0, 9, 8]),
        ] {
            let error = decode::<autoscaler_proto::v1::PingRequest>(bad)
                .err()
                .unwrap();
            assert!(matches!(error, Failure::Status(tonic::Code::Internal, _)));
        }
    }
}
