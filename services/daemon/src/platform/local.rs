//! The local platform: instances are processes on this machine (the controller's `LocalCloud`),
//! HAProxy is the balancer, the store is a SQLite file in the state dir shared by every daemon
//! of the group on the machine, the TLS material is made in `<state-dir>/tls`, and agents find
//! the leader in `<state-dir>/leader`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use autoscaler_controller::balancer::Balancer;
use autoscaler_controller::cloud::AnyCloud;
use autoscaler_controller::haproxy::{Haproxy, HaproxyConfig};
use autoscaler_controller::local::{AgentEnv, LocalApp, LocalCloud, LocalConfig};
use autoscaler_proto::auth::{Credentials, Token};
use autoscaler_store::{SqliteStore, Store};

use super::{Pending, Platform, TermParts, TlsPlace};
use crate::config::{
    DaemonConfig, DaemonConfigError, HaproxySection, LoadBalancerSection, LocalProvider, StoreKind,
};
use crate::daemon::{DaemonError, Leadership, RunOptions};

/// The local platform of one daemon.
pub struct LocalPlatform {
    section: LocalProvider,
    state_dir: PathBuf,
    tls_dir: PathBuf,
    store: Option<Arc<dyn Store>>,
}

impl LocalPlatform {
    /// Checks the section against the rest of the config and opens the store.
    pub fn open(
        config: &DaemonConfig,
        section: &LocalProvider,
        options: &RunOptions,
    ) -> Result<LocalPlatform, DaemonError> {
        let state_dir = section.state_dir.clone().unwrap_or_else(|| {
            options
                .temp_dir
                .join(format!("autoscaler-{}", config.group))
        });
        match &config.load_balancer {
            Some(LoadBalancerSection::Elb(_)) => {
                return Err(DaemonError::Unsupported(
                    "`load_balancer.kind = \"elb\"` is the EC2 provider's balancer; locally, use \"haproxy\"",
                ));
            }
            Some(LoadBalancerSection::Haproxy(_)) if !section.app => {
                return Err(DaemonError::Unsupported(
                    "a load balancer needs an application to send requests to: set \
                     `provider.app = true`",
                ));
            }
            _ => {}
        }
        // With a store, a daemon leads only while it holds the lease.
        let store = match config.store.kind.unwrap_or(StoreKind::Sqlite) {
            StoreKind::None => None,
            StoreKind::Dynamodb => {
                return Err(DaemonError::Unsupported(
                    "`store.kind = \"dynamodb\"` is the EC2 provider's store; locally, use \"sqlite\"",
                ));
            }
            StoreKind::Sqlite => {
                std::fs::create_dir_all(&state_dir).map_err(|source| DaemonError::Write {
                    path: state_dir.clone(),
                    source,
                })?;
                let path = config
                    .store
                    .path
                    .clone()
                    .unwrap_or_else(|| state_dir.join("store.sqlite"));
                let store = SqliteStore::open(&path).map_err(|source| DaemonError::Store {
                    path: path.clone(),
                    source,
                })?;
                Some(Arc::new(store) as Arc<dyn Store>)
            }
        };
        Ok(LocalPlatform {
            section: section.clone(),
            tls_dir: state_dir.join("tls"),
            state_dir,
            store,
        })
    }
}

impl Platform for LocalPlatform {
    fn store(&self) -> Option<Arc<dyn Store>> {
        self.store.clone()
    }

