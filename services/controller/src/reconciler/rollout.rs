//! The controller's rollouts: the versions of the launch specification it launches with, and the
//! operator's commands (update the specification; start, cancel or roll back an instance
//! refresh; describe), taken between evaluations through a `Commands` handle. The refresh itself
//! is the policy's (`autoscaler_policy::refresh`): the controller applies a command to the
//! policy's memory, keeps the memory, and acts on the decisions as ever.

use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::{Controller, millis};
use crate::cloud::Cloud;
use crate::config::{ConfigError, ControllerConfig, PolicyConfig};
use crate::policy::Decision;
use crate::policy::PolicyState;
use crate::spec::{LaunchSpec, SpecVersion, Specs};
use autoscaler_policy::refresh::{Refresh, RefreshError, RefreshPreferences};

/// A command refused: a field that does not validate, or a state that does not allow it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    #[error("`{field}` {problem}")]
    Invalid { field: String, problem: String },
    #[error("{0}")]
    Precondition(String),
    #[error("the controller did not answer: {0}")]
    Unavailable(String),
}

impl From<ConfigError> for CommandError {
    fn from(error: ConfigError) -> CommandError {
        CommandError::Invalid {
            field: format!("controller.{}", error.field),
            problem: error.problem,
        }
    }
}

/// `config` with the policy `text` (a `[controller.policy]` table), when given, checked whole.
fn with_policy(
    mut config: ControllerConfig,
    text: Option<&str>,
) -> Result<ControllerConfig, CommandError> {
    if let Some(text) = text {
        config.policy = PolicyConfig::from_toml(text).map_err(|problem| CommandError::Invalid {
            field: "policy_toml".to_string(),
            problem,
        })?;
    }
    config.validate()?;
    Ok(config)
}

impl From<RefreshError> for CommandError {
    fn from(error: RefreshError) -> CommandError {
        match error {
            RefreshError::Invalid(error) => CommandError::Invalid {
                field: error.field.to_string(),
                problem: error.problem,
            },
            other => CommandError::Precondition(other.to_string()),
        }
    }
}

/// The launch specification and the refresh, as they stand.
#[derive(Clone, Debug, PartialEq)]
pub struct Rollout {
    pub specs: Specs,
    pub refresh: Option<Refresh>,
}

type Reply<T> = oneshot::Sender<Result<T, CommandError>>;

/// An operator's command to the controller.
#[derive(Debug)]
pub enum Command {
    /// Makes `spec` the current version: new instances get it; the running ones stay until a
    /// refresh.
    UpdateSpec(LaunchSpec, Reply<SpecVersion>),
    /// Starts a refresh to `spec` (made current first), or to the current version.
    StartRefresh(Option<LaunchSpec>, RefreshPreferences, Reply<Refresh>),
    CancelRefresh(Reply<Refresh>),
    RollBackRefresh(Reply<Refresh>),
    Describe(Reply<Rollout>),
    /// Protects the instances from scale-in (`true`) or lifts it; answers every protected one.
    SetProtection(Vec<String>, bool, Reply<Vec<String>>),
    /// Changes the bounds and sets the desired capacity once (EC2's UpdateAutoScalingGroup);
    /// answers the bounds.
    UpdateGroup(GroupUpdate, Reply<GroupSettings>),
    /// The controller's settings as the config file has them now (SIGHUP): they replace the
    /// running ones, the bounds an operator set included.
    ReplaceConfig(Box<ControllerConfig>, Reply<()>),
}

/// What `UpdateGroup` changes; `None` leaves it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GroupUpdate {
    pub min_instances: Option<u32>,
    pub max_instances: Option<u32>,
    pub desired_capacity: Option<u32>,
    /// The policy from now on, as the text of a `[controller.policy]` table.
    pub policy_toml: Option<String>,
}

/// The group's settings after an `UpdateGroup`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupSettings {
    pub min_instances: u32,
    pub max_instances: u32,
    /// The policy an operator set, while one did.
    pub policy_toml: Option<String>,
}

