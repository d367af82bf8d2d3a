//! The launches a controller has asked for and not yet seen listed, and the memory a leader
//! leaves its successor (the policy's, and these launches). A launch is written down before the
//! provider is asked (when a journal keeps the memory: the daemon's store), with a token that
//! makes asking again harmless, so that neither a lost answer nor a failover launches an
//! instance twice: an instance launched but not yet listed (EC2's listing lags its launches)
//! counts as pending, and a launch whose answer never came is asked again with its token.

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, UNIX_EPOCH};

use crate::cloud::{CloudErrorKind, CloudInstance, InstanceState};
use crate::policy::PolicyMemory;
use autoscaler_policy::forecast::DemandSample;

use crate::policy::LISTED_WITHIN;

/// How long the token of a launch whose answer never came (a timeout, a lost connection, a
/// leader gone during the call) is kept for the next launch to reuse. Within it, a provider
/// that keeps tokens (EC2) returns the instance of the first request rather than a second.
pub const IN_DOUBT_FOR: Duration = Duration::from_secs(600);

/// One launch asked of the provider.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PendingLaunch {
    /// Its idempotency token (`Cloud::launch`).
    pub token: String,
    /// When it was asked, milliseconds since the Unix epoch.
    pub asked_at_ms: i64,
    /// The instance the provider said it launched; `None` while the answer has not come (or
    /// never will: the launch is in doubt).
    #[serde(default)]
    pub instance_id: Option<String>,
    /// The launch specification version it was asked on.
    #[serde(default)]
    pub version: Option<String>,
}

/// What a controller leaves for the next (a restart, a failover to a standby): the policy's
/// memory (cooldowns, the launch backoff) and the launches not yet listed. The policy's fields
/// stay at the top level, as the store held them before launches were added.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct ControllerMemory {
    #[serde(flatten)]
    pub policy: PolicyMemory,
    pub pending_launches: Vec<PendingLaunch>,
    /// The versions of the group's launch specification (runtime changes, what a rollback
    /// goes back to).
    pub specs: Option<crate::spec::Specs>,
    /// The instances protected from scale-in.
    pub protected: std::collections::BTreeSet<String>,
    /// The bounds (min, max) an operator set at run time, over the config's.
    pub bounds: Option<(u32, u32)>,
    /// The policy an operator set at run time (a `[controller.policy]` table), over the
    /// config's.
    pub operator_policy: Option<String>,
}

/// Where the controller's memory is kept, written before every launch and after every
/// evaluation that changed it (the daemon's store, fenced by the leader's epoch).
pub trait Journal: Send + Sync + 'static {
    /// Keeps `memory`; an error says why it could not (then no launch is asked).
    fn save<'a>(
        &'a self,
        memory: &'a ControllerMemory,
    ) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>>;

    /// Keeps the group's demand as the policy recorded it (once a minute), for the forecaster
    /// of the next leader; an error says why it could not (the samples are offered again).
    fn record_demand<'a>(
        &'a self,
        samples: &'a [DemandSample],
    ) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>>;
}

/// The launches asked and not yet seen listed.
#[derive(Clone, Debug, Default)]
pub struct Launches {
    pending: Vec<PendingLaunch>,
    /// Tokens made by this controller, to tell them apart.
    made: u64,
}

fn age(now_ms: i64, at_ms: i64) -> Duration {
    Duration::from_millis(u64::try_from(now_ms.saturating_sub(at_ms)).unwrap_or(0))
}

impl Launches {
    /// The launches a previous controller left.
    pub fn recall(pending: Vec<PendingLaunch>) -> Launches {
        Launches { pending, made: 0 }
    }

    pub fn pending(&self) -> &[PendingLaunch] {
        &self.pending
    }

    /// Forgets the launches `listed` shows (by instance id, or by the token the provider keeps),
    /// and those past their time; says what it forgot in `notes`.
    pub fn settle(&mut self, listed: &[CloudInstance], now_ms: i64, notes: &mut Vec<String>) {
        self.pending.retain(|launch| {
            let by_token = listed
                .iter()
                .find(|i| i.launch_token.as_deref() == Some(launch.token.as_str()));
            let age = age(now_ms, launch.asked_at_ms);
            match (&launch.instance_id, by_token) {
                (Some(id), _) if listed.iter().any(|i| &i.instance_id == id) => false,
                (Some(id), _) if age >= LISTED_WITHIN => {
                    notes.push(format!(
                        "{id}, launched {:.0} s ago, is still not listed by the provider: no \
                         longer counted",
                        age.as_secs_f64()
                    ));
                    false
                }
                (Some(_), _) => true,
                (None, Some(found)) => {
                    notes.push(format!(
                        "the launch whose answer was lost (token {}) had taken effect: {}",
                        launch.token, found.instance_id
                    ));
                    false
                }
                (None, None) if age >= IN_DOUBT_FOR => {
                    notes.push(format!(
                        "the launch whose answer was lost (token {}) is not listed after {:.0} s: \
                         its token is not reused",
                        launch.token,
                        age.as_secs_f64()
                    ));
                    false
                }
                (None, None) => true,
            }
        });
    }

