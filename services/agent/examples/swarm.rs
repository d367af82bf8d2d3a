//! A swarm of agents in one process, for the Reach benchmark (`services/monitor/examples/reach.rs`):
//! COUNT real agent services (the agent's own `AgentService`, mutual TLS, the group token), each
//! on its own port of 127.0.0.1. It prints `<instance id> <address>` per agent, then `ready`,
//! and serves until stdin closes.
//!
//! Usage: swarm COUNT FIRST_INDEX TLS_DIR TOKEN

use std::sync::Arc;

use autoscaler_agent::load::{LoadModel, LoadModelConfig};
use autoscaler_agent::service::{AgentService, AgentState, LoadSource};
use autoscaler_proto::auth::{Credentials, Token};
use autoscaler_proto::tls::{Role, TlsMaterial, Transport};
use autoscaler_proto::v1::agent_server::AgentServer;
use tokio_stream::wrappers::TcpListenerStream;

/// The agent binary's allocator (services/agent/src/main.rs).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [count, first, tls_dir, token] = args.as_slice() else {
        anyhow::bail!("usage: swarm COUNT FIRST_INDEX TLS_DIR TOKEN");
    };
    let count: usize = count.parse()?;
    let first: usize = first.parse()?;
    let material = TlsMaterial::load(std::path::Path::new(tls_dir), Role::Agent)?;
    let credentials = Credentials::new(Token::new(token)?, Transport::tls(material));
    tokio::runtime::Runtime::new()?.block_on(async move {
        let mut lines = String::new();
        for index in first..first + count {
            let instance_id = format!("swarm-{index:05}");
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            let address = listener.local_addr()?;
            let load = LoadModel::new(LoadModelConfig {
                seed: index as u64,
                ..LoadModelConfig::default()
            })?;
            let state = AgentState::new(instance_id.clone(), LoadSource::Simulated(load));
            let service = tonic::service::interceptor::InterceptedService::new(
                AgentServer::new(AgentService::new(Arc::clone(&state)))
                    .max_decoding_message_size(autoscaler_proto::MAX_MESSAGE_BYTES),
                credentials.require(),
            );
            let server = credentials
                .transport
                .server()?
                .add_service(service)
                .serve_with_incoming(TcpListenerStream::new(listener));
            tokio::spawn(server);
            lines.push_str(&format!("{instance_id} {address}\n"));
        }
        lines.push_str("ready\n");
        print!("{lines}");
        use std::io::Write;
        std::io::stdout().flush()?;
        // Serve until the benchmark closes our stdin (or dies).
        let _ = tokio::task::spawn_blocking(|| {
            std::io::Read::read_to_end(&mut std::io::stdin(), &mut Vec::new())
        })
        .await;
        Ok(())
    })
}
