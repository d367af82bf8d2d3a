//! Generated Rust for the autoscaler.v1 protocol (see `proto/autoscaler/v1/*.proto`); services
//! convert these types into their own domain types where they enter, so nothing else sees them.

/// Messages and service stubs of package `autoscaler.v1`.
pub mod v1 {
    tonic::include_proto!("autoscaler.v1");
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
pub mod tls;
