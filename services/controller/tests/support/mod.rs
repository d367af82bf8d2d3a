//! What the tests against the AWS emulator (`autoscaler_testkit::moto`) start from: the account
//! preparation that bootstrap and bake-ami would leave.

use autoscaler_aws::{GroupParameters, Parameters};
use aws_sdk_ec2::types::Filter;

/// What an AWS Academy account provides, and what bootstrap and bake-ami leave: a key pair, an
/// instance profile, the group's security group and the AMI's parameter.
pub async fn prepare(sdk: &aws_config::SdkConfig, group: &str) -> String {
    let ec2 = aws_sdk_ec2::Client::new(sdk);
    ec2.create_key_pair()
        .key_name("vockey")
        .send()
        .await
        .unwrap();
    let iam = aws_sdk_iam::Client::new(sdk);
    iam.create_instance_profile()
        .instance_profile_name("LabInstanceProfile")
        .send()
        .await
        .unwrap();
    let vpc = ec2
        .describe_vpcs()
        .filters(Filter::builder().name("is-default").values("true").build())
        .send()
        .await
        .unwrap();
    let vpc_id = vpc.vpcs()[0].vpc_id().unwrap().to_string();
    ec2.create_security_group()
        .group_name(format!("autoscaler-{group}"))
        .description("test")
        .vpc_id(vpc_id)
        .send()
        .await
        .unwrap();
    let parameters = Parameters::new(sdk);
    let ami = parameters
        .get("/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64")
        .await
        .expect("moto serves the public Amazon Linux parameters");
    parameters
        .put(&GroupParameters::new(group).ami(), &ami, false)
        .await
        .unwrap();
    ami
}