/// How long a command waits for the controller (between two evaluations, which may retry a
/// provider call for some seconds).
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// Where commands are sent to a running controller.
#[derive(Clone, Debug)]
pub struct Commands(mpsc::Sender<Command>);

impl Commands {
    /// A handle and the receiver a controller takes (`Controller::with_commands`).
    pub fn channel() -> (Commands, mpsc::Receiver<Command>) {
        let (sender, receiver) = mpsc::channel(16);
        (Commands(sender), receiver)
    }

    async fn ask<T>(&self, make: impl FnOnce(Reply<T>) -> Command) -> Result<T, CommandError> {
        let (reply, answer) = oneshot::channel();
        let unavailable = |why: &str| CommandError::Unavailable(why.to_string());
        tokio::time::timeout(COMMAND_TIMEOUT, async {
            self.0
                .send(make(reply))
                .await
                .map_err(|_| unavailable("it has stopped"))?;
            answer.await.map_err(|_| unavailable("it stopped"))?
        })
        .await
        .map_err(|_| unavailable("no answer within 30 s"))?
    }

    pub async fn update_spec(&self, spec: LaunchSpec) -> Result<SpecVersion, CommandError> {
        self.ask(|reply| Command::UpdateSpec(spec, reply)).await
    }

    pub async fn start_refresh(
        &self,
        spec: Option<LaunchSpec>,
        preferences: RefreshPreferences,
    ) -> Result<Refresh, CommandError> {
        self.ask(|reply| Command::StartRefresh(spec, preferences, reply))
            .await
    }

    pub async fn cancel_refresh(&self) -> Result<Refresh, CommandError> {
        self.ask(Command::CancelRefresh).await
    }

    pub async fn roll_back_refresh(&self) -> Result<Refresh, CommandError> {
        self.ask(Command::RollBackRefresh).await
    }

    pub async fn describe(&self) -> Result<Rollout, CommandError> {
        self.ask(Command::Describe).await
    }

    pub async fn update_group(&self, update: GroupUpdate) -> Result<GroupSettings, CommandError> {
        self.ask(|reply| Command::UpdateGroup(update, reply)).await
    }

    pub async fn replace_config(&self, config: ControllerConfig) -> Result<(), CommandError> {
        self.ask(|reply| Command::ReplaceConfig(Box::new(config), reply))
            .await
    }

    pub async fn set_protection(
        &self,
        instance_ids: Vec<String>,
        protected: bool,
    ) -> Result<Vec<String>, CommandError> {
        self.ask(|reply| Command::SetProtection(instance_ids, protected, reply))
            .await
    }
}

impl<C: Cloud> Controller<C> {
    /// Takes the operator's commands from `commands` between evaluations.
    pub fn with_commands(mut self, commands: mpsc::Receiver<Command>) -> Controller<C> {
        self.commands = Some(commands);
        self
    }

    /// The launch specification and the refresh, as they stand.
    pub fn rollout(&self) -> Rollout {
        Rollout {
            specs: self.specs.clone(),
            refresh: self.state.refresh().cloned(),
        }
    }

    fn checked(&self, spec: &LaunchSpec) -> Result<(), CommandError> {
        self.cloud
            .check_spec(spec)
            .map_err(|error| CommandError::Invalid {
                field: error.field.to_string(),
                problem: error.problem,
            })
    }

