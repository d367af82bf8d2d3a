//! The EC2 provider against the local AWS emulator (moto server, started here on an ephemeral
//! port): what it launches (type, key, profile, tags, subnets, IMDSv2, root volume), that it
//! lists and terminates only the group's instances, that a launch asked again returns the instance
//! it made, and that a hung endpoint times out.

mod support;

use std::time::{Duration, Instant};

use autoscaler_aws::Timeouts;
use autoscaler_controller::cloud::{Cloud, CloudErrorKind, InstanceState};
use autoscaler_controller::ec2::{Ec2Cloud, Ec2Config, GROUP_TAG, LAUNCH_TAG, ROLE_TAG};
use autoscaler_testkit::moto::start_moto;
use aws_sdk_ec2::types::HttpTokensState;
use support::*;

#[tokio::test]
async fn launches_lists_and_terminates_only_the_groups_instances() {
    let moto = start_moto();
    let sdk = autoscaler_aws::emulator_config(&moto.endpoint, Timeouts::default()).await;
    let ami = prepare(&sdk, "t1").await;
    let cloud = Ec2Cloud::open(&sdk, "t1", Ec2Config::default())
        .await
        .expect("open");
    assert_eq!(cloud.config().ami_id, ami);
    assert_eq!(
        cloud.config().subnet_ids.len(),
        6,
        "the default VPC's subnets"
    );

    let tokens: Vec<String> = ["e0-1-0", "e0-1-1", "e0-1-2"].map(String::from).into();
    let launched = cloud.launch(&tokens).await.expect("launch");
    assert_eq!(launched.len(), 3);
    // A launch asked again (its answer lost, or by a new leader) whose instance is there
    // returns that instance: nothing is launched twice.
    let again = cloud.launch(&tokens[1..]).await.expect("launch again");
    assert_eq!(again, launched[1..], "the same instances, none new");
    let ec2 = aws_sdk_ec2::Client::new(&sdk);
    let described = ec2
        .describe_instances()
        .set_instance_ids(Some(launched.clone()))
        .send()
        .await
        .unwrap();
    let instances: Vec<_> = described
        .reservations()
        .iter()
        .flat_map(|r| r.instances())
        .collect();
    assert_eq!(instances.len(), 3);
    let mut zones = std::collections::BTreeSet::new();
    for instance in &instances {
        assert_eq!(instance.instance_type().unwrap().as_str(), "t2.micro");
        assert_eq!(instance.key_name(), Some("vockey"));
        assert_eq!(instance.image_id(), Some(ami.as_str()));
        let tags: std::collections::BTreeMap<_, _> = instance
            .tags()
            .iter()
            .map(|t| (t.key().unwrap(), t.value().unwrap()))
            .collect();
        assert_eq!(tags.get(GROUP_TAG), Some(&"t1"));
        assert_eq!(tags.get(ROLE_TAG), Some(&"agent"));
        assert_eq!(tags.get("Name"), Some(&"autoscaler-t1-agent"));
        assert!(
            tokens
                .iter()
                .any(|t| tags.get(LAUNCH_TAG) == Some(&t.as_str())),
            "the launch's token is tagged: {tags:?}"
        );
        assert!(
            instance
                .iam_instance_profile()
                .unwrap()
                .arn()
                .unwrap()
                .ends_with("LabInstanceProfile")
        );
        assert_eq!(
            instance.metadata_options().and_then(|m| m.http_tokens()),
            Some(&HttpTokensState::Required),
            "IMDSv2 required"
        );
        let root = &instance.block_device_mappings()[0];
        assert_eq!(root.device_name(), Some("/dev/sda1"));
        assert_eq!(
            root.ebs().and_then(|e| e.delete_on_termination()),
            Some(true)
        );
        assert_eq!(
            instance.security_groups()[0].group_name(),
            Some("autoscaler-t1")
        );
        zones.insert(
            instance
                .placement()
                .unwrap()
                .availability_zone()
                .unwrap()
                .to_string(),
        );
    }
    assert_eq!(zones.len(), 3, "spread over availability zones: {zones:?}");

    let listed = cloud.list().await.unwrap();
    assert_eq!(listed.len(), 3);
    assert!(listed.iter().all(|i| i.state == InstanceState::Running));
    let mut listed_tokens: Vec<String> =
        listed.iter().flat_map(|i| i.launch_token.clone()).collect();
    listed_tokens.sort();
    assert_eq!(listed_tokens, tokens, "each instance names its launch");

    // An instance without the group's tag is not listed and cannot be terminated.
    let stranger = ec2
        .run_instances()
        .image_id(&ami)
        .min_count(1)
        .max_count(1)
        .send()
        .await
        .unwrap();
    let stranger_id = stranger.instances()[0].instance_id().unwrap().to_string();
    assert_eq!(cloud.list().await.unwrap().len(), 3);
    let error = cloud
        .terminate(&[launched[0].clone(), stranger_id.clone()])
        .await
        .unwrap_err();
    assert_eq!(error.kind, CloudErrorKind::NotFound, "{error}");
    assert_eq!(
        cloud.list().await.unwrap().len(),
        3,
        "a refused call terminates nothing"
    );

    cloud.terminate(&launched[..1]).await.unwrap();
    let listed: Vec<String> = cloud
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.instance_id)
        .collect();
    assert_eq!(listed.len(), 2);
    assert!(!listed.contains(&launched[0]));
    let still = ec2
        .describe_instances()
        .instance_ids(&stranger_id)
        .send()
        .await
        .unwrap();
    let state = still.reservations()[0].instances()[0]
        .state()
        .unwrap()
        .name()
        .unwrap()
        .as_str()
        .to_string();
    assert_eq!(state, "running");
}

#[tokio::test]
async fn a_hung_endpoint_times_out_instead_of_hanging() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let timeouts = Timeouts {
        connect: Duration::from_millis(500),
        attempt: Duration::from_millis(300),
        operation: Duration::from_secs(1),
    };
    let sdk = autoscaler_aws::emulator_config(&endpoint, timeouts).await;
    let config = Ec2Config {
        ami_id: "ami-12345678".into(),
        security_group_ids: vec!["sg-1".into()],
        subnet_ids: vec!["subnet-1".into()],
        ..Ec2Config::default()
    };
    let cloud = Ec2Cloud::open(&sdk, "hung", config)
        .await
        .expect("nothing to resolve");
    let started = Instant::now();
    let error = cloud.list().await.unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    assert!(
        matches!(
            error.kind,
            CloudErrorKind::Timeout | CloudErrorKind::Unavailable
        ),
        "{error}"
    );
    assert!(error.is_retryable());
    drop(listener);
}
