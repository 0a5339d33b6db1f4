//! Kinds and states of jobs and shards, and the attempt that fences a shard's results.
//!
//! States are stored in SQLite as the wire enums' numbers ([`JobState::code`]) so a state
//! database and a `SweepStatus` read the same; anything else in flotilla names them by these
//! types.

use crate::error::{Error, Result};
use flotilla_proto::v1 as pb;
use serde::{Deserialize, Serialize};
use std::fmt;

/// What a job (and each of its shards) does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobKind {
    /// Train a LoRA adapter on one worker.
    Train,
    /// Train a LoRA adapter across workers, round by round: the coordinator adds each round's
    /// shards when it has applied the previous round.
    TrainRound,
    /// Generate answers for cases (no verdicts).
    Generate,
    /// Judge generated answers with a jury.
    Judge,
    /// Do nothing: dispatch benchmarks and protocol tests.
    Noop,
}

impl JobKind {
    pub const ALL: [JobKind; 5] = [
        JobKind::Train,
        JobKind::TrainRound,
        JobKind::Generate,
        JobKind::Judge,
        JobKind::Noop,
    ];

    /// The name stored in the state database and shown to users.
    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::Train => "train",
            JobKind::TrainRound => "train_round",
            JobKind::Generate => "generate",
            JobKind::Judge => "judge",
            JobKind::Noop => "noop",
        }
    }
}

impl fmt::Display for JobKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for JobKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        JobKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| {
                Error::input(format!(
                    "unknown job kind `{s}` (train, generate, judge, noop)"
                ))
            })
    }
}

/// The lifecycle every job, shard and sweep goes through, as one enum per thing (so a job
/// state cannot be stored as a shard's by mistake), numbered as the wire's enums.
macro_rules! lifecycle_states {
    ($($(#[$doc:meta])* $name:ident;)+) => {$(
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name {
            /// Waiting for the jobs it depends on (an eval waits for its adapter's training).
            Blocked = 1,
            Ready = 2,
            Running = 3,
            Succeeded = 4,
            Failed = 5,
            Cancelled = 6,
        }

        impl $name {
            /// The number stored in the state database (the wire enum's number).
            pub fn code(self) -> i64 {
                self as i64
            }

            /// The state a stored number names; an unknown number is a damaged database.
            pub fn from_code(code: i64) -> Result<Self> {
                Ok(match code {
                    1 => $name::Blocked,
                    2 => $name::Ready,
                    3 => $name::Running,
                    4 => $name::Succeeded,
                    5 => $name::Failed,
                    6 => $name::Cancelled,
                    other => {
                        return Err(Error::input(format!(
                            "{} {other} is not a known state",
                            stringify!($name)
                        )))
                    }
                })
            }

            /// Its name in lower case (`ready`, `running`, ...), as metrics label it.
            pub fn as_str(self) -> &'static str {
                match self {
                    $name::Blocked => "blocked",
                    $name::Ready => "ready",
                    $name::Running => "running",
                    $name::Succeeded => "succeeded",
                    $name::Failed => "failed",
                    $name::Cancelled => "cancelled",
                }
            }

            /// Whether nothing more will happen to it.
            pub fn is_final(self) -> bool {
                matches!(self, $name::Succeeded | $name::Failed | $name::Cancelled)
            }
        }
    )+};
}

lifecycle_states! {
    /// A job's state: blocked on the jobs it depends on, ready, running, or ended.
    JobState;
    /// A shard's state. A shard is `Blocked` while its job is; `Running` has a current attempt.
    ShardState;
    /// A sweep's state as stored (`Ready` and `Blocked` both show as queued on the wire: see
    /// [`SweepState::to_wire`]).
    SweepState;
}

/// Job states travel as the wire's `JobState`, number for number.
impl From<JobState> for pb::JobState {
    fn from(s: JobState) -> pb::JobState {
        pb::JobState::try_from(s.code() as i32).unwrap_or_default()
    }
}

impl From<SweepState> for pb::SweepState {
    fn from(s: SweepState) -> pb::SweepState {
        s.to_wire()
    }
}

impl SweepState {
    /// What `SweepStatus.state` shows: queued until a shard runs.
    pub fn to_wire(self) -> pb::SweepState {
        match self {
            SweepState::Blocked | SweepState::Ready => pb::SweepState::Queued,
            SweepState::Running => pb::SweepState::Running,
            SweepState::Succeeded => pb::SweepState::Succeeded,
            SweepState::Failed => pb::SweepState::Failed,
            SweepState::Cancelled => pb::SweepState::Cancelled,
        }
    }
}

/// The fencing token of one assignment of a shard: 1 for the first, one more for every
/// reassignment. A result or failure carrying an attempt that is no longer the shard's
/// current one is refused.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Attempt(pub u32);

impl Attempt {
    /// The attempt after this one.
    pub fn next(self) -> Attempt {
        Attempt(self.0 + 1)
    }
}

impl fmt::Display for Attempt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_round_trip_through_their_stored_numbers_and_match_the_wire() {
        for code in 1..=6 {
            let j = JobState::from_code(code).unwrap();
            assert_eq!(j.code(), code);
            assert_eq!(pb::JobState::from(j) as i64, code);
            assert_eq!(ShardState::from_code(code).unwrap().code(), code);
            assert_eq!(SweepState::from_code(code).unwrap().code(), code);
        }
        assert!(JobState::from_code(0).is_err());
        assert!(JobState::from_code(7).is_err());
        assert!(JobState::Cancelled.is_final() && !JobState::Running.is_final());
        assert_eq!(SweepState::Blocked.to_wire(), pb::SweepState::Queued);
        assert_eq!(
            pb::SweepState::from(SweepState::Ready),
            pb::SweepState::Queued
        );
        assert_eq!(
            pb::SweepState::from(SweepState::Running),
            pb::SweepState::Running
        );
        assert_eq!(
            pb::SweepState::from(SweepState::Cancelled),
            pb::SweepState::Cancelled
        );
    }

    #[test]
    fn kinds_parse_their_own_names_only() {
        for k in JobKind::ALL {
            assert_eq!(k.as_str().parse::<JobKind>().unwrap(), k);
        }
        assert!("eval".parse::<JobKind>().is_err());
    }
}
