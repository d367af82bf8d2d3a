//! The AWS platform: instances are EC2 instances launched from the group's AMI (the
//! controller's `Ec2Cloud`), an ELB target group is the balancer, the store is the group's
//! DynamoDB table (or none: one monitor host), the TLS material is read from SSM, and the
//! leader publishes its address to SSM Parameter Store, where agents read it.

use std::sync::Arc;
use std::time::Duration;

use autoscaler_controller::balancer::Balancer;
use autoscaler_controller::cloud::AnyCloud;
use autoscaler_controller::ec2::{Ec2Cloud, Ec2Config, TargetGroup};
use autoscaler_proto::auth::{Credentials, Token};
use autoscaler_store::{DynamoStore, SqliteStore, Store};

use super::{Pending, Platform, TermParts, TlsPlace};
use crate::config::{DaemonConfig, LoadBalancerSection, StoreKind};
use crate::daemon::{DaemonError, Leadership, RunOptions};
use crate::tls_source::TlsSource;

/// What every instance launched for a group with a load balancer runs at boot: its application,
/// and its agent reporting that application's load.
const AGENT_APP_USER_DATA: &str = include_str!("../../../../provisioning/agent-app-user-data.sh");

/// The AWS platform of one monitor host.
pub struct AwsPlatform {
    section: Ec2Config,
    sdk: aws_config::SdkConfig,
    store: Option<Arc<dyn Store>>,
}

impl AwsPlatform {
    /// Checks the section against the rest of the config (refused before anything is opened)
    /// and opens the store.
    pub fn open(
        config: &DaemonConfig,
        section: Ec2Config,
        options: &RunOptions,
    ) -> Result<AwsPlatform, DaemonError> {
        if matches!(options.tls, TlsSource::Plaintext) {
            return Err(DaemonError::Unsupported(
                "plaintext is for local runs only: the EC2 provider always uses TLS",
            ));
        }
        let sdk = options.aws.clone().ok_or(DaemonError::Unsupported(
            "the EC2 provider needs AWS settings",
        ))?;
        if let Some(LoadBalancerSection::Haproxy(_)) = &config.load_balancer {
            return Err(DaemonError::Unsupported(
                "`load_balancer.kind = \"haproxy\"` is the local provider's balancer",
            ));
        }
        // With a store, a monitor host leads only while it holds the lease (`up --standby`
        // starts a second host).
        let store: Option<Arc<dyn Store>> = match config.store.kind.unwrap_or(StoreKind::None) {
            StoreKind::None => None,
            StoreKind::Dynamodb => Some(Arc::new(DynamoStore::new(
                &sdk,
                &config
                    .store
                    .table
                    .clone()
                    .unwrap_or_else(|| DynamoStore::table_name(&config.group)),
            ))),
            StoreKind::Sqlite => {
                let path = config.store.path.clone().ok_or(DaemonError::StoreSetting(
                    "`store.path` is needed for a SQLite store with the EC2 provider",
                ))?;
                Some(Arc::new(SqliteStore::open(&path).map_err(|source| {
                    DaemonError::Store {
                        path: path.clone(),
                        source,
                    }
                })?))
            }
        };
        Ok(AwsPlatform {
            section,
            sdk,
            store,
        })
    }
}

impl Platform for AwsPlatform {
    fn store(&self) -> Option<Arc<dyn Store>> {
        self.store.clone()
    }

    fn tls_place(&self) -> TlsPlace<'_> {
        TlsPlace {
            made_in: None,
            sdk: Some(&self.sdk),
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
            let sdk = &self.sdk;
            let mut cloud = Ec2Cloud::open(sdk, &config.group, self.section.clone()).await?;
            if let Some(leadership) = leadership {
                cloud = cloud.with_epoch(leadership.epoch());
            }
            let mut balancer: Option<Arc<dyn Balancer>> = None;
            if let Some(LoadBalancerSection::Elb(elb)) = &config.load_balancer {
                let group =
                    TargetGroup::open(sdk, &config.group, &elb.target_group_arn, elb.app_port)
                        .await?;
                tracing::info!(target_group = %group.arn(), port = elb.app_port, "load balancer");
                cloud = cloud.with_app(elb.app_port, AGENT_APP_USER_DATA);
                balancer = Some(Arc::new(group));
            }
            tracing::info!(ami = %cloud.config().ami_id, subnets = ?cloud.config().subnet_ids, "EC2 provider");
            // Read again once leading, not taken from the standby's: it may have changed in
            // SSM while this host stood by.
            let (transport, _) = options.tls.resolve(&config.group, None, Some(sdk)).await?;
            // The leader publishes its address; agents read it again at every registration.
            publish_address(sdk, &config.group, &options.advertise).await?;
            Ok(TermParts {
                credentials: Credentials::new(token.clone(), transport),
                cloud: AnyCloud(Arc::new(cloud)),
                balancer,
                // EC2 instances outlive the daemon: `cargo xtask down` removes them.
                leaving: Box::new(|_| Box::pin(async {})),
            })
        })
    }
}

/// Writes the monitor's address to `/autoscaler/<group>/monitor`, where agents look for it.
async fn publish_address(
    sdk: &aws_config::SdkConfig,
    group: &str,
    advertise: &str,
) -> Result<(), DaemonError> {
    let name = autoscaler_aws::GroupParameters::new(group).monitor();
    let parameters = autoscaler_aws::Parameters::new(sdk);
    let mut backoff = autoscaler_policy::backoff::Backoff::new(
        Duration::from_millis(500),
        Duration::from_secs(8),
    );
    let mut attempt = 1;
    loop {
        match parameters.put(&name, advertise, false).await {
            Ok(()) => {
                tracing::info!(parameter = %name, address = %advertise, "monitor address published");
                return Ok(());
            }
            Err(error) if attempt < 5 => {
                let pause = backoff.failed();
                tracing::warn!(%error, retry_in = ?pause, "cannot publish the monitor's address");
                tokio::time::sleep(pause).await;
                attempt += 1;
            }
            Err(error) => return Err(DaemonError::Publish(error)),
        }
    }
}
