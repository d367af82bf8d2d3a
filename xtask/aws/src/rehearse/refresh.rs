//! The rehearsal's rollout: `bake-ami` a second time, `refresh --ami` to it through the leader's
//! Operator service (with the new version's user data), and check that every instance of the
//! group ends on the new AMI with its version tag and user data, the old AMI's instances gone,
//! and the activity history telling it.

use std::time::Duration;

use anyhow::{Context, ensure};
use autoscaler_controller::ec2::{InstanceRole, VERSION_TAG};
use autoscaler_controller::spec::USER_DATA_LIMIT;
use autoscaler_proto::v1;

use super::{bootstrap, described};
use crate::aws::{self, Aws, GroupArgs, wait_for};

pub(super) async fn refresh_to_a_new_ami(aws: &Aws, group: &GroupArgs) -> anyhow::Result<()> {
    let old_ami = aws.parameters.get(&aws.names.ami()).await?;
    bootstrap(group.clone()).run_with(aws).await?;
    aws::BakeAmi {
        group: group.clone(),
        terminate_seed: true,
    }
    .run_with(aws)
    .await?;
    let new_ami = aws.parameters.get(&aws.names.ami()).await?;
    ensure!(new_ami != old_ami, "bake-ami made a new image");
    eprintln!("  baked {new_ami} (the group ran {old_ami})");

    let address = aws.parameters.get(&aws.names.monitor()).await?;
    let credentials = aws.operator_credentials().await?;
    let mut daemon = crate::status_client::Daemon::new(&address, &credentials)?;
    // Bad input first: refused by name, nothing changed.
    let refused = daemon
        .start_refresh(v1::StartInstanceRefreshRequest {
            spec: Some(v1::LaunchSpec {
                image_id: Some("not-an-ami".into()),
                ..v1::LaunchSpec::default()
            }),
            preferences: None,
        })
        .await
        .expect_err("an image id that is not one");
    ensure!(
        format!("{refused:#}").contains("launch_spec.image_id"),
        "the refusal names the field: {refused:#}"
    );
    let refused = daemon
        .start_refresh(v1::StartInstanceRefreshRequest {
            spec: Some(v1::LaunchSpec {
                user_data: Some("x".repeat(USER_DATA_LIMIT + 1)),
                ..v1::LaunchSpec::default()
            }),
            preferences: None,
        })
        .await
        .expect_err("user data above EC2's limit");
    ensure!(
        format!("{refused:#}").contains("launch_spec.user_data"),
        "the refusal names the field: {refused:#}"
    );
    // The new version's settings go in its user data (here a launch hook).
    let user_data =
        "#!/bin/sh\necho 'AUTOSCALER_LAUNCH_HOOK=sleep 1' >> /etc/autoscaler/agent.env\n";
    let refresh = daemon
        .start_refresh(v1::StartInstanceRefreshRequest {
            spec: Some(v1::LaunchSpec {
                image_id: Some(new_ami.clone()),
                user_data: Some(user_data.to_string()),
                ..v1::LaunchSpec::default()
            }),
            preferences: Some(v1::RefreshPreferences {
                max_healthy_percentage: Some(150),
                instance_warmup_secs: Some(1),
                ..v1::RefreshPreferences::default()
            }),
        })
        .await?;
    eprintln!("  refresh {}", aws::refresh_text(&refresh));
    let again = daemon
        .start_refresh(v1::StartInstanceRefreshRequest::default())
        .await
        .expect_err("a second refresh while one runs");
    ensure!(
        format!("{again:#}").contains("cancel it or wait"),
        "the refusal says why: {again:#}"
    );
    let started = std::time::Instant::now();
    let daemon = tokio::sync::Mutex::new(daemon);
    wait_for(
        "the refresh to succeed",
        Duration::from_secs(240),
        Duration::from_millis(500),
        || async {
            let Ok(status) = daemon.lock().await.status_after(u64::MAX).await else {
                return Ok(None);
            };
            let Some(refresh) = status.refresh else {
                return Ok(None);
            };
            ensure!(
                refresh.status != "rolled-back" && refresh.status != "failed",
                "the refresh ended {}: {}",
                refresh.status,
                refresh.reason
            );
            let listed = status.instances.iter().filter(|i| i.listed()).count();
            Ok((refresh.status == "successful" && listed == 2).then_some(refresh))
        },
    )
    .await?;
    let agents = described(aws, InstanceRole::Agent).await?;
    ensure!(agents.len() == 2, "the group has its 2 instances");
    for agent in &agents {
        let id = agent.instance_id().unwrap_or("");
        ensure!(
            agent.image_id() == Some(new_ami.as_str()),
            "{id} runs the new AMI"
        );
        let version = agent
            .tags()
            .iter()
            .find(|t| t.key() == Some(VERSION_TAG))
            .and_then(|t| t.value())
            .with_context(|| format!("{id} has no {VERSION_TAG} tag"))?;
        ensure!(version == refresh.target, "{id} is tagged {version}");
        let attribute = aws
            .ec2
            .describe_instance_attribute()
            .instance_id(id)
            .attribute(aws_sdk_ec2::types::InstanceAttributeName::UserData)
            .send()
            .await
            .with_context(|| format!("the user data of {id}"))?;
        let encoded = attribute
            .user_data()
            .and_then(|u| u.value())
            .with_context(|| format!("{id} has no user data"))?;
        use base64::Engine as _;
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .context("user data in base64")?;
        ensure!(
            decoded == user_data.as_bytes(),
            "{id} boots with the version's user data"
        );
    }
    let history = daemon.lock().await.activity(0).await?;
    let replaced = history
        .iter()
        .filter(|r| {
            r.summary
                .contains(&format!("instance refresh {}", refresh.id))
        })
        .count();
    ensure!(replaced > 0, "the activity history tells the refresh");
    eprintln!(
        "  every instance on {new_ami} ({}) in {:.1} s; the old AMI's instances are gone; {replaced} records tell it",
        refresh.target,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