    /// Carries out one command, keeps the memory, and answers.
    pub(super) async fn command(&mut self, command: Command) {
        let now = millis(self.clock());
        let said = match command {
            Command::UpdateSpec(spec, reply) => {
                let result = self.checked(&spec).map(|()| {
                    let version = self.specs.push(spec, now).clone();
                    format!(
                        "launch specification {}: {}",
                        version.version(),
                        version.spec.describe()
                    )
                });
                let answer = result.clone().map(|_| self.specs.current().clone());
                let _ = reply.send(answer);
                result.ok()
            }
            Command::StartRefresh(spec, preferences, reply) => {
                let before = self.specs.clone();
                let result = (|| {
                    if let Some(spec) = spec {
                        self.checked(&spec)?;
                        self.specs.push(spec, now);
                    }
                    let target = self.specs.current().version();
                    let previous = self.specs.previous().map(SpecVersion::version);
                    Ok(self
                        .state
                        .start_refresh(target, previous, preferences, now)?
                        .clone())
                })();
                if result.is_err() {
                    self.specs = before; // nothing changed
                }
                let said = result
                    .as_ref()
                    .ok()
                    .map(|r| format!("started: {}", r.describe()));
                let _ = reply.send(result);
                said
            }
            Command::CancelRefresh(reply) => {
                let result = self.state.cancel_refresh(now).cloned().map_err(Into::into);
                let said = result.as_ref().ok().map(Refresh::describe);
                let _ = reply.send(result);
                said
            }
            Command::RollBackRefresh(reply) => {
                let result = self
                    .state
                    .roll_back_refresh(now)
                    .cloned()
                    .map_err(Into::into);
                let said = result.as_ref().ok().map(Refresh::describe);
                let _ = reply.send(result);
                said
            }
            Command::Describe(reply) => {
                let _ = reply.send(Ok(self.rollout()));
                None
            }
            Command::UpdateGroup(update, reply) => {
                let result = self.update_group(update.clone());
                let said = result.as_ref().ok().map(|settings| {
                    let mut line = format!(
                        "bounds [{}, {}] set by an operator",
                        settings.min_instances, settings.max_instances
                    );
                    if let Some(desired) = update.desired_capacity {
                        line.push_str(&format!(", desired capacity {desired}"));
                    }
                    if let Some(text) = &update.policy_toml {
                        line.push_str(&format!(", policy {}", one_line(text)));
                    }
                    line
                });
                let _ = reply.send(result);
                said
            }
            Command::ReplaceConfig(config, reply) => {
                let result = self.replace_config(*config);
                let said = result.as_ref().ok().map(|()| {
                    format!(
                        "the config file read again: bounds [{}, {}]",
                        self.config.min_instances, self.config.max_instances
                    )
                });
                let _ = reply.send(result);
                said
            }
            Command::SetProtection(ids, protect, reply) => {
                let listed = self.status.instances();
                let unknown = ids
                    .iter()
                    .find(|id| !listed.iter().any(|i| &i.instance_id == *id));
                let result = match (ids.is_empty(), unknown) {
                    (true, _) => Err(CommandError::Invalid {
                        field: "instance_ids".to_string(),
                        problem: "is empty".to_string(),
                    }),
                    (false, Some(id)) => Err(CommandError::Invalid {
                        field: "instance_ids".to_string(),
                        problem: format!("names {id:?}, which is not an instance of this group"),
                    }),
                    (false, None) => {
                        for id in &ids {
                            match protect {
                                true => self.protected.insert(id.clone()),
                                false => self.protected.remove(id),
                            };
                        }
                        Ok(self.protected.iter().cloned().collect())
                    }
                };
                let said = result.is_ok().then(|| {
                    format!(
                        "{} {}",
                        ids.join(", "),
                        match protect {
                            true => "protected from scale-in",
                            false => "no longer protected from scale-in",
                        }
                    )
                });
                let _ = reply.send(result);
                said
            }
        };
        self.status.set_rollout(
            self.state.refresh().cloned(),
            self.specs.current().version(),
            self.protected.clone(),
        );
        if let Some(said) = said {
            tracing::info!("{said}");
            self.pending_notes.push(said);
            if let Err(error) = self.save_memory().await {
                tracing::warn!(%error, "cannot keep the controller's memory after a command");
            }
        }
    }

