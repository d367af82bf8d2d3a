//! The AWS emulator: a moto server on an ephemeral port of 127.0.0.1, stopped when dropped.
//! `cargo xtask test` installs it (moto[server] from xtask/requirements.txt) into the
//! workspace's `.venv`; `AUTOSCALER_MOTO_SERVER` names another `moto_server`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::wait::wait_blocking;

/// A running moto server.
pub struct Moto {
    child: Child,
    /// `http://127.0.0.1:<port>`, for `AWS_ENDPOINT_URL` or an SDK config's endpoint.
    pub endpoint: String,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Where `moto_server` is: `AUTOSCALER_MOTO_SERVER`, or the workspace's `.venv`.
pub fn server_path() -> PathBuf {
    std::env::var_os("AUTOSCALER_MOTO_SERVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/moto_server"))
}

impl Moto {
    /// Starts moto with its output in `log` (discarded when `None`) and waits, at most 60 s,
    /// until it listens. `Err` says what is missing and how to get it.
    pub fn start(log: Option<&Path>) -> std::io::Result<Moto> {
        let server = server_path();
        if !server.exists() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!(
                    "{} does not exist: run `cargo xtask test`, which installs moto[server] from xtask/requirements.txt into .venv, or set AUTOSCALER_MOTO_SERVER",
                    server.display()
                ),
            ));
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let (stdout, stderr) = match log {
            Some(path) => {
                let file = std::fs::File::create(path)?;
                (Stdio::from(file.try_clone()?), Stdio::from(file))
            }
            None => (Stdio::null(), Stdio::null()),
        };
        let child = Command::new(&server)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .map_err(|e| {
                std::io::Error::new(e.kind(), format!("cannot start {}: {e}", server.display()))
            })?;
        // Dropped (and so stopped) if it never listens.
        let moto = Moto {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
        };
        wait_blocking(
            &format!("moto_server listens on port {port}"),
            Duration::from_secs(60),
            Duration::from_millis(100),
            || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(),
        )
        .map_err(|message| std::io::Error::new(std::io::ErrorKind::TimedOut, message))?;
        Ok(moto)
    }
}

/// Starts moto for a test, failing it with the reason when moto cannot run.
pub fn start_moto() -> Moto {
    Moto::start(None).unwrap_or_else(|error| panic!("{error}"))
}
