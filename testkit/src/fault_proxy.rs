//! A fault-injecting HTTP proxy in front of the AWS emulator. It reads each request (one per
//! connection: it answers `Connection: close`), finds the API action (`Action=` in a query-protocol
//! body, `X-Amz-Target` for JSON protocols), and either forwards it to the emulator or, while a
//! scripted fault for that action has occurrences left, answers with the fault instead: the
//! throttling, 5xx and capacity errors AWS sends, an endless wait (a hung endpoint), or the
//! request executed and its response lost.
//!
//! moto does not implement EC2's ClientToken idempotency; the proxy does, as EC2 documents it: a
//! RunInstances that repeats a ClientToken gets the first successful response again and launches
//! nothing.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// `RequestLimitExceeded` (EC2) or `ThrottlingException` (JSON APIs), HTTP 503 / 400.
    Throttle,
    /// `InternalError`, HTTP 500.
    ServerError,
    /// `InsufficientInstanceCapacity`, HTTP 500, as EC2 sends it.
    Capacity,
    /// Accepts the request and never answers.
    Hang,
    /// Forwards the request (it takes effect) and drops the response.
    LoseResponse,
}

/// What the proxy saw: the action and the fault it injected, if any.
pub type Seen = (String, Option<Fault>);

pub struct FaultProxy {
    pub endpoint: String,
    script: Arc<Mutex<VecDeque<(String, Fault, u32)>>>,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

/// Successful RunInstances responses by ClientToken.
type Tokens = Mutex<std::collections::HashMap<String, Vec<u8>>>;

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FaultProxy {
    /// Starts a proxy on 127.0.0.1 in front of `upstream` (`http://host:port`).
    pub async fn start(upstream: &str) -> FaultProxy {
        let upstream = upstream
            .strip_prefix("http://")
            .expect("an http:// endpoint")
            .to_string();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let script: Arc<Mutex<VecDeque<(String, Fault, u32)>>> = Arc::default();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let tokens: Arc<Tokens> = Arc::default();
        let task = {
            let (script, seen) = (script.clone(), seen.clone());
            tokio::spawn(async move {
                loop {
                    let Ok((client, _)) = listener.accept().await else {
                        continue;
                    };
                    let (script, seen, upstream, tokens) = (
                        script.clone(),
                        seen.clone(),
                        upstream.clone(),
                        tokens.clone(),
                    );
                    tokio::spawn(async move {
                        let _ = handle(client, &upstream, &script, &seen, &tokens).await;
                    });
                }
            })
        };
        FaultProxy {
            endpoint,
            script,
            seen,
            task,
        }
    }

    /// The next `times` requests for `action` get `fault`.
    pub fn inject(&self, action: &str, fault: Fault, times: u32) {
        self.script
            .lock()
            .unwrap()
            .push_back((action.to_string(), fault, times));
    }

    /// Every request so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// How many faults are still scripted.
    pub fn pending(&self) -> u32 {
        self.script.lock().unwrap().iter().map(|(_, _, n)| n).sum()
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Reads one HTTP request: its head and its body (by Content-Length).
async fn read_request(stream: &mut TcpStream) -> std::io::Result<(String, Vec<u8>)> {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(at) = find(&buffer, b"\r\n\r\n") {
            break at + 4;
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buffer.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buffer[..head_end]).into_owned();
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })
        .unwrap_or(0);
    while buffer.len() < head_end + length {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buffer.extend_from_slice(&chunk[..n]);
    }
    Ok((head, buffer[head_end..head_end + length].to_vec()))
}

fn action(head: &str, body: &[u8]) -> String {
    if let Some(target) = head.lines().find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.eq_ignore_ascii_case("x-amz-target")
            .then(|| value.trim().to_string())
    }) {
        return target.rsplit('.').next().unwrap_or("").to_string();
    }
    let body = String::from_utf8_lossy(body);
    body.split('&')
        .find_map(|pair| pair.strip_prefix("Action="))
        .unwrap_or("")
        .to_string()
}

