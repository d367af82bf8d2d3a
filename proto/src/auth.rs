//! The group's shared token: attached to every outgoing call and checked on every incoming one.

use std::fmt;
use std::sync::Arc;

use tonic::metadata::MetadataValue;
use tonic::{Request, Status};

/// The metadata key that carries the token, as `Bearer <token>`.
pub const AUTHORIZATION: &str = "authorization";

/// Shortest token accepted: a guessable token is no authentication.
pub const MIN_TOKEN_LEN: usize = 16;

/// The group's shared secret. Its `Debug` output never shows the value.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(Arc<str>);

/// Why a token was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("the token is {0} characters long; it needs at least {MIN_TOKEN_LEN}")]
    TooShort(usize),
    #[error("the token may hold only visible ASCII characters (no spaces or control characters)")]
    BadCharacter,
}

impl Token {
    /// Checks the token's shape; surrounding whitespace (a trailing newline in a file) is trimmed.
    pub fn new(value: &str) -> Result<Token, TokenError> {
        let value = value.trim();
        if !value.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(TokenError::BadCharacter);
        }
        if value.len() < MIN_TOKEN_LEN {
            return Err(TokenError::TooShort(value.len()));
        }
        Ok(Token(Arc::from(value)))
    }

    /// The secret itself, for handing to a child process; never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// A new random token: 24 bytes from the operating system's generator, as 48 hex digits.
    pub fn generate() -> Result<Token, getrandom::Error> {
        let mut bytes = [0u8; 24];
        getrandom::fill(&mut bytes)?;
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        Ok(Token(Arc::from(hex)))
    }

    /// True when `presented` is this token, compared in time independent of where they differ
    /// (`subtle`; only the length shows).
    fn matches(&self, presented: &[u8]) -> bool {
        subtle::ConstantTimeEq::ct_eq(presented, self.0.as_bytes()).into()
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// Adds the token to outgoing calls (a client interceptor).
#[derive(Clone, Debug)]
pub struct AttachToken {
    header: Option<MetadataValue<tonic::metadata::Ascii>>,
}

impl AttachToken {
    pub fn new(token: &Token) -> AttachToken {
        let mut header: MetadataValue<_> = format!("Bearer {}", token.expose())
            .parse()
            .expect("a Token holds only visible ASCII, which is a valid metadata value");
        header.set_sensitive(true);
        AttachToken {
            header: Some(header),
        }
    }

    /// Attaches nothing: for tests of what happens to callers without the token.
    pub fn none() -> AttachToken {
        AttachToken { header: None }
    }
}

impl tonic::service::Interceptor for AttachToken {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(header) = &self.header {
            request.metadata_mut().insert(AUTHORIZATION, header.clone());
        }
        Ok(request)
    }
}

/// Refuses incoming calls that do not carry the token (a server interceptor).
#[derive(Clone, Debug)]
pub struct RequireToken {
    token: Token,
}

impl RequireToken {
    pub fn new(token: Token) -> RequireToken {
        RequireToken { token }
    }
}

impl tonic::service::Interceptor for RequireToken {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let presented = request
            .metadata()
            .get(AUTHORIZATION)
            .and_then(|value| value.as_bytes().strip_prefix(b"Bearer "));
        match presented {
            Some(presented) if self.token.matches(presented) => Ok(request),
            Some(_) => Err(Status::unauthenticated("wrong group token")),
            None => Err(Status::unauthenticated(
                "missing group token: send `authorization: Bearer <token>`",
            )),
        }
    }
}

/// What a process shows and checks on every connection: the group token and the transport
/// (mutual TLS, or plaintext when a local run asks for it).
#[derive(Clone, Debug)]
pub struct Credentials {
    pub token: Token,
    pub transport: crate::tls::Transport,
}

impl Credentials {
    pub fn new(token: Token, transport: crate::tls::Transport) -> Credentials {
        Credentials { token, transport }
    }

    /// A channel to `address` (`host:port`) expecting `peer` there, connecting on first use;
    /// every stage of every call is bounded by `timeout`.
    pub fn channel(
        &self,
        address: &str,
        peer: crate::tls::Role,
        timeout: std::time::Duration,
    ) -> Result<tonic::transport::Channel, String> {
        let endpoint = self
            .transport
            .endpoint(address, peer, timeout)
            .map_err(|error| format!("bad address {address:?}: {error}"))?
            .tcp_nodelay(true)
            .timeout(timeout);
        Ok(endpoint.connect_lazy())
    }

    /// The client interceptor that attaches the token.
    pub fn attach(&self) -> AttachToken {
        AttachToken::new(&self.token)
    }

    /// The server interceptor that checks it.
    pub fn require(&self) -> RequireToken {
        RequireToken::new(self.token.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::service::Interceptor;

    const TOKEN: &str = "0123456789abcdef-test";

    fn incoming(header: Option<&str>) -> Request<()> {
        let mut request = Request::new(());
        if let Some(header) = header {
            request
                .metadata_mut()
                .insert(AUTHORIZATION, header.parse().unwrap());
        }
        request
    }

    #[test]
    fn a_generated_token_is_valid_and_new_each_time() {
        let (a, b) = (Token::generate().unwrap(), Token::generate().unwrap());
        assert_ne!(a, b);
        assert_eq!(a.expose().len(), 48);
        assert_eq!(Token::new(a.expose()), Ok(a.clone()));
        assert!(a.matches(a.expose().as_bytes()));
        assert!(!a.matches(b.expose().as_bytes()));
        assert!(!a.matches(&a.expose().as_bytes()[..47]));
    }

    #[test]
    fn token_shape_is_checked() {
        assert_eq!(Token::new("short"), Err(TokenError::TooShort(5)));
        assert_eq!(
            Token::new("has a space in it ok"),
            Err(TokenError::BadCharacter)
        );
        assert_eq!(Token::new(&format!("  {TOKEN}\n")).unwrap().expose(), TOKEN);
        assert_eq!(
            format!("{:?}", Token::new(TOKEN).unwrap()),
            "Token(<redacted>)"
        );
    }

    #[test]
    fn attached_token_is_accepted_and_others_are_not() {
        let token = Token::new(TOKEN).unwrap();
        let mut attach = AttachToken::new(&token);
        let mut require = RequireToken::new(token);
        let request = attach.call(Request::new(())).unwrap();
        assert!(require.call(request).is_ok());

        for header in [
            None,
            Some("Bearer 0123456789abcdef-tesT"),
            Some("Bearer 0123456789abcdef-tes"),
            Some(TOKEN),
        ] {
            let status = require.call(incoming(header)).unwrap_err();
            assert_eq!(status.code(), tonic::Code::Unauthenticated, "{header:?}");
        }
    }
}
