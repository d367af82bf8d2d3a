//! `cargo xtask bake-ami`: the custom AMI made from the seed instance.

use std::time::Duration;

use anyhow::Context;
use autoscaler_controller::ec2::GROUP_TAG;
use aws_sdk_ec2::client::Waiters;
use aws_sdk_ec2::types::{ResourceType, TagSpecification};

use super::{Aws, GroupArgs, explain, spinning, tag, waited};
use autoscaler_controller::ec2::InstanceRole;

/// Creates the custom AMI from the seed, waits until it is available, tags it and records its id
/// in `/autoscaler/<group>/ami`.
#[derive(Debug, clap::Args)]
pub struct BakeAmi {
    #[command(flatten)]
    pub group: GroupArgs,
    /// Terminate the seed instance once the AMI is available.
    #[arg(long)]
    pub terminate_seed: bool,
}

impl BakeAmi {
    pub async fn run(self) -> anyhow::Result<()> {
        let aws = Aws::connect(&self.group.group).await?;
        self.run_with(&aws).await
    }

    pub async fn run_with(self, aws: &Aws) -> anyhow::Result<()> {
        eprintln!("bake-ami of group {}", aws.group);
        let seeds = aws.instances(&[InstanceRole::Seed]).await?;
        let images: Vec<_> = aws
            .images()
            .await?
            .into_iter()
            .filter(|i| i.state().map(|s| s.as_str()) != Some("deregistered"))
            .collect();
        let seed = seeds
            .iter()
            .find(|s| s.state == "running" || s.state == "stopped");
        // Run again, it reuses the image this seed made (or, the seed gone, the newest): a new
        // seed (a new `bootstrap`, a new version of the agent) makes a new image.
        let existing = match seed {
            Some(seed) => images
                .iter()
                .find(|i| i.source_instance_id() == Some(seed.instance_id.as_str())),
            None => images
                .iter()
                .max_by_key(|i| i.creation_date().unwrap_or("")),
        };
        let image_id = match existing {
            Some(image) => {
                let id = image.image_id().unwrap_or("").to_string();
                eprintln!("  reusing the group's image {id}");
                id
            }
            None => {
                let seed = seed.with_context(|| {
                    format!(
                        "no seed instance: run `cargo xtask bootstrap --group {}` first",
                        aws.group
                    )
                })?;
                let stamp = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)?
                    .as_secs();
                let output = aws
                    .ec2
                    .create_image()
                    .instance_id(&seed.instance_id)
                    .name(format!("autoscaler-{}-{stamp}", aws.group))
                    .description(format!("autoscaler agent for group {}", aws.group))
                    .tag_specifications(
                        TagSpecification::builder()
                            .resource_type(ResourceType::Image)
                            .tags(tag(GROUP_TAG, &aws.group))
                            .tags(tag("Name", &format!("autoscaler-{}", aws.group)))
                            .build(),
                    )
                    .send()
                    .await
                    .map_err(|e| explain("create the image", e))?;
                let id = output
                    .image_id()
                    .context("CreateImage returned no id")?
                    .to_string();
                eprintln!("  creating the image {id} from {}", seed.instance_id);
                id
            }
        };
        // The SDK's waiter: it also ends at once on a failed image.
        let what = format!("the image {image_id} to be available");
        let timeout = Duration::from_secs(1800);
        spinning(&what, async {
            let result = aws
                .ec2
                .wait_until_image_available()
                .image_ids(&image_id)
                .wait(timeout)
                .await;
            waited(&what, timeout, result)
        })
        .await?;
        aws.parameters
            .put(&aws.names.ami(), &image_id, false)
            .await?;
        eprintln!("  recorded {image_id} in {}", aws.names.ami());
        if self.terminate_seed {
            let ids: Vec<String> = seeds.iter().map(|s| s.instance_id.clone()).collect();
            if !ids.is_empty() {
                aws.ec2
                    .terminate_instances()
                    .set_instance_ids(Some(ids.clone()))
                    .send()
                    .await
                    .map_err(|e| explain("terminate the seed", e))?;
                aws.wait_terminated(&ids, Duration::from_secs(600)).await?;
            }
        }
        eprintln!(
            "bake-ami done: {image_id}; next: cargo xtask up --group {}",
            aws.group
        );
        Ok(())
    }
}