    /// The instances launched and not yet listed, as the provider will list them: pending since
    /// their launch.
    pub fn unlisted(&self) -> Vec<CloudInstance> {
        self.pending
            .iter()
            .filter_map(|launch| {
                Some(CloudInstance {
                    instance_id: launch.instance_id.clone()?,
                    state: InstanceState::Pending,
                    launched_at: UNIX_EPOCH
                        + Duration::from_millis(u64::try_from(launch.asked_at_ms).unwrap_or(0)),
                    zone: String::new(),
                    state_reason: Some("launched; not yet listed by the provider".to_string()),
                    app_address: None,
                    launch_token: Some(launch.token.clone()),
                    version: launch.version.clone(),
                })
            })
            .collect()
    }

    /// Tokens for `count` launches: those of launches in doubt first (asking again is harmless
    /// where the provider keeps tokens), then new ones, written down as asked at `now_ms` by the
    /// leader of term `epoch`; and how many are new (the last ones).
    pub fn ask(
        &mut self,
        count: u32,
        epoch: u64,
        now_ms: i64,
        version: Option<&str>,
    ) -> (Vec<String>, usize) {
        let mut tokens: Vec<String> = self
            .pending
            .iter()
            .filter(|launch| launch.instance_id.is_none())
            .take(count as usize)
            .map(|launch| launch.token.clone())
            .collect();
        let reused = tokens.len();
        while tokens.len() < count as usize {
            let token = format!("e{epoch}-{now_ms}-{}", self.made);
            self.made += 1;
            self.pending.push(PendingLaunch {
                token: token.clone(),
                asked_at_ms: now_ms,
                instance_id: None,
                version: version.map(str::to_string),
            });
            tokens.push(token);
        }
        (tokens, count as usize - reused)
    }

    /// Takes back launches that were written down but never asked (the journal failed).
    pub fn withdraw(&mut self, tokens: &[String]) {
        self.pending
            .retain(|launch| launch.instance_id.is_some() || !tokens.contains(&launch.token));
    }

    /// What the provider answered to the launch of `tokens`: the ids of the first ones, or an
    /// error. A launch refused is forgotten; one whose answer did not come (a timeout, the
    /// provider unavailable, or a failure after others succeeded) stays in doubt, its token
    /// kept for the next launch.
    pub fn answered(&mut self, tokens: &[String], answer: Result<&[String], CloudErrorKind>) {
        let in_doubt = |kind: CloudErrorKind| {
            matches!(kind, CloudErrorKind::Timeout | CloudErrorKind::Unavailable)
        };
        match answer {
            Ok(ids) => {
                for (token, id) in tokens.iter().zip(ids) {
                    if let Some(launch) = self.pending.iter_mut().find(|l| &l.token == token) {
                        launch.instance_id = Some(id.clone());
                    }
                }
            }
            Err(kind) if in_doubt(kind) => {}
            Err(_) => self.withdraw(tokens),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_memory_kept_before_launches_were_kept_still_reads() {
        let old = r#"{"last_scale_out_ms":1700000000000,"launch_failures":0}"#;
        let memory: ControllerMemory = serde_json::from_str(old).unwrap();
        assert_eq!(memory.policy.last_scale_out_ms, Some(1_700_000_000_000));
        assert!(memory.pending_launches.is_empty());
    }

    #[test]
    fn launches_in_doubt_are_asked_again_before_new_ones_and_a_refused_one_is_forgotten() {
        let mut launches = Launches::default();
        let (first, new) = launches.ask(2, 3, 1_000, None);
        assert_eq!(new, 2);
        assert_eq!(first, ["e3-1000-0", "e3-1000-1"]);
        // The first answered, the second lost.
        launches.answered(&first, Ok(&["i-1".to_string()]));
        let (again, new) = launches.ask(2, 3, 2_000, None);
        assert_eq!(new, 1);
        assert_eq!(again, ["e3-1000-1", "e3-2000-2"]);
        launches.answered(&again, Err(CloudErrorKind::InsufficientCapacity));
        let tokens: Vec<&str> = launches
            .pending()
            .iter()
            .map(|l| l.token.as_str())
            .collect();
        assert_eq!(tokens, ["e3-1000-0"], "refused launches are forgotten");
    }

    #[test]
    fn a_launch_is_forgotten_once_listed_or_past_its_time() {
        let mut launches = Launches::default();
        let (tokens, _) = launches.ask(3, 1, 0, None);
        launches.answered(&tokens[..2], Ok(&["i-1".to_string(), "i-2".to_string()]));
        let listed = CloudInstance {
            instance_id: "i-1".into(),
            state: InstanceState::Running,
            launched_at: UNIX_EPOCH,
            zone: String::new(),
            state_reason: None,
            app_address: None,
            launch_token: None,
            version: None,
        };
        let mut notes = Vec::new();
        launches.settle(std::slice::from_ref(&listed), 1_000, &mut notes);
        assert_eq!(launches.pending().len(), 2, "i-1 is listed");
        assert_eq!(launches.unlisted().len(), 1, "i-2 counts as pending");
        assert!(notes.is_empty(), "{notes:?}");
        let later = i64::try_from(LISTED_WITHIN.as_millis()).unwrap();
        launches.settle(&[], later, &mut notes);
        assert_eq!(launches.pending().len(), 1, "i-2 is no longer counted");
        assert!(notes[0].starts_with("i-2, launched 120 s ago, is still not listed"));
        let later = i64::try_from(IN_DOUBT_FOR.as_millis()).unwrap();
        launches.settle(&[], later, &mut notes);
        assert!(
            launches.pending().is_empty(),
            "the third's token is not reused"
        );
        assert!(notes[1].contains("is not listed after 600 s"), "{notes:?}");
    }
}