    fn tls_place(&self) -> TlsPlace<'_> {
        TlsPlace {
            made_in: Some(&self.tls_dir),
            sdk: None,
        }
    }

    fn begin<'a>(
        &'a self,
        config: &'a DaemonConfig,
        options: &'a RunOptions,
        token: &'a Token,
        leadership: Option<&'a Leadership>,
    ) -> Pending<'a, TermParts> {
        Box::pin(async move {
            let local = &self.section;
            // Resolved again once leading: it is made here if the standby found none.
            let (transport, tls_dir) = options
                .tls
                .resolve(&config.group, Some(&self.tls_dir), None)
                .await?;
            let credentials = Credentials::new(token.clone(), transport);
            // Agents find the leader in a file the leader writes: they follow a standby that
            // takes over (and carry no SQLite).
            let monitor_file = match leadership {
                Some(_) => {
                    let file = self.state_dir.join("leader");
                    publish_file(&file, &options.advertise)?;
                    Some(file)
                }
                None => None,
            };
            let beside = |name: &str| {
                options
                    .agent_binary
                    .parent()
                    .map_or_else(|| PathBuf::from(name), |dir| dir.join(name))
            };
            let app = local.app.then(|| LocalApp {
                binary: local
                    .app_binary
                    .clone()
                    .unwrap_or_else(|| beside("autoscaler-app")),
                args: local.app_args.clone(),
            });
            let haproxy = match &config.load_balancer {
                Some(LoadBalancerSection::Haproxy(section)) => Some(Arc::new(
                    Haproxy::start(haproxy_config(section, &self.state_dir, &options.path)?)
                        .await?,
                )),
                _ => None,
            };
            let cloud = Arc::new(LocalCloud::open(LocalConfig {
                state_dir: self.state_dir.clone(),
                agent_binary: local
                    .agent_binary
                    .clone()
                    .unwrap_or_else(|| options.agent_binary.clone()),
                monitor_address: options.advertise.clone(),
                monitor_file,
                agent_env: AgentEnv(vec![(
                    "AUTOSCALER_TOKEN".to_string(),
                    token.expose().to_string(),
                )]),
                tls_dir,
                agent_args: local.agent_args.clone(),
                terminate_grace: Duration::from_millis(local.terminate_grace_ms),
                app,
            })?);
            tracing::info!(state_dir = %cloud.state_dir().display(), "local provider");
            let (leaving_cloud, leaving_haproxy) = (cloud.clone(), haproxy.clone());
            // A successor keeps the instances (and runs its own HAProxy): they are left to it.
            let leaving: super::Leaving = Box::new(move |handed_over: bool| {
                Box::pin(async move {
                    if handed_over {
                        tracing::info!("another daemon leads now: its instances are left to it");
                        return;
                    }
                    leaving_cloud.terminate_all().await;
                    if let Some(haproxy) = leaving_haproxy {
                        haproxy.stop().await;
                    }
                })
            });
            Ok(TermParts {
                credentials,
                cloud: AnyCloud(cloud),
                balancer: haproxy.map(|haproxy| haproxy as Arc<dyn Balancer>),
                leaving,
            })
        })
    }
}

/// `program` as given when it names a path; a bare name is looked up in `path` (the `PATH`
/// that `main` read), then in the sbin directories, where Debian installs haproxy but which an
/// ordinary user's `PATH` lacks.
fn find_program(program: &Path, path: &std::ffi::OsStr) -> PathBuf {
    if program.components().count() > 1 {
        return program.to_path_buf();
    }
    std::env::split_paths(path)
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| program.to_path_buf())
}

/// The local balancer's settings: its files in `<state-dir>/haproxy`.
fn haproxy_config(
    section: &HaproxySection,
    state_dir: &Path,
    path: &std::ffi::OsStr,
) -> Result<HaproxyConfig, DaemonError> {
    let listen = section.listen.parse().map_err(|_| {
        DaemonError::Config(DaemonConfigError::Parse(format!(
            "`load_balancer.listen` is {:?}; it must be an ip:port",
            section.listen
        )))
    })?;
    Ok(HaproxyConfig {
        binary: find_program(&section.binary, path),
        listen,
        dir: state_dir.join("haproxy"),
        health_path: section.health_path.clone(),
        check_interval: Duration::from_millis(section.check_interval_ms),
        unhealthy_after: section.unhealthy_after,
        healthy_after: section.healthy_after,
    })
}

/// Writes `text` to `path` whole (a reader never sees half of it).
fn publish_file(path: &Path, text: &str) -> Result<(), DaemonError> {
    let temporary = path.with_extension("new");
    std::fs::write(&temporary, format!("{text}\n"))
        .and_then(|()| std::fs::rename(&temporary, path))
        .map_err(|source| DaemonError::Write {
            path: path.to_path_buf(),
            source,
        })
}
