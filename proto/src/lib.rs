//! Generated Rust for the autoscaler.v1 protocol (see `proto/autoscaler/v1/*.proto`); services
//! convert these types into their own domain types where they enter, so nothing else sees them.

/// Messages and service stubs of package `autoscaler.v1`.
pub mod v1 {
    tonic::include_proto!("autoscaler.v1");

    impl InstanceState {
        /// The name operators read (`pending`, `running`, `stopped`, `unlisted`).
        pub fn name(self) -> &'static str {
            match self {
                InstanceState::Unspecified => "unspecified",
                InstanceState::Pending => "pending",
                InstanceState::Running => "running",
                InstanceState::Stopped => "stopped",
                InstanceState::Unlisted => "unlisted",
            }
        }
    }

    impl InstanceHealth {
        /// The name operators read (`unknown`, `healthy`, `suspect`, `unhealthy`,
        /// `unregistered`).
        pub fn name(self) -> &'static str {
            match self {
                InstanceHealth::Unspecified => "unspecified",
                InstanceHealth::Unknown => "unknown",
                InstanceHealth::Healthy => "healthy",
                InstanceHealth::Suspect => "suspect",
                InstanceHealth::Unhealthy => "unhealthy",
                InstanceHealth::Unregistered => "unregistered",
            }
        }
    }

    impl TargetState {
        /// The name operators read (the names of ELB's target states; empty when no balancer
        /// has the instance).
        pub fn name(self) -> &'static str {
            match self {
                TargetState::Unspecified => "",
                TargetState::Initial => "initial",
                TargetState::Healthy => "healthy",
                TargetState::Unhealthy => "unhealthy",
                TargetState::Draining => "draining",
                TargetState::Unused => "unused",
            }
        }
    }

    impl InstanceStatus {
        /// True when the provider lists the instance (it is not only the monitor's).
        pub fn listed(&self) -> bool {
            self.state() != InstanceState::Unlisted
        }

        /// True when the monitor holds the instance healthy.
        pub fn is_healthy(&self) -> bool {
            self.health() == InstanceHealth::Healthy
        }
    }
}

/// The encoded `FileDescriptorSet` of the protocol, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/autoscaler_descriptor.bin"));

/// Version of this build, reported by agents in Ping and Register.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Largest request a server of this protocol decodes. Every message is a few hundred bytes at
/// most; anything near this is hostile, and is refused before it is parsed.
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024;

pub mod auth;
pub mod limit;
pub mod standard;
pub mod tls;

/// An error and its causes on one line, each cause once: an error whose message already
/// includes its source (as `cannot read X: <io error>` does) would otherwise print it twice.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut line = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        source = cause.source();
    }
    line
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_cause_already_in_the_message_is_not_repeated() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let error = crate::tls::TlsError::Read {
            path: "/x/agent.pem".into(),
            source: io,
        };
        assert_eq!(
            super::error_chain(&error),
            "cannot read /x/agent.pem: no such file"
        );
        let wrapped = anyhow::Error::new(error).context("loading the TLS material");
        assert_eq!(
            super::error_chain(wrapped.as_ref()),
            "loading the TLS material: cannot read /x/agent.pem: no such file"
        );
    }
}
