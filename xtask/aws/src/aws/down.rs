//! `cargo xtask down`: the monitor host first, then every agent, swept until nothing of the
//! group runs (and with `--purge`, its parameters and bucket).

use std::time::Duration;

use aws_sdk_ec2::error::ProvideErrorMetadata;

use super::{Aws, GroupArgs, explain, wait_for};
use autoscaler_controller::ec2::InstanceRole;

/// Stops the controller first (the monitor host), then terminates the group's instances and
/// deletes its parameters. `--purge` also removes the AMI, its snapshots and what bootstrap made.
#[derive(Debug, clap::Args)]
pub struct Down {
    #[command(flatten)]
    pub group: GroupArgs,
    /// Also deregister the AMI, delete its snapshots, the bucket, the seed and the security group.
    #[arg(long)]
    pub purge: bool,
    /// Show what would go, and change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

impl Down {
    pub async fn run(self) -> anyhow::Result<()> {
        let aws = Aws::connect(&self.group.group).await?;
        self.run_with(&aws).await
    }

    pub async fn run_with(self, aws: &Aws) -> anyhow::Result<()> {
        let verb = if self.dry_run {
            "would remove"
        } else {
            "removing"
        };
        eprintln!(
            "down of group {}{}",
            aws.group,
            if self.dry_run { " (dry run)" } else { "" }
        );
        let instances = aws.instances(&[]).await?;
        let monitors: Vec<String> = instances
            .iter()
            .filter(|i| i.role == Some(InstanceRole::Monitor))
            .map(|i| i.instance_id.clone())
            .collect();
        let agents: Vec<String> = instances
            .iter()
            .filter(|i| i.role == Some(InstanceRole::Agent))
            .map(|i| i.instance_id.clone())
            .collect();
        let seeds: Vec<String> = instances
            .iter()
            .filter(|i| i.role == Some(InstanceRole::Seed))
            .map(|i| i.instance_id.clone())
            .collect();
        for (what, ids) in [("monitor host", &monitors), ("instance", &agents)] {
            for id in ids {
                eprintln!("  {verb} {what} {id}");
            }
        }
        let mut parameters = vec![aws.names.monitor(), aws.names.token()];
        parameters.extend(aws.names.tls_all());
        let images = if self.purge {
            aws.images().await?
        } else {
            Vec::new()
        };
        if self.purge {
            for id in &seeds {
                eprintln!("  {verb} seed instance {id}");
            }
            for image in &images {
                eprintln!(
                    "  {verb} image {} and its snapshots",
                    image.image_id().unwrap_or("")
                );
            }
            parameters.push(aws.names.ami());
            parameters.push(aws.names.bucket());
            if let Ok(bucket) = aws.parameters.get(&aws.names.bucket()).await {
                eprintln!("  {verb} bucket {bucket}");
            }
            if let Some(group_id) = aws.security_group().await? {
                eprintln!("  {verb} security group {group_id}");
            }
            eprintln!(
                "  {verb} the store's DynamoDB table {} (the lease, the policy's memory, the activity history), if there is one",
                autoscaler_store::DynamoStore::table_name(&aws.group)
            );
        }
        let balancer = aws.balancer_parts().await?;
        if let Some(arn) = &balancer.load_balancer_arn {
            eprintln!(
                "  {verb} load balancer {} ({arn}) and its listener",
                balancer.dns_name.as_deref().unwrap_or("")
            );
        }
        if let Some(arn) = &balancer.target_group_arn {
            eprintln!("  {verb} target group {arn}");
        }
        if let Some(id) = &balancer.security_group_id {
            eprintln!("  {verb} the load balancer's security group {id}");
        }
        for name in &parameters {
            eprintln!("  {verb} parameter {name}");
        }
        if self.dry_run {
            return Ok(());
        }

        // The controller first, so that nothing is replaced while the fleet goes: its host
        // terminated, then its address silent (a terminated host cannot answer; from outside
        // the VPC the private address does not answer either), and only then the agents.
        let monitor_address = match aws.parameters.get(&aws.names.monitor()).await {
            Ok(address) => Some(address),
            Err(autoscaler_aws::SsmError::NotFound(_)) => None,
            Err(error) => return Err(error.into()),
        };
        terminate(aws, &monitors).await?;
        if let Some(address) = monitor_address {
            wait_for(
                "the monitor to stop answering",
                Duration::from_secs(120),
                Duration::from_millis(500),
                || async { Ok((!answers(&address).await).then_some(())) },
            )
            .await?;
        }
        let mut rest = agents;
        if self.purge {
            rest.extend(seeds);
        }
        terminate(aws, &rest).await?;
        // A launch the controller made just before it stopped shows up only now: sweep
        // until a listing of the group finds nothing running.
        for _ in 0..5 {
            let roles: &[InstanceRole] = if self.purge {
                &[
                    InstanceRole::Monitor,
                    InstanceRole::Agent,
                    InstanceRole::Seed,
                ]
            } else {
                &[InstanceRole::Monitor, InstanceRole::Agent]
            };
            let left: Vec<String> = aws
                .instances(roles)
                .await?
                .into_iter()
                .filter(|i| i.state != "terminated" && i.state != "shutting-down")
                .map(|i| i.instance_id)
                .collect();
            if left.is_empty() {
                break;
            }
            for id in &left {
                eprintln!("  removing instance {id} (launched while the group went down)");
            }
            terminate(aws, &left).await?;
        }
        if !balancer.is_empty() {
            aws.delete_balancer(&balancer).await?;
        }
        for name in &parameters {
            if name == &aws.names.bucket() {
                continue;
            }
            aws.parameters.delete(name).await?;
        }
        if self.purge {
            for image in &images {
                let image_id = image.image_id().unwrap_or("");
                aws.ec2
                    .deregister_image()
                    .image_id(image_id)
                    .send()
                    .await
                    .map_err(|e| explain("deregister the image", e))?;
                for snapshot in image
                    .block_device_mappings()
                    .iter()
                    .filter_map(|m| m.ebs().and_then(|e| e.snapshot_id()))
                {
                    aws.ec2
                        .delete_snapshot()
                        .snapshot_id(snapshot)
                        .send()
                        .await
                        .map_err(|e| explain("delete a snapshot", e))?;
                }
            }
            delete_bucket(aws).await?;
            autoscaler_store::DynamoStore::new(
                &aws.sdk,
                &autoscaler_store::DynamoStore::table_name(&aws.group),
            )
            .delete_table()
            .await
            .map_err(|error| anyhow::anyhow!("cannot delete the store's table: {error}"))?;
            aws.parameters.delete(&aws.names.bucket()).await?;
            if let Some(group_id) = aws.security_group().await? {
                wait_for(
                    "the security group to be free",
                    Duration::from_secs(300),
                    Duration::from_secs(5),
                    || async {
                        match aws
                            .ec2
                            .delete_security_group()
                            .group_id(&group_id)
                            .send()
                            .await
                        {
                            Ok(_) => Ok(Some(())),
                            Err(error) if error.code() == Some("DependencyViolation") => Ok(None),
                            Err(error) => Err(explain("delete the security group", error)),
                        }
                    },
                )
                .await?;
            }
        }
        eprintln!(
            "down done: group {} {}",
            aws.group,
            if self.purge { "purged" } else { "stopped" }
        );
        Ok(())
    }
}

/// Whether something accepts TCP connections at `address` within a second.
async fn answers(address: &str) -> bool {
    matches!(
        tokio::time::timeout(
            Duration::from_secs(1),
            tokio::net::TcpStream::connect(address)
        )
        .await,
        Ok(Ok(_))
    )
}

async fn terminate(aws: &Aws, ids: &[String]) -> anyhow::Result<()> {
    if ids.is_empty() {
        return Ok(());
    }
    aws.ec2
        .terminate_instances()
        .set_instance_ids(Some(ids.to_vec()))
        .send()
        .await
        .map_err(|e| explain("terminate instances", e))?;
    aws.wait_terminated(ids, Duration::from_secs(600)).await
}

async fn delete_bucket(aws: &Aws) -> anyhow::Result<()> {
    let Ok(bucket) = aws.parameters.get(&aws.names.bucket()).await else {
        return Ok(());
    };
    let mut s3_config = aws_sdk_s3::config::Builder::from(&aws.sdk);
    if aws.sdk.endpoint_url().is_some() {
        s3_config = s3_config.force_path_style(true);
    }
    let s3 = aws_sdk_s3::Client::from_conf(s3_config.build());
    let listed = match s3.list_objects_v2().bucket(&bucket).send().await {
        Ok(listed) => listed,
        Err(error) if error.code() == Some("NoSuchBucket") => return Ok(()),
        Err(error) => return Err(explain("list the bucket", error)),
    };
    for object in listed.contents() {
        if let Some(key) = object.key() {
            s3.delete_object()
                .bucket(&bucket)
                .key(key)
                .send()
                .await
                .map_err(|e| explain("empty the bucket", e))?;
        }
    }
    s3.delete_bucket()
        .bucket(&bucket)
        .send()
        .await
        .map_err(|e| explain("delete the bucket", e))?;
    Ok(())
}