    /// Checks and applies `update`; nothing changes when it does not validate.
    fn update_group(&mut self, update: GroupUpdate) -> Result<GroupSettings, CommandError> {
        let mut config = self.config.clone();
        config.min_instances = update.min_instances.unwrap_or(config.min_instances);
        config.max_instances = update.max_instances.unwrap_or(config.max_instances);
        let config = with_policy(config, update.policy_toml.as_deref())?;
        let (min, max) = (config.min_instances, config.max_instances);
        if let Some(desired) = update.desired_capacity
            && !(min..=max).contains(&desired)
        {
            return Err(CommandError::Invalid {
                field: "desired_capacity".to_string(),
                problem: format!("is {desired}, outside the bounds [{min}, {max}]"),
            });
        }
        self.set_bounds(min, max);
        if let Some(text) = update.policy_toml {
            self.set_policy(config.policy, text);
        }
        if let Some(desired) = update.desired_capacity {
            self.state.set_desired(desired);
        }
        Ok(GroupSettings {
            min_instances: min,
            max_instances: max,
            policy_toml: self.operator_policy.clone(),
        })
    }

    /// The policy an operator set, over the config's (and under the schedules put at run
    /// time); its cooldowns and memory carry on.
    pub(super) fn set_policy(&mut self, policy: PolicyConfig, text: String) {
        if let Some((_, base)) = &mut self.runtime_schedules {
            base.policy = policy.clone();
        }
        self.config.policy = policy;
        self.status.set_operator_policy(Some(text.clone()));
        self.operator_policy = Some(text);
    }

    /// The policy an operator set, read back from the store: it stands if it still checks
    /// against the config.
    pub(super) fn recall_policy(&mut self, text: &str) {
        match with_policy(self.config.clone(), Some(text)) {
            Ok(config) => self.set_policy(config.policy, text.to_string()),
            Err(error) => tracing::warn!(
                %error,
                "the policy an operator set no longer checks; the config's stands"
            ),
        }
    }

    /// The config file's settings in place of the running ones; nothing changes when they do
    /// not validate.
    fn replace_config(&mut self, config: ControllerConfig) -> Result<(), CommandError> {
        config.validate()?;
        if config.shadow != self.config.shadow {
            self.shadow = config
                .shadow_config()
                .map(|shadow| (shadow, PolicyState::default()));
        }
        self.config = match &mut self.runtime_schedules {
            Some((schedules, base)) => {
                *base = config.clone();
                schedules.borrow().applied_to(base)
            }
            None => config,
        };
        self.bounds = None;
        self.operator_policy = None;
        self.status.set_operator_policy(None);
        self.status
            .set_bounds(self.config.min_instances, self.config.max_instances);
        Ok(())
    }

    /// The bounds, over the config's (and under the schedules put at run time).
    pub(super) fn set_bounds(&mut self, min: u32, max: u32) {
        self.config.min_instances = min;
        self.config.max_instances = max;
        if let Some((_, base)) = &mut self.runtime_schedules {
            base.min_instances = min;
            base.max_instances = max;
        }
        self.bounds = Some((min, max));
        self.status.set_bounds(min, max);
    }

    /// The version `decision` launches on; a rollback (the refresh's target is a kept version
    /// that is not current) makes it current again, said in `notes`.
    pub(super) fn launch_spec_for(
        &mut self,
        decision: &Decision,
        notes: &mut Vec<String>,
    ) -> SpecVersion {
        let now = millis(self.clock());
        if let Some(version) = &decision.launch_version
            && *version != self.specs.current().version()
            && self.specs.make_current(version, now)
        {
            notes.push(format!(
                "launch specification {version} is current again: {}",
                decision
                    .refresh
                    .as_ref()
                    .map_or_else(String::new, |r| r.reason.clone())
            ));
        }
        self.specs.current().clone()
    }
}

/// A TOML table's text on one line, for a record: `kind = "target-tracking", target = 60.0`.
fn one_line(text: &str) -> String {
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    lines.join(", ")
}
