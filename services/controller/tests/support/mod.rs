//! Test support shared by the tests that need the AWS emulator: a moto server on an ephemeral
//! port, the account preparation bootstrap and bake-ami would leave, and a fault proxy.

#![allow(dead_code)]

pub mod fault_proxy;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use autoscaler_aws::{GroupParameters, Parameters};
use aws_sdk_ec2::types::Filter;

/// A moto server on 127.0.0.1, stopped when dropped.
pub struct Moto {
    child: Child,
    pub endpoint: String,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn moto_server() -> PathBuf {
    let path = std::env::var_os("AUTOSCALER_MOTO_SERVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.venv/bin/moto_server")
        });
    assert!(
        path.exists(),
        "{} does not exist: run `cargo xtask test`, which installs moto[server] from xtask/requirements.txt into .venv, or set AUTOSCALER_MOTO_SERVER",
        path.display()
    );
    path
}

pub fn start_moto() -> Moto {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(moto_server())
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting moto_server");
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "moto_server did not listen on {port} within 60 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    Moto {
        child,
        endpoint: format!("http://127.0.0.1:{port}"),
    }
}

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
