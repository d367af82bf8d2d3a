//! `cargo xtask rehearse`: the whole AWS workflow (bootstrap, bake-ami, up, a load cycle to the
//! maximum and back to the minimum, down --purge) against a throwaway moto server. The emulator
//! runs nothing inside its instances, so the runner (`runner.rs`) plays their hosts. This file
//! is the scenario: it checks along the way what an AWS user would see, and that nothing of the
//! group is left at the end.

mod refresh;
mod runner;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use autoscaler_aws::Timeouts;
use autoscaler_controller::ec2::{GROUP_TAG, InstanceRole, ROLE_TAG};
use autoscaler_proto::auth::Credentials;
use autoscaler_proto::tls::Role;
use autoscaler_proto::v1;

use autoscaler_testkit::moto::Moto;
use runner::Runner;

use crate::aws::{self, Aws, GroupArgs, wait_for};
use crate::util;

/// The public parameter the rehearsal takes its base image from (moto has no Ubuntu parameter).
const EMULATOR_BASE_IMAGE: &str =
    "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64";

#[derive(Debug, clap::Args)]
pub struct Rehearse {
    /// The group's name in the emulator.
    #[arg(long, default_value = "rehearsal")]
    group: String,
}

impl Rehearse {
    pub async fn run(self) -> anyhow::Result<()> {
        let sh = util::shell()?;
        util::build_binaries(&sh)?;
        let log_dir =
            std::env::temp_dir().join(format!("autoscaler-rehearsal-{}", std::process::id()));
        std::fs::create_dir_all(&log_dir)?;
        eprintln!(
            "rehearsal of the AWS workflow for group {}; logs in {}",
            self.group,
            log_dir.display()
        );
        util::python_venv(&sh)?;
        let emulator = Moto::start(Some(&log_dir.join("moto.log")))?;
        eprintln!("emulator: moto server at {}", emulator.endpoint);
        let sdk = autoscaler_aws::emulator_config(&emulator.endpoint, Timeouts::default()).await;
        let aws = Aws::with_config(sdk.clone(), &self.group);
        missing_pieces_are_named(&aws).await?;
        prepare_account(&aws).await?;

        let runner = Runner::start(
            Aws::with_config(sdk.clone(), &self.group),
            &emulator.endpoint,
            &log_dir,
            &util::profile_dir("dev")?,
        );
        let result = self.steps(&aws, &runner).await;
        runner.stop().await;
        drop(emulator);
        result?;
        eprintln!(
            "rehearsal passed: bootstrap, bake-ami, up with a load balancer and a standby, 2 -> 3 -> 2 with every instance a target, a failover, a refresh to a second AMI, down --purge; nothing of group {} is left in the emulator",
            self.group
        );
        Ok(())
    }

