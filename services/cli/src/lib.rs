//! What the mains of `autoscaler-agent` and `autoscaler-monitor` share: the group token's and the
//! log's flags (and the JSON log's lists), the shutdown signal and how a failure is reported on
//! exit.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use autoscaler_proto::auth::Token;

/// Where the group's shared token comes from when no other source is asked for.
#[derive(Clone, Debug, clap::Args)]
pub struct TokenArgs {
    /// File holding the group's shared token (otherwise AUTOSCALER_TOKEN).
    #[arg(long, env = "AUTOSCALER_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
}

impl TokenArgs {
    /// The token from `--token-file`, or else `AUTOSCALER_TOKEN`.
    pub fn read(&self) -> anyhow::Result<Token> {
        let value = match &self.token_file {
            Some(path) => std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the token file {}", path.display()))?,
            None => std::env::var("AUTOSCALER_TOKEN")
                .context("no group token: set AUTOSCALER_TOKEN or pass --token-file")?,
        };
        Token::new(&value).context("group token")
    }
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// How the program logs (to stderr, filtered by `RUST_LOG`, `info` by default).
#[derive(Clone, Debug, clap::Args)]
pub struct LogArgs {
    /// Log format.
    #[arg(long, value_enum, env = "AUTOSCALER_LOG_FORMAT", default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

impl LogArgs {
    /// Installs the global subscriber.
    pub fn init(&self) {
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
        let logs = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
        match self.log_format {
            LogFormat::Text => logs.init(),
            LogFormat::Json => logs
                .json()
                .with_writer(|| JsonLists::new(std::io::stderr()))
                .init(),
        }
    }
}

/// The event fields that carry lists. They are logged as the Debug text of a list of strings
/// (`rules = ?rules`: `["bounds", "health"]` in a text log); a JSON log carries them as JSON
/// arrays of those strings, the names the API and /metrics use.
pub const LIST_FIELDS: [&str; 3] = ["rules", "missing", "outcome"];

/// A JSON event's writer that turns the list fields from strings into arrays. tracing-subscriber
/// formats an event whole and writes it once into a writer made for it; this one rewrites that
/// line when it is dropped. A line it cannot read is written as it came.
pub struct JsonLists<W: std::io::Write> {
    line: Vec<u8>,
    out: W,
}

impl<W: std::io::Write> JsonLists<W> {
    pub fn new(out: W) -> JsonLists<W> {
        JsonLists {
            line: Vec::new(),
            out,
        }
    }
}

/// `line` with its list fields as JSON arrays, or `None` when there is nothing to change.
fn with_lists(line: &[u8]) -> Option<Vec<u8>> {
    let mut event: serde_json::Value = serde_json::from_slice(line).ok()?;
    let fields = event.get_mut("fields")?.as_object_mut()?;
    let mut changed = false;
    for name in LIST_FIELDS {
        let Some(value) = fields.get_mut(name) else {
            continue;
        };
        let list = value
            .as_str()
            .and_then(|text| serde_json::from_str::<Vec<String>>(text).ok());
        if let Some(list) = list {
            *value = list.into();
            changed = true;
        }
    }
    let mut rewritten = serde_json::to_vec(&event).ok().filter(|_| changed)?;
    rewritten.push(b'\n');
    Some(rewritten)
}

impl<W: std::io::Write> std::io::Write for JsonLists<W> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.line.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.line.is_empty() {
            return self.out.flush();
        }
        let line = std::mem::take(&mut self.line);
        match with_lists(&line) {
            Some(rewritten) => self.out.write_all(&rewritten)?,
            None => self.out.write_all(&line)?,
        }
        self.out.flush()
    }
}

impl<W: std::io::Write> Drop for JsonLists<W> {
    fn drop(&mut self) {
        // A log line that cannot be written has nowhere else to go.
        let _ = std::io::Write::flush(self);
    }
}

/// Resolves at the first SIGTERM or SIGINT, and says which. If a handler cannot be installed
/// (which the kernel does not refuse in practice), that is logged and the other still works.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{Signal, SignalKind, signal};
    async fn received(handler: &mut Option<Signal>) {
        match handler {
            Some(handler) => {
                handler.recv().await;
            }
            None => std::future::pending().await,
        }
    }
    let install = |kind: SignalKind, name: &str| {
        signal(kind)
            .inspect_err(|error| tracing::error!(%error, "cannot install a {name} handler"))
            .ok()
    };
    let mut terminate = install(SignalKind::terminate(), "SIGTERM");
    let mut interrupt = install(SignalKind::interrupt(), "SIGINT");
    tokio::select! {
        _ = received(&mut terminate) => tracing::info!("SIGTERM received"),
        _ = received(&mut interrupt) => tracing::info!("SIGINT received"),
    }
}

/// The exit of a main: success, or `program: <error and its causes>` on stderr and the code
/// `code_of` gives the error.
pub fn exit(
    program: &str,
    result: anyhow::Result<()>,
    code_of: impl FnOnce(&anyhow::Error) -> u8,
) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!(
                "{program}: {}",
                autoscaler_proto::error_chain(error.as_ref())
            );
            ExitCode::from(code_of(&error))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_json_log_carries_the_list_fields_as_arrays_of_names() {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .with_writer(move || JsonLists::new(writer.clone()))
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let rules = vec!["missing-metrics", "bounds"];
            let outcome = vec![
                "launched local-0003".to_string(),
                "a \"quoted\"; note".into(),
            ];
            let empty: Vec<String> = Vec::new();
            tracing::info!(rules = ?rules, outcome = ?outcome, missing = ?empty, current = 2, "decision: hold");
            tracing::info!(rules = "not a list", "another event");
        });
        let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        let events: Vec<serde_json::Value> = text
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect();
        assert_eq!(events.len(), 2, "{text}");
        let fields = &events[0]["fields"];
        assert_eq!(
            fields["rules"],
            serde_json::json!(["missing-metrics", "bounds"])
        );
        assert_eq!(
            fields["outcome"],
            serde_json::json!(["launched local-0003", "a \"quoted\"; note"])
        );
        assert_eq!(fields["missing"], serde_json::json!([]));
        assert_eq!(fields["current"], 2);
        assert_eq!(fields["message"], "decision: hold");
        assert_eq!(events[1]["fields"]["rules"], "not a list");
    }

    #[test]
    fn a_line_that_is_not_an_event_is_written_as_it_came() {
        for line in [&b"not json\n"[..], b"{\"fields\":1}\n", b"[1,2]\n"] {
            let captured = Captured::default();
            drop({
                let mut writer = JsonLists::new(captured.clone());
                std::io::Write::write_all(&mut writer, line).unwrap();
                writer
            });
            assert_eq!(*captured.0.lock().unwrap(), line);
        }
    }
}