fn response(status: &str, content_type: &str, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn fault_response(fault: Fault, json: bool) -> Vec<u8> {
    let (status, code, message) = match fault {
        Fault::Throttle if json => ("400 Bad Request", "ThrottlingException", "Rate exceeded"),
        Fault::Throttle => (
            "503 Service Unavailable",
            "RequestLimitExceeded",
            "Request limit exceeded.",
        ),
        Fault::ServerError => (
            "500 Internal Server Error",
            if json {
                "InternalServerError"
            } else {
                "InternalError"
            },
            "An internal error has occurred",
        ),
        Fault::Capacity => (
            "500 Internal Server Error",
            "InsufficientInstanceCapacity",
            "We currently do not have sufficient t2.micro capacity in the Availability Zone you requested.",
        ),
        Fault::Hang | Fault::LoseResponse => unreachable!("not an error response"),
    };
    if json {
        response(
            status,
            "application/x-amz-json-1.1",
            &format!(r#"{{"__type":"{code}","message":"{message}"}}"#),
        )
    } else {
        response(
            status,
            "text/xml",
            &format!(
                r#"<?xml version="1.0" encoding="UTF-8"?><Response><Errors><Error><Code>{code}</Code><Message>{message}</Message></Error></Errors><RequestID>fault-proxy</RequestID></Response>"#
            ),
        )
    }
}

async fn forward(upstream: &str, head: &str, body: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut server = TcpStream::connect(upstream).await?;
    let mut request = String::new();
    for (n, line) in head.trim_end().split("\r\n").enumerate() {
        let name = line.split(':').next().unwrap_or("");
        if n > 0 && name.eq_ignore_ascii_case("connection") {
            continue;
        }
        request.push_str(line);
        request.push_str("\r\n");
    }
    request.push_str("Connection: close\r\n\r\n");
    server.write_all(request.as_bytes()).await?;
    server.write_all(body).await?;
    let mut reply = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), server.read_to_end(&mut reply))
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
    Ok(reply)
}

/// The ClientToken of a RunInstances request.
fn client_token(action: &str, body: &[u8]) -> Option<String> {
    (action == "RunInstances").then_some(())?;
    String::from_utf8_lossy(body)
        .split('&')
        .find_map(|pair| pair.strip_prefix("ClientToken="))
        .map(str::to_string)
}

/// Forwards a request, answering a repeated ClientToken from memory as EC2 does.
async fn idempotent(
    upstream: &str,
    head: &str,
    body: &[u8],
    token: Option<&String>,
    tokens: &Tokens,
) -> std::io::Result<Vec<u8>> {
    if let Some(cached) = token.and_then(|t| tokens.lock().unwrap().get(t).cloned()) {
        return Ok(cached);
    }
    let reply = forward(upstream, head, body).await?;
    if let Some(token) = token
        && reply.starts_with(b"HTTP/1.1 200")
    {
        tokens.lock().unwrap().insert(token.clone(), reply.clone());
    }
    Ok(reply)
}

async fn handle(
    mut client: TcpStream,
    upstream: &str,
    script: &Mutex<VecDeque<(String, Fault, u32)>>,
    seen: &Mutex<Vec<Seen>>,
    tokens: &Tokens,
) -> std::io::Result<()> {
    let (head, body) = read_request(&mut client).await?;
    let action = action(&head, &body);
    let token = client_token(&action, &body);
    let json = head.to_ascii_lowercase().contains("x-amz-target");
    let fault = {
        let mut script = script.lock().unwrap();
        let found = script.iter_mut().find(|(a, _, n)| *a == action && *n > 0);
        let fault = found.map(|entry| {
            entry.2 -= 1;
            entry.1
        });
        script.retain(|(_, _, n)| *n > 0);
        fault
    };
    seen.lock().unwrap().push((action, fault));
    match fault {
        None => {
            let reply = idempotent(upstream, &head, &body, token.as_ref(), tokens).await?;
            client.write_all(&reply).await?;
        }
        Some(Fault::Hang) => {
            tokio::time::sleep(Duration::from_secs(120)).await;
        }
        Some(Fault::LoseResponse) => {
            let _ = idempotent(upstream, &head, &body, token.as_ref(), tokens).await?;
            // the connection closes without an answer
        }
        Some(fault) => client.write_all(&fault_response(fault, json)).await?,
    }
    client.shutdown().await
}