    async fn steps(&self, aws: &Aws, runner: &runner::RunningRunner) -> anyhow::Result<()> {
        let group = GroupArgs {
            group: self.group.clone(),
        };
        eprintln!("\n== cargo xtask bootstrap ==");
        bootstrap(group.clone()).run_with(aws).await?;
        let seeds = described(aws, InstanceRole::Seed).await?;
        ensure!(seeds.len() == 1, "one seed instance, found {}", seeds.len());
        let seed = &seeds[0];
        let seed_id = seed.instance_id().unwrap_or("").to_string();
        check_instance(seed, InstanceRole::Seed, &self.group)?;
        let base = aws.parameters.get(EMULATOR_BASE_IMAGE).await?;
        ensure!(
            seed.image_id() == Some(base.as_str()),
            "the seed runs the base image"
        );
        ensure!(
            aws.security_group().await?.is_some(),
            "the group's security group exists"
        );
        // Running bootstrap again continues rather than duplicates.
        bootstrap(group.clone()).run_with(aws).await?;
        ensure!(
            described(aws, InstanceRole::Seed).await?.len() == 1,
            "a second bootstrap launched another seed"
        );

        eprintln!("\n== cargo xtask bake-ami --terminate-seed ==");
        aws::BakeAmi {
            group: group.clone(),
            terminate_seed: true,
        }
        .run_with(aws)
        .await?;
        let ami = aws.parameters.get(&aws.names.ami()).await?;
        let images = aws.images().await?;
        ensure!(
            images.len() == 1,
            "one image of the group, found {}",
            images.len()
        );
        ensure!(
            images[0].image_id() == Some(ami.as_str()),
            "the parameter names the image"
        );
        ensure!(
            images[0].source_instance_id() == Some(seed_id.as_str()),
            "the image comes from the seed"
        );
        ensure!(
            described(aws, InstanceRole::Seed).await?.is_empty(),
            "the seed is terminated"
        );

        eprintln!("\n== cargo xtask up --load-balancer --standby ==");
        aws::Up {
            group: group.clone(),
            config: "provisioning/rehearsal.toml".into(),
            timeout: 180,
            load_balancer: true,
            load_balancer_from: "0.0.0.0/0".into(),
            standby: true,
        }
        .run_with(aws)
        .await?;
        check_balancer(aws).await?;
        let monitors = described(aws, InstanceRole::Monitor).await?;
        ensure!(monitors.len() == 2, "a monitor host and a standby");
        for monitor in &monitors {
            check_instance(monitor, InstanceRole::Monitor, &self.group)?;
            ensure!(
                monitor.image_id() == Some(ami.as_str()),
                "the monitor hosts run the custom AMI"
            );
        }
        let address = aws.parameters.get(&aws.names.monitor()).await?;
        ensure!(
            address.starts_with("127.0.0.1:"),
            "the published address is the monitor's: {address}"
        );
        let token_type = aws
            .ssm
            .get_parameter()
            .name(aws.names.token())
            .send()
            .await
            .map_err(|e| aws::explain("read the token parameter", e))?
            .parameter()
            .and_then(|p| p.r#type().cloned());
        ensure!(
            token_type == Some(aws_sdk_ssm::types::ParameterType::SecureString),
            "the token is a SecureString"
        );

        for name in aws.names.tls_all() {
            let kind = aws
                .ssm
                .get_parameter()
                .name(&name)
                .send()
                .await
                .map_err(|e| aws::explain("read a TLS parameter", e))?
                .parameter()
                .and_then(|p| p.r#type().cloned());
            ensure!(
                kind == Some(aws_sdk_ssm::types::ParameterType::SecureString),
                "{name} is a SecureString"
            );
        }

        eprintln!("\n== a load cycle: up to the maximum, down to the minimum ==");
        let token = aws.parameters.get(&aws.names.token()).await?;
        let credentials = aws.operator_credentials().await?;
        load_cycle(aws, &address, &credentials).await?;
        eprintln!(
            "\n== cargo xtask status (from AWS), then --monitor (straight from the monitor) =="
        );
        aws::print_status(aws).await?;
        // Not the log dir (`autoscaler-rehearsal-<pid>`): removing this one must leave the
        // runner somewhere to write the logs of the instances it starts later.
        let private = std::env::temp_dir().join(format!(
            "autoscaler-rehearsal-{}-operator",
            std::process::id()
        ));
        let token_file = private.join("token");
        let tls_dir = private.join("tls");
        autoscaler_aws::tls_material(&aws.parameters, &aws.names, Role::Operator)
            .await?
            .write_dir(&tls_dir)?;
        std::fs::write(&token_file, &token)?;
        let shown = aws::Status {
            target: aws::MonitorArgs {
                group: group.clone(),
                monitor: Some(address.clone()),
                token_file: Some(token_file.clone()),
                tls_dir: Some(tls_dir),
                plaintext: false,
            },
            activity: false,
            since: "1h".into(),
            follow: false,
        }
        .run()
        .await;
        let _ = std::fs::remove_dir_all(&private);
        shown?;

        eprintln!("\n== failover: the leader's monitor host terminated ==");
        failover(aws, runner, &address).await?;

        eprintln!("\n== cargo xtask bake-ami again, then refresh --ami ==");
        refresh::refresh_to_a_new_ami(aws, &group).await?;

        eprintln!("\n== cargo xtask down --purge --dry-run ==");
        aws::Down {
            group: group.clone(),
            purge: true,
            dry_run: true,
        }
        .run_with(aws)
        .await?;
        ensure!(
            described(aws, InstanceRole::Agent).await?.len() == 2,
            "a dry run changes nothing"
        );
        eprintln!("\n== cargo xtask down --purge ==");
        aws::Down {
            group,
            purge: true,
            dry_run: false,
        }
        .run_with(aws)
        .await?;
        nothing_left(aws).await
    }
}

/// Before the account has what the workflow needs, each command stops with a message naming the
/// missing piece, and changes nothing.
async fn missing_pieces_are_named(aws: &Aws) -> anyhow::Result<()> {
    eprintln!("\n== commands on an account that lacks what they need ==");
    let group = GroupArgs {
        group: aws.group.clone(),
    };
    let error = bootstrap(group.clone())
        .run_with(aws)
        .await
        .expect_err("bootstrap without a key pair");
    ensure!(
        error.to_string().contains("key pair vockey not found"),
        "bootstrap said: {error:#}"
    );
    eprintln!("  bootstrap: {error}");
    aws.ec2
        .create_key_pair()
        .key_name("vockey")
        .send()
        .await
        .map_err(|e| aws::explain("create the key pair", e))?;
    let error = bootstrap(group.clone())
        .run_with(aws)
        .await
        .expect_err("bootstrap without the profile");
    ensure!(
        error
            .to_string()
            .contains("instance profile LabInstanceProfile missing"),
        "bootstrap said: {error:#}"
    );
    eprintln!("  bootstrap: {error}");
    let error = aws::BakeAmi {
        group: group.clone(),
        terminate_seed: false,
    }
    .run_with(aws)
    .await
    .expect_err("bake-ami before bootstrap");
    ensure!(
        error.to_string().contains("no seed instance"),
        "bake-ami said: {error:#}"
    );
    eprintln!("  bake-ami: {error}");
    let error = aws::Up {
        group,
        config: "provisioning/rehearsal.toml".into(),
        timeout: 10,
        load_balancer: false,
        load_balancer_from: "0.0.0.0/0".into(),
        standby: false,
    }
    .run_with(aws)
    .await
    .expect_err("up before bake-ami");
    ensure!(
        error.to_string().contains("no custom AMI"),
        "up said: {error:#}"
    );
    eprintln!("  up: {error}");
    ensure!(
        aws.instances(&[]).await?.is_empty(),
        "a refused command launched something"
    );
    Ok(())
}

fn bootstrap(group: GroupArgs) -> aws::Bootstrap {
    aws::Bootstrap {
        group,
        base_image_parameter: EMULATOR_BASE_IMAGE.to_string(),
        base_image: None,
        instance_type: "t2.micro".into(),
        key_name: "vockey".into(),
        instance_profile: "LabInstanceProfile".into(),
        ssh_from: None,
        debug_binaries: true,
    }
}

/// What an AWS Academy account provides: the key pair `vockey` (made above) and the
/// `LabInstanceProfile`.
async fn prepare_account(aws: &Aws) -> anyhow::Result<()> {
    aws_sdk_iam::Client::new(&aws.sdk)
        .create_instance_profile()
        .instance_profile_name("LabInstanceProfile")
        .send()
        .await
        .map_err(|e| aws::explain("create the instance profile", e))?;
    Ok(())
}

/// The group's non-terminated instances of `role`, as DescribeInstances returns them.
async fn described(
    aws: &Aws,
    role: InstanceRole,
) -> anyhow::Result<Vec<aws_sdk_ec2::types::Instance>> {
    aws.described(&[role], &["pending", "running", "stopped"])
        .await
}

fn check_instance(
    instance: &aws_sdk_ec2::types::Instance,
    role: InstanceRole,
    group: &str,
) -> anyhow::Result<()> {
    let id = instance.instance_id().unwrap_or("?");
    ensure!(
        instance.instance_type().map(|t| t.as_str()) == Some("t2.micro"),
        "{id}: not a t2.micro"
    );
    ensure!(
        instance.key_name() == Some("vockey"),
        "{id}: key pair is not vockey"
    );
    let tags: BTreeMap<&str, &str> = instance
        .tags()
        .iter()
        .filter_map(|t| Some((t.key()?, t.value()?)))
        .collect();
    ensure!(
        tags.get(GROUP_TAG) == Some(&group),
        "{id}: group tag {tags:?}"
    );
    ensure!(
        tags.get(ROLE_TAG) == Some(&role.tag_value()),
        "{id}: role tag {tags:?}"
    );
    ensure!(
        tags.get("Name") == Some(&format!("autoscaler-{group}-{role}").as_str()),
        "{id}: Name tag {tags:?}"
    );
    ensure!(
        instance
            .iam_instance_profile()
            .and_then(|p| p.arn())
            .is_some_and(|arn| arn.ends_with("LabInstanceProfile")),
        "{id}: instance profile"
    );
    Ok(())
}

/// Drives every healthy agent's load high until the fleet stands at its maximum, then low until
/// it is back at its minimum, as a load balancer spreading demand would.
/// After `up --load-balancer`: the load balancer, its listener and the target group exist and
/// are recorded, and only the load balancer may reach the application's port.
async fn check_balancer(aws: &Aws) -> anyhow::Result<()> {
    let parts = aws.balancer_parts().await?;
    let (Some(lb), Some(target_group), Some(alb_group)) = (
        &parts.load_balancer_arn,
        &parts.target_group_arn,
        &parts.security_group_id,
    ) else {
        bail!("the load balancer is incomplete: {parts:?}");
    };
    ensure!(
        &aws.parameters.get(&aws.names.target_group()).await? == target_group,
        "the target group's ARN is recorded"
    );
    ensure!(
        aws.parameters.get(&aws.names.load_balancer()).await?
            == parts.dns_name.clone().unwrap_or_default(),
        "the load balancer's DNS name is recorded"
    );
    let listeners = aws
        .elb
        .describe_listeners()
        .load_balancer_arn(lb)
        .send()
        .await
        .map_err(|e| aws::explain("describe the listeners", e))?;
    ensure!(
        listeners.listeners().iter().any(|l| l.port() == Some(80)),
        "an HTTP listener on port 80"
    );
    let instances_group = aws
        .security_group()
        .await?
        .context("the group's security group")?;
    let rules = aws
        .ec2
        .describe_security_groups()
        .group_ids(&instances_group)
        .send()
        .await
        .map_err(|e| aws::explain("describe the security group", e))?;
    let app_rule = rules
        .security_groups()
        .iter()
        .flat_map(|g| g.ip_permissions())
        .find(|p| p.from_port() == Some(i32::from(aws::APP_PORT)))
        .context("no rule for the application's port")?;
    ensure!(
        app_rule.ip_ranges().is_empty()
            && app_rule
                .user_id_group_pairs()
                .iter()
                .all(|pair| pair.group_id() == Some(alb_group.as_str())),
        "only the load balancer reaches the application: {app_rule:?}"
    );
    eprintln!("  load balancer, listener, target group and rules in place");
    Ok(())
}

/// Terminates the leading monitor host: the standby takes the lease over (a new epoch), publishes
/// its address, and leads the same fleet, launching nothing; the activity history holds both terms.
async fn failover(aws: &Aws, runner: &runner::RunningRunner, address: &str) -> anyhow::Result<()> {
    let leader = runner
        .monitor_at(address)
        .with_context(|| format!("no monitor host listens at {address}"))?;
    let fleet: BTreeSet<String> = described(aws, InstanceRole::Agent)
        .await?
        .iter()
        .filter_map(|i| i.instance_id().map(str::to_string))
        .collect();
    let terminated = std::time::Instant::now();
    aws.ec2
        .terminate_instances()
        .instance_ids(&leader)
        .send()
        .await
        .map_err(|e| aws::explain("terminate the leader's host", e))?;
    eprintln!("  terminated the leader's host {leader}");
    let successor = wait_for(
        "the standby to publish its address",
        Duration::from_secs(60),
        Duration::from_millis(200),
        || async {
            let published = aws.parameters.get(&aws.names.monitor()).await?;
            Ok((published != address).then_some(published))
        },
    )
    .await?;
    eprintln!(
        "  the standby leads at {successor}, {:.1} s after the leader's host was terminated",
        terminated.elapsed().as_secs_f64()
    );
    let credentials = aws.operator_credentials().await?;
    let daemon =
        tokio::sync::Mutex::new(crate::status_client::Daemon::new(&successor, &credentials)?);
    wait_for(
        "the same fleet reporting to the new leader",
        Duration::from_secs(120),
        Duration::from_millis(500),
        || async {
            let Ok(status) = daemon.lock().await.status_after(0).await else {
                return Ok(None);
            };
            let listed: BTreeSet<String> = status
                .instances
                .iter()
                .filter(|i| i.listed())
                .map(|i| i.instance_id.clone())
                .collect();
            ensure!(
                listed.is_subset(&fleet),
                "the new leader launched: {listed:?} (the fleet was {fleet:?})"
            );
            let healthy = status.instances.iter().filter(|i| i.is_healthy()).count();
            Ok((listed == fleet && healthy == fleet.len()).then_some(()))
        },
    )
    .await?;
    let history = daemon.lock().await.activity(0).await?;
    let epochs: BTreeSet<u64> = history.iter().map(|r| r.epoch).collect();
    ensure!(
        epochs.len() >= 2,
        "the activity history holds both terms: {epochs:?}"
    );
    eprintln!(
        "  the same {} instances report to the new leader; the history holds {} records of terms {epochs:?}",
        fleet.len(),
        history.len()
    );
    Ok(())
}

/// The instance ids the target group has as targets.
async fn targets(aws: &Aws) -> anyhow::Result<BTreeSet<String>> {
    let target_group = aws.parameters.get(&aws.names.target_group()).await?;
    Ok(aws
        .target_health(&target_group)
        .await?
        .into_iter()
        .map(|(id, _, _)| id)
        .collect())
}

/// The fleet's maximum in the rehearsal: the account's 5 instances, less the monitor host and its
/// standby (`up --standby` lowers `max_instances` to fit).
const FLEET_MAX: usize = 3;

async fn load_cycle(aws: &Aws, address: &str, credentials: &Credentials) -> anyhow::Result<()> {
    let daemon = tokio::sync::Mutex::new(crate::status_client::Daemon::new(address, credentials)?);
    for (level, size, what) in [
        (95.0, FLEET_MAX, "3 healthy agents (the maximum)"),
        (5.0, 2, "2 healthy agents (the minimum)"),
    ] {
        wait_for(
            what,
            Duration::from_secs(180),
            Duration::from_millis(500),
            || async {
                let mut daemon = daemon.lock().await;
                let status = daemon.status_after(0).await?;
                let healthy: Vec<&v1::InstanceStatus> =
                    status.instances.iter().filter(|i| i.is_healthy()).collect();
                for instance in &healthy {
                    let _ = daemon
                        .set_load_target(&instance.instance_id, level, true)
                        .await;
                }
                let listed: BTreeSet<String> = status
                    .instances
                    .iter()
                    .filter(|i| i.listed())
                    .map(|i| i.instance_id.clone())
                    .collect();
                ensure!(
                    listed.len() <= FLEET_MAX,
                    "{} instances, above the maximum",
                    listed.len()
                );
                // Every instance in service is a target, and only those.
                let registered = targets(aws).await?;
                Ok(
                    (healthy.len() == size && listed.len() == size && registered == listed)
                        .then_some(()),
                )
            },
        )
        .await?;
        eprintln!("  {what}, each a target of the load balancer");
    }
    // Every scale-in drained its instance from the load balancer before terminating it.
    let status = daemon.lock().await.status_after(0).await?;
    let outcomes: Vec<&String> = status.decisions.iter().flat_map(|d| &d.outcome).collect();
    let terminated: Vec<&str> = outcomes
        .iter()
        .filter_map(|o| o.strip_prefix("scaled in: terminated "))
        .flat_map(|ids| ids.split(", "))
        .collect();
    ensure!(
        terminated.len() >= FLEET_MAX - 2,
        "the scale-ins recorded: {outcomes:#?}"
    );
    for id in terminated {
        let drained = outcomes
            .iter()
            .position(|o| o.starts_with(&format!("draining {id} ")));
        let ended = outcomes
            .iter()
            .position(|o| o.starts_with("scaled in: terminated ") && o.contains(id));
        ensure!(
            drained.is_some() && drained < ended,
            "{id} was drained before it was terminated: {outcomes:#?}"
        );
    }
    let agents = described(aws, InstanceRole::Agent).await?;
    let subnets: BTreeSet<&str> = agents.iter().filter_map(|i| i.subnet_id()).collect();
    ensure!(
        subnets.len() == agents.len(),
        "the agents are spread over subnets: {subnets:?}"
    );
    for agent in &agents {
        check_instance(agent, InstanceRole::Agent, &aws.group)?;
    }
    Ok(())
}

/// After `down --purge`: no instance, parameter, image, snapshot, bucket or security group of the
/// group remains.
async fn nothing_left(aws: &Aws) -> anyhow::Result<()> {
    let instances = aws.instances(&[]).await?;
    ensure!(instances.is_empty(), "instances left: {instances:?}");
    let parameters = aws
        .ssm
        .get_parameters_by_path()
        .path(format!("/autoscaler/{}", aws.group))
        .recursive(true)
        .send()
        .await
        .map_err(|e| aws::explain("list the group's parameters", e))?;
    let names: Vec<&str> = parameters
        .parameters()
        .iter()
        .filter_map(|p| p.name())
        .collect();
    ensure!(names.is_empty(), "parameters left: {names:?}");
    let images = aws.images().await?;
    let live: Vec<_> = images
        .iter()
        .filter(|i| i.state().map(|s| s.as_str()) != Some("deregistered"))
        .collect();
    ensure!(live.is_empty(), "images left: {live:?}");
    ensure!(
        aws.security_group().await?.is_none(),
        "the security group is left"
    );
    let balancer = aws.balancer_parts().await?;
    ensure!(
        balancer.is_empty(),
        "the load balancer is left: {balancer:?}"
    );
    let s3 = aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(&aws.sdk)
            .force_path_style(true)
            .build(),
    );
    let buckets = s3
        .list_buckets()
        .send()
        .await
        .map_err(|e| aws::explain("list buckets", e))?;
    let ours: Vec<&str> = buckets
        .buckets()
        .iter()
        .filter_map(|b| b.name())
        .filter(|name| name.starts_with(&format!("autoscaler-{}-", aws.group)))
        .collect();
    if !ours.is_empty() {
        bail!("buckets left: {ours:?}");
    }
    Ok(())
}
