//! The gRPC services every server of the protocol offers beside its own: health checking and
//! server reflection (grpc.reflection.v1 and, for grpcio's client, older grpcurl and grpc_cli,
//! v1alpha), each refusing a request above [`MAX_MESSAGE_BYTES`] like the protocol's own.

use tonic::server::NamedService;
use tonic::service::RoutesBuilder;
use tonic_health::server::HealthReporter;

use crate::MAX_MESSAGE_BYTES;

pub use tonic_reflection::server::Error as ReflectionError;

/// Routes with health checking, `S` reported SERVING, and both versions of reflection over the
/// protocol's and health's descriptors. The reporter is the server's to keep while it serves.
pub async fn routes<S: NamedService>() -> Result<(RoutesBuilder, HealthReporter), ReflectionError> {
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter.set_serving::<S>().await;
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(crate::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let mut routes = RoutesBuilder::default();
    routes
        .add_service(health.max_decoding_message_size(MAX_MESSAGE_BYTES))
        .add_service(
            reflection()
                .build_v1()?
                .max_decoding_message_size(MAX_MESSAGE_BYTES),
        )
        .add_service(
            reflection()
                .build_v1alpha()?
                .max_decoding_message_size(MAX_MESSAGE_BYTES),
        );
    Ok((routes, reporter))
}
