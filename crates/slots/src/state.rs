//! The update state machine as plain data, its transitions, the decision
//! taken after a boot, and its persistence (JSON, written atomically).
//!
//! ```text
//! Idle/Blessed/Failed ──start──▶ Started ─▶ Invalidated ─▶ RootWritten ─▶ Written
//!      ▲                                                                    │
//!      │              (crate::plan runs these steps, resumably)            ▼
//!      │            Installed ◀── (loader.conf default, UKI +3) ◀──── Verified
//!      │                │ request_reboot
//!      │                ▼
//!      │         RebootRequested ──boot into the new slot──▶ BootedUnverified
//!      │                │                                      │   │
//!      └── Failed ◀─────┴──── fell back to the old slot ───────┘   │ health gate ok
//!          (version blocked)        or health gate failed         ▼
//!                                                               Blessed
//! ```
//!
//! A version that failed is *blocked*: [`UpdateState::admit`] refuses it
//! until the repository has named a different version
//! ([`UpdateState::note_desired`]).

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::slot::{OsVersion, Sha256, Slot};

/// File name of the persisted state in the state directory.
pub const STATE_FILE: &str = "update-state.json";
/// Version of the JSON layout.
pub const SCHEMA: u32 = 1;

/// A failed state operation.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Reading or writing the state file failed.
    #[error("{op} {path} failed: {source}; check that the state partition is mounted read-write")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: String,
        /// The I/O error.
        source: io::Error,
    },
    /// The state file is not valid JSON of the expected shape.
    #[error("{path} is not a valid cairn update state ({source}); move it away to start over (the ESP, not this file, decides what boots)")]
    Corrupt {
        /// The file.
        path: String,
        /// The parse error.
        source: serde_json::Error,
    },
    /// Written by a newer cairn.
    #[error("{path} has schema {found}, this cairn understands {SCHEMA}; it was written by a newer cairn, do not downgrade the agent in the middle of an update")]
    Schema {
        /// The file.
        path: String,
        /// The schema found.
        found: u32,
    },
    /// A transition that is not allowed from the current phase.
    #[error("cannot {action} while the update is in phase {phase}")]
    Transition {
        /// What was asked.
        action: &'static str,
        /// The current phase.
        phase: String,
    },
    /// The kernel command line lacks cairn's parameters.
    #[error("the kernel command line has no valid {key}= ({reason}); this was not booted from a cairn UKI")]
    Cmdline {
        /// `cairn.slot` or `cairn.version`.
        key: &'static str,
        /// What is wrong.
        reason: String,
    },
}

/// Where an update stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(tag = "phase", rename_all = "kebab-case")]
pub enum Phase {
    /// Nothing in flight.
    #[default]
    Idle,
    /// An install into `slot` began; nothing written yet.
    Started {
        /// Target slot.
        slot: Slot,
        /// Version being installed.
        version: OsVersion,
    },
    /// The target's entries are gone and its partitions' heads zeroed.
    Invalidated {
        /// Target slot.
        slot: Slot,
        /// Version being installed.
        version: OsVersion,
    },
    /// The root image is written and was read back.
    RootWritten {
        /// Target slot.
        slot: Slot,
        /// Version being installed.
        version: OsVersion,
        /// Digest of the root image.
        root_sha256: Sha256,
    },
    /// Root and verity images are written and were read back.
    Written {
        /// Target slot.
        slot: Slot,
        /// Version being installed.
        version: OsVersion,
        /// Digest of the root image.
        root_sha256: Sha256,
        /// Digest of the verity image.
        verity_sha256: Sha256,
    },
    /// Both partitions re-verified from the device, right before the slot
    /// is made bootable.
    Verified {
        /// Target slot.
        slot: Slot,
        /// Version being installed.
        version: OsVersion,
    },
    /// The UKI is on the ESP with `+3` and `loader.conf` points at it.
    Installed {
        /// Target slot.
        slot: Slot,
        /// Version being installed.
        version: OsVersion,
        /// The entry file name as installed.
        entry: String,
    },
    /// The agent asked for the reboot (during boot `boot_id`).
    RebootRequested {
        /// Target slot.
        slot: Slot,
        /// Version being installed.
        version: OsVersion,
        /// `/proc/sys/kernel/random/boot_id` of the boot that asked.
        boot_id: String,
        /// The health gate's time limit in force when the reboot was asked
        /// for; the trial watchdog counts it from the next boot, in case
        /// the agent never gets to start the gate there.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        gate_secs: Option<u64>,
    },
    /// Running the new slot; the health gate has until `deadline_unix`.
    BootedUnverified {
        /// Target slot.
        slot: Slot,
        /// Version being tried.
        version: OsVersion,
        /// Seconds since the epoch.
        deadline_unix: u64,
    },
    /// The new slot passed the health gate and is the default.
    Blessed {
        /// The slot.
        slot: Slot,
        /// Its version.
        version: OsVersion,
    },
    /// The attempt failed; the old slot is (again) the default.
    Failed {
        /// The slot that was tried.
        slot: Slot,
        /// The version that failed.
        version: OsVersion,
        /// Why.
        reason: String,
        /// `boot_id` of the boot (of the failed slot) that marked it bad and
        /// asked to reboot away from it; see [`after_failure`].
        #[serde(default, skip_serializing_if = "Option::is_none")]
        left_boot: Option<String>,
    },
}

impl Phase {
    /// Short kebab-case name, as in the JSON.
    pub fn name(&self) -> &'static str {
        match self {
            Phase::Idle => "idle",
            Phase::Started { .. } => "started",
            Phase::Invalidated { .. } => "invalidated",
            Phase::RootWritten { .. } => "root-written",
            Phase::Written { .. } => "written",
            Phase::Verified { .. } => "verified",
            Phase::Installed { .. } => "installed",
            Phase::RebootRequested { .. } => "reboot-requested",
            Phase::BootedUnverified { .. } => "booted-unverified",
            Phase::Blessed { .. } => "blessed",
            Phase::Failed { .. } => "failed",
        }
    }

    /// The slot and version this phase is about (`None` for idle).
    pub fn target(&self) -> Option<(Slot, &OsVersion)> {
        match self {
            Phase::Idle => None,
            Phase::Started { slot, version }
            | Phase::Invalidated { slot, version }
            | Phase::RootWritten { slot, version, .. }
            | Phase::Written { slot, version, .. }
            | Phase::Verified { slot, version }
            | Phase::Installed { slot, version, .. }
            | Phase::RebootRequested { slot, version, .. }
            | Phase::BootedUnverified { slot, version, .. }
            | Phase::Blessed { slot, version }
            | Phase::Failed { slot, version, .. } => Some((*slot, version)),
        }
    }

    /// Writing the target slot (not yet bootable).
    pub fn is_installing(&self) -> bool {
        matches!(
            self,
            Phase::Started { .. }
                | Phase::Invalidated { .. }
                | Phase::RootWritten { .. }
                | Phase::Written { .. }
                | Phase::Verified { .. }
        )
    }

    /// The target slot is bootable and being tried (or about to be).
    pub fn is_trial(&self) -> bool {
        matches!(
            self,
            Phase::Installed { .. }
                | Phase::RebootRequested { .. }
                | Phase::BootedUnverified { .. }
        )
    }

    /// Nothing in flight: a new update may start.
    pub fn is_settled(&self) -> bool {
        matches!(
            self,
            Phase::Idle | Phase::Blessed { .. } | Phase::Failed { .. }
        )
    }
}

/// A version that failed and is not retried until the repository names
/// another one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Blocked {
    /// The version.
    pub version: OsVersion,
    /// Why it failed.
    pub reason: String,
}

/// The outcome of the last finished attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastResult {
    /// The slot that was tried.
    pub slot: Slot,
    /// The version that was tried.
    pub version: OsVersion,
    /// `None` when it was blessed, else why it failed.
    pub failure: Option<String>,
}

/// Everything persisted about OS updates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateState {
    /// JSON layout version ([`SCHEMA`]).
    pub schema: u32,
    /// Where the current attempt stands.
    #[serde(flatten)]
    pub phase: Phase,
    /// A failed version not to retry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blocked: Option<Blocked>,
    /// How the last finished attempt ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_result: Option<LastResult>,
}

impl Default for UpdateState {
    fn default() -> Self {
        UpdateState {
            schema: SCHEMA,
            phase: Phase::Idle,
            blocked: None,
            last_result: None,
        }
    }
}

/// What the agent should do about a desired OS version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// The desired version is running and nothing is in flight.
    UpToDate,
    /// The desired version failed before; wait for the repo to move on.
    Blocked(Blocked),
    /// Start installing (into the other slot).
    Start,
    /// An install of this version was interrupted: run the plan again, it
    /// resumes.
    Resume,
    /// Installed; reboot (again) to try it.
    AwaitReboot,
    /// Running the new slot; the health gate decides first.
    AwaitHealth,
    /// An install is in flight but the repo now wants the running version:
    /// undo it ([`crate::plan::abandon_install`]).
    Abandon,
}

impl UpdateState {
    /// Decide what to do about `desired` while `running` runs. Pure: call
    /// [`UpdateState::note_desired`] first so a block is lifted when the
    /// repository moved on.
    pub fn admit(&self, running: &OsVersion, desired: &OsVersion) -> Admission {
        let in_flight = self.phase.target().map(|(_, v)| v);
        match &self.phase {
            Phase::BootedUnverified { .. } => return Admission::AwaitHealth,
            p if p.is_installing() || p.is_trial() => {
                if desired == running {
                    return Admission::Abandon;
                }
                if in_flight == Some(desired) {
                    return if p.is_installing() {
                        Admission::Resume
                    } else {
                        Admission::AwaitReboot
                    };
                }
                // The repo moved on to yet another version: restart.
            }
            _ => {}
        }
        if desired == running {
            return Admission::UpToDate;
        }
        if let Some(b) = &self.blocked {
            if &b.version == desired {
                return Admission::Blocked(b.clone());
            }
        }
        Admission::Start
    }

    /// Record that the repository names `desired`: a block on another
    /// version is lifted. Returns true when the state changed.
    pub fn note_desired(&mut self, desired: &OsVersion) -> bool {
        match &self.blocked {
            Some(b) if &b.version != desired => {
                log::info!(
                    "repository names {desired}: {} may be tried again later",
                    b.version
                );
                self.blocked = None;
                true
            }
            _ => false,
        }
    }

    /// Operator override: forget the block so the failed version may be
    /// tried again. Returns what was blocked.
    pub fn unblock(&mut self) -> Option<Blocked> {
        self.blocked.take()
    }

    /// Begin installing `version` into `slot` (from a settled phase, or
    /// restarting an interrupted install or an untried one).
    pub fn start(&mut self, slot: Slot, version: OsVersion) -> Result<(), StateError> {
        if matches!(self.phase, Phase::BootedUnverified { .. }) {
            return Err(self.refuse("start an install"));
        }
        if self.blocked.as_ref().is_some_and(|b| b.version != version) {
            self.blocked = None;
        }
        self.phase = Phase::Started { slot, version };
        Ok(())
    }

    /// The agent is about to reboot into the installed slot.
    pub fn request_reboot(&mut self, boot_id: &str) -> Result<(), StateError> {
        self.request_reboot_gated(boot_id, None)
    }

    /// The same, recording the health gate's time limit (`gate_secs`) for
    /// the trial watchdog.
    pub fn request_reboot_gated(
        &mut self,
        boot_id: &str,
        gate_secs: Option<u64>,
    ) -> Result<(), StateError> {
        match &self.phase {
            Phase::Installed { slot, version, .. }
            | Phase::RebootRequested { slot, version, .. } => {
                self.phase = Phase::RebootRequested {
                    slot: *slot,
                    version: version.clone(),
                    boot_id: boot_id.to_string(),
                    gate_secs,
                };
                Ok(())
            }
            _ => Err(self.refuse("request the reboot into a new slot")),
        }
    }

    /// Called once per boot: when this boot runs the slot being tried, start
    /// the health gate's clock (`gate_secs` from `now_unix`). Returns true
    /// when the state changed.
    pub fn note_booted(&mut self, booted: &Booted, now_unix: u64, gate_secs: u64) -> bool {
        let trial = match &self.phase {
            // `verified` while running the target: the power went between
            // the UKI's rename (the slot became bootable, and systemd-boot
            // booted it) and saving `installed`. Nothing else boots a slot
            // in that phase: its entries were removed before it was
            // written.
            Phase::Verified { slot, version, .. } | Phase::Installed { slot, version, .. } => {
                Some((*slot, version.clone()))
            }
            Phase::RebootRequested {
                slot,
                version,
                boot_id,
                ..
            } if *boot_id != booted.boot_id => Some((*slot, version.clone())),
            _ => None,
        };
        match trial {
            Some((slot, version)) if booted.slot == slot && booted.version == version => {
                self.phase = Phase::BootedUnverified {
                    slot,
                    version,
                    deadline_unix: now_unix.saturating_add(gate_secs),
                };
                true
            }
            _ => false,
        }
    }

    /// The trial passed: the slot is blessed.
    pub fn bless(&mut self) -> Result<(), StateError> {
        if !self.phase.is_trial() {
            return Err(self.refuse("bless"));
        }
        let Some((slot, version)) = self.phase.target().map(|(s, v)| (s, v.clone())) else {
            return Err(self.refuse("bless"));
        };
        self.last_result = Some(LastResult {
            slot,
            version: version.clone(),
            failure: None,
        });
        self.phase = Phase::Blessed { slot, version };
        Ok(())
    }

    /// The attempt failed: record why and block the version.
    pub fn fail(&mut self, reason: &str) -> Result<(), StateError> {
        if self.phase.is_settled() {
            return Err(self.refuse("record a failure"));
        }
        let Some((slot, version)) = self.phase.target().map(|(s, v)| (s, v.clone())) else {
            return Err(self.refuse("record a failure"));
        };
        self.blocked = Some(Blocked {
            version: version.clone(),
            reason: reason.to_string(),
        });
        self.last_result = Some(LastResult {
            slot,
            version: version.clone(),
            failure: Some(reason.to_string()),
        });
        self.phase = Phase::Failed {
            slot,
            version,
            reason: reason.to_string(),
            left_boot: None,
        };
        Ok(())
    }

    /// [`fail`](Self::fail), recorded by the failed slot itself during boot
    /// `boot_id`, right before it reboots into the other slot.
    pub fn fail_and_leave(&mut self, reason: &str, boot_id: &str) -> Result<(), StateError> {
        self.fail(reason)?;
        if let Phase::Failed { left_boot, .. } = &mut self.phase {
            *left_boot = Some(boot_id.to_string());
        }
        Ok(())
    }

    fn refuse(&self, action: &'static str) -> StateError {
        StateError::Transition {
            action,
            phase: self.phase.name().to_string(),
        }
    }
}

/// What is running: from the kernel command line and the boot id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Booted {
    /// `cairn.slot=`.
    pub slot: Slot,
    /// `cairn.version=`.
    pub version: OsVersion,
    /// `/proc/sys/kernel/random/boot_id`.
    pub boot_id: String,
}

impl Booted {
    /// Parse `cairn.slot=a|b` and `cairn.version=` from `/proc/cmdline`
    /// content (the last occurrence wins, as for the kernel).
    pub fn from_cmdline(cmdline: &str, boot_id: &str) -> Result<Booted, StateError> {
        let value = |key: &'static str| -> Result<&str, StateError> {
            cmdline
                .split_ascii_whitespace()
                .map(|w| w.trim_matches('"'))
                .filter_map(|w| w.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
                .next_back()
                .ok_or(StateError::Cmdline {
                    key,
                    reason: "missing".into(),
                })
        };
        let slot = value("cairn.slot")?;
        let slot = slot.parse::<Slot>().map_err(|e| StateError::Cmdline {
            key: "cairn.slot",
            reason: e.to_string(),
        })?;
        let version = OsVersion::new(value("cairn.version")?).map_err(|e| StateError::Cmdline {
            key: "cairn.version",
            reason: e.to_string(),
        })?;
        Ok(Booted {
            slot,
            version,
            boot_id: boot_id.trim().to_string(),
        })
    }
}

/// The Kubernetes health gate's verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealthGate {
    /// Healthy.
    Ok,
    /// Unhealthy, with the reason.
    Failed(String),
    /// Not decided yet.
    Pending,
}

/// What to do after a boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PostBootAction {
    /// The new slot is healthy: bless it (and retire the old one).
    Bless {
        /// The new slot.
        slot: Slot,
        /// Its version.
        version: OsVersion,
    },
    /// The new slot is unhealthy: mark its entry bad and reboot into the
    /// old slot.
    MarkBadAndReboot {
        /// The new slot.
        slot: Slot,
        /// Its version.
        version: OsVersion,
        /// Why.
        reason: String,
    },
    /// We run the old slot while the state says we were trying the new one:
    /// systemd-boot fell back. Record the failure.
    ReportRolledBack {
        /// The slot that was tried.
        slot: Slot,
        /// The version that failed to boot.
        version: OsVersion,
        /// The slot that booted instead.
        booted: Slot,
    },
    /// Nothing to do (no trial, not rebooted yet, or the gate is pending).
    Nothing,
}

/// Running a slot the state records as failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AfterFailure {
    /// Not running a failed slot.
    NotOnIt,
    /// This very boot marked the slot bad and asked for a reboot that has
    /// not happened (logind refused, the call was lost): ask again.
    RebootAgain {
        /// The failed slot (the one running).
        slot: Slot,
        /// Its version.
        version: OsVersion,
    },
    /// The machine did reboot and came back to the failed slot: the other
    /// slot did not boot either. Rebooting again would loop; stay and say so.
    Stuck {
        /// The failed slot (the one running).
        slot: Slot,
        /// Its version.
        version: OsVersion,
    },
}

/// Whether the running boot is the failed slot of the last attempt, and
/// what to do about it.
pub fn after_failure(booted: &Booted, state: &UpdateState) -> AfterFailure {
    match &state.phase {
        Phase::Failed {
            slot,
            version,
            left_boot: Some(left),
            ..
        } if *slot == booted.slot && *version == booted.version => {
            if *left == booted.boot_id {
                AfterFailure::RebootAgain {
                    slot: *slot,
                    version: version.clone(),
                }
            } else {
                AfterFailure::Stuck {
                    slot: *slot,
                    version: version.clone(),
                }
            }
        }
        _ => AfterFailure::NotOnIt,
    }
}

/// What the trial watchdog (`cairnctl update watchdog`, a unit that does
/// not depend on the agent) should do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Watchdog {
    /// No trial of the running slot: nothing to guard.
    Done,
    /// Check again at this unix time.
    Wait(u64),
    /// The trial outlived its deadline with nobody deciding: mark the slot
    /// bad and reboot.
    Fire {
        /// The slot on trial (running).
        slot: Slot,
        /// Its version.
        version: OsVersion,
        /// Why, for the record.
        reason: String,
    },
}

/// The watchdog's decision. `boot_unix` is when this boot started; the
/// agent gets `grace` seconds past the health-gate deadline it recorded,
/// and `unnoted` seconds from boot to record one at all (if it cannot run
/// on the new slot, it never does).
pub fn watchdog(
    booted: &Booted,
    state: &UpdateState,
    boot_unix: u64,
    now_unix: u64,
    grace: u64,
    unnoted: u64,
) -> Watchdog {
    let (slot, version, fire_at, why) = match &state.phase {
        Phase::BootedUnverified {
            slot,
            version,
            deadline_unix,
        } => (
            *slot,
            version,
            deadline_unix.saturating_add(grace),
            format!(
                "the health gate was still undecided {grace} s after its deadline (unix time {deadline_unix}): the agent is not deciding"
            ),
        ),
        Phase::RebootRequested {
            slot,
            version,
            gate_secs: Some(gate),
            ..
        } => (
            *slot,
            version,
            boot_unix.saturating_add(*gate).saturating_add(grace),
            format!(
                "the agent did not start the health gate ({gate} s from boot, + {grace} s grace)"
            ),
        ),
        // (`verified` while running the target: see `note_booted`)
        Phase::Verified { slot, version }
        | Phase::Installed { slot, version, .. }
        | Phase::RebootRequested { slot, version, .. } => (
            *slot,
            version,
            boot_unix.saturating_add(unnoted),
            format!("the agent did not start the health gate within {unnoted} s of boot"),
        ),
        _ => return Watchdog::Done,
    };
    // The new slot must be the one running (else the old slot runs: the
    // reboot is still to come, or boot counting fell back already).
    if booted.slot != slot || booted.version != *version {
        return Watchdog::Done;
    }
    if let Phase::RebootRequested { boot_id, .. } = &state.phase {
        if *boot_id == booted.boot_id {
            return Watchdog::Done;
        }
    }
    if now_unix >= fire_at {
        Watchdog::Fire {
            slot,
            version: version.clone(),
            reason: why,
        }
    } else {
        Watchdog::Wait(fire_at)
    }
}

/// The post-boot decision: a pure function of what booted, the persisted
/// state, the health gate and the time.
pub fn decide_after_boot(
    booted: &Booted,
    state: &UpdateState,
    health: &HealthGate,
    now_unix: u64,
) -> PostBootAction {
    let (slot, version, deadline) = match &state.phase {
        // Not rebooted since the install: a booted old slot means nothing.
        Phase::Installed { slot, version, .. } if booted.slot != *slot => {
            return PostBootAction::Nothing
        }
        Phase::RebootRequested { boot_id, .. } if *boot_id == booted.boot_id => {
            return PostBootAction::Nothing
        }
        Phase::Installed { slot, version, .. } | Phase::RebootRequested { slot, version, .. } => {
            (*slot, version, None)
        }
        Phase::BootedUnverified {
            slot,
            version,
            deadline_unix,
        } => (*slot, version, Some(*deadline_unix)),
        _ => return PostBootAction::Nothing,
    };
    if booted.slot != slot {
        return PostBootAction::ReportRolledBack {
            slot,
            version: version.clone(),
            booted: booted.slot,
        };
    }
    if booted.version != *version {
        return PostBootAction::MarkBadAndReboot {
            slot,
            version: version.clone(),
            reason: format!(
                "slot {slot} booted version {}, but {version} was installed there",
                booted.version
            ),
        };
    }
    match health {
        HealthGate::Ok => PostBootAction::Bless {
            slot,
            version: version.clone(),
        },
        HealthGate::Failed(why) => PostBootAction::MarkBadAndReboot {
            slot,
            version: version.clone(),
            reason: format!("health gate failed: {why}"),
        },
        HealthGate::Pending => match deadline {
            Some(d) if now_unix >= d => PostBootAction::MarkBadAndReboot {
                slot,
                version: version.clone(),
                reason: format!("health gate did not pass by its deadline (unix time {d})"),
            },
            _ => PostBootAction::Nothing,
        },
    }
}

/// The state file in a state directory.
#[derive(Debug, Clone)]
pub struct StateStore {
    dir: PathBuf,
}

impl StateStore {
    /// State kept in `dir` (created on the first save).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        StateStore { dir: dir.into() }
    }

    /// The state file's path.
    pub fn path(&self) -> PathBuf {
        self.dir.join(STATE_FILE)
    }

    /// Load the state; a missing file is the default (idle) state.
    pub fn load(&self) -> Result<UpdateState, StateError> {
        let path = self.path();
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(UpdateState::default()),
            Err(source) => {
                return Err(StateError::Io {
                    op: "reading",
                    path: path.display().to_string(),
                    source,
                })
            }
        };
        #[derive(Deserialize)]
        struct Probe {
            schema: u32,
        }
        let shown = path.display().to_string();
        let probe: Probe = serde_json::from_str(&text).map_err(|source| StateError::Corrupt {
            path: shown.clone(),
            source,
        })?;
        if probe.schema != SCHEMA {
            return Err(StateError::Schema {
                path: shown,
                found: probe.schema,
            });
        }
        serde_json::from_str(&text).map_err(|source| StateError::Corrupt {
            path: shown,
            source,
        })
    }

    /// Save atomically: temp file, fsync, rename, fsync the directory.
    pub fn save(&self, state: &UpdateState) -> Result<(), StateError> {
        let path = self.path();
        let tmp = self.dir.join(format!(".{STATE_FILE}.tmp"));
        let io = |op: &'static str, p: &Path| {
            let p = p.display().to_string();
            move |source| StateError::Io {
                op,
                path: p,
                source,
            }
        };
        fs::create_dir_all(&self.dir).map_err(io("creating", &self.dir))?;
        let mut json = serde_json::to_vec_pretty(state).map_err(|source| StateError::Corrupt {
            path: path.display().to_string(),
            source,
        })?;
        json.push(b'\n');
        let mut f = File::create(&tmp).map_err(io("creating", &tmp))?;
        f.write_all(&json).map_err(io("writing", &tmp))?;
        f.sync_all().map_err(io("syncing", &tmp))?;
        drop(f);
        fs::rename(&tmp, &path).map_err(io("renaming into place", &path))?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io("syncing", &self.dir))?;
        log::debug!("update state: {}", state.phase.name());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> OsVersion {
        OsVersion::new(s).unwrap()
    }

    fn booted(slot: Slot, version: &str, boot: &str) -> Booted {
        Booted {
            slot,
            version: v(version),
            boot_id: boot.into(),
        }
    }

    fn state(phase: Phase) -> UpdateState {
        UpdateState {
            phase,
            ..Default::default()
        }
    }

    #[test]
    fn cmdline_names_slot_and_version() {
        let b = Booted::from_cmdline(
            "quiet cairn.slot=a \"cairn.version=1.2.0\" roothash=ab cairn.slot=b\n",
            "id1\n",
        )
        .unwrap();
        assert_eq!(b, booted(Slot::B, "1.2.0", "id1"));
        let err = Booted::from_cmdline("cairn.version=1", "x").unwrap_err();
        assert!(
            matches!(
                err,
                StateError::Cmdline {
                    key: "cairn.slot",
                    ..
                }
            ),
            "{err}"
        );
        let err = Booted::from_cmdline("cairn.slot=c cairn.version=1", "x").unwrap_err();
        assert!(err.to_string().contains("\"c\""), "{err}");
        let err = Booted::from_cmdline("cairn.slot=a cairn.version=1+2", "x").unwrap_err();
        assert!(
            matches!(
                err,
                StateError::Cmdline {
                    key: "cairn.version",
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn post_boot_decision_table() {
        use HealthGate as H;
        use PostBootAction as A;
        let trial_b = Phase::BootedUnverified {
            slot: Slot::B,
            version: v("1.3.0"),
            deadline_unix: 1000,
        };
        let requested = Phase::RebootRequested {
            slot: Slot::B,
            version: v("1.3.0"),
            boot_id: "before".into(),
            gate_secs: None,
        };
        let installed = Phase::Installed {
            slot: Slot::B,
            version: v("1.3.0"),
            entry: "cairn-b-1.3.0+3.efi".into(),
        };
        let on_b = booted(Slot::B, "1.3.0", "after");
        let on_a = booted(Slot::A, "1.2.0", "after");
        let bless = A::Bless {
            slot: Slot::B,
            version: v("1.3.0"),
        };
        let rolled = A::ReportRolledBack {
            slot: Slot::B,
            version: v("1.3.0"),
            booted: Slot::A,
        };
        // (phase, booted, health, now, expected)
        let table: Vec<(Phase, Booted, H, u64, A)> = vec![
            (trial_b.clone(), on_b.clone(), H::Ok, 10, bless.clone()),
            (trial_b.clone(), on_b.clone(), H::Pending, 999, A::Nothing),
            (trial_b.clone(), on_a.clone(), H::Ok, 10, rolled.clone()),
            (
                requested.clone(),
                on_a.clone(),
                H::Pending,
                10,
                rolled.clone(),
            ),
            (
                requested.clone(),
                booted(Slot::A, "1.2.0", "before"),
                H::Ok,
                10,
                A::Nothing,
            ),
            (requested.clone(), on_b.clone(), H::Ok, 10, bless.clone()),
            (installed.clone(), on_a.clone(), H::Ok, 10, A::Nothing),
            (installed.clone(), on_b.clone(), H::Ok, 10, bless.clone()),
            (
                Phase::Idle,
                on_a.clone(),
                H::Failed("x".into()),
                10,
                A::Nothing,
            ),
            (
                Phase::Blessed {
                    slot: Slot::B,
                    version: v("1.3.0"),
                },
                on_b.clone(),
                H::Failed("x".into()),
                10,
                A::Nothing,
            ),
            (
                Phase::Written {
                    slot: Slot::B,
                    version: v("1.3.0"),
                    root_sha256: Sha256([0; 32]),
                    verity_sha256: Sha256([0; 32]),
                },
                on_a.clone(),
                H::Ok,
                10,
                A::Nothing,
            ),
        ];
        for (i, (phase, b, h, now, want)) in table.into_iter().enumerate() {
            let got = decide_after_boot(&b, &state(phase.clone()), &h, now);
            assert_eq!(got, want, "row {i}: {phase:?} {b:?} {h:?}");
        }
        // Failures carry the reason.
        match decide_after_boot(
            &on_b,
            &state(trial_b.clone()),
            &H::Failed("node NotReady".into()),
            10,
        ) {
            A::MarkBadAndReboot {
                slot: Slot::B,
                reason,
                ..
            } => {
                assert_eq!(reason, "health gate failed: node NotReady")
            }
            other => panic!("{other:?}"),
        }
        match decide_after_boot(&on_b, &state(trial_b.clone()), &H::Pending, 1000) {
            A::MarkBadAndReboot { reason, .. } => assert!(reason.contains("deadline"), "{reason}"),
            other => panic!("{other:?}"),
        }
        match decide_after_boot(
            &booted(Slot::B, "1.1.0", "after"),
            &state(trial_b),
            &H::Ok,
            10,
        ) {
            A::MarkBadAndReboot { reason, .. } => {
                assert!(reason.contains("booted version 1.1.0"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn admission_and_blocking() {
        let running = v("1.2.0");
        let mut s = UpdateState::default();
        assert_eq!(s.admit(&running, &running), Admission::UpToDate);
        assert_eq!(s.admit(&running, &v("1.3.0")), Admission::Start);

        s.start(Slot::B, v("1.3.0")).unwrap();
        assert_eq!(s.admit(&running, &v("1.3.0")), Admission::Resume);
        assert_eq!(s.admit(&running, &v("1.4.0")), Admission::Start);
        assert_eq!(s.admit(&running, &running), Admission::Abandon);

        s.phase = Phase::Installed {
            slot: Slot::B,
            version: v("1.3.0"),
            entry: "cairn-b-1.3.0+3.efi".into(),
        };
        assert_eq!(s.admit(&running, &v("1.3.0")), Admission::AwaitReboot);
        s.request_reboot("boot-1").unwrap();
        assert_eq!(s.admit(&running, &v("1.3.0")), Admission::AwaitReboot);

        // The new slot boots: the gate's clock starts.
        let b = booted(Slot::B, "1.3.0", "boot-2");
        assert!(s.note_booted(&b, 100, 300));
        assert_eq!(
            s.phase,
            Phase::BootedUnverified {
                slot: Slot::B,
                version: v("1.3.0"),
                deadline_unix: 400
            }
        );
        assert!(!s.note_booted(&b, 200, 300), "only once");
        assert_eq!(s.admit(&v("1.3.0"), &v("1.3.0")), Admission::AwaitHealth);
        assert!(matches!(
            s.start(Slot::A, v("1.4.0")),
            Err(StateError::Transition { phase, .. }) if phase == "booted-unverified"
        ));

        s.fail("health gate failed: x").unwrap();
        assert_eq!(
            s.blocked.as_ref().map(|b| b.version.clone()),
            Some(v("1.3.0"))
        );
        assert_eq!(
            s.last_result
                .as_ref()
                .and_then(|r| r.failure.clone())
                .as_deref(),
            Some("health gate failed: x")
        );
        assert!(matches!(
            s.admit(&running, &v("1.3.0")),
            Admission::Blocked(_)
        ));
        assert!(!s.note_desired(&v("1.3.0")), "same version: still blocked");
        assert!(matches!(
            s.admit(&running, &v("1.3.0")),
            Admission::Blocked(_)
        ));
        // The repo names something else (here: the running version) ...
        assert!(s.note_desired(&running));
        assert_eq!(s.admit(&running, &running), Admission::UpToDate);
        // ... and later the failed version again: it is retried.
        assert_eq!(s.admit(&running, &v("1.3.0")), Admission::Start);
        assert!(s.fail("again").is_err(), "no failure without an attempt");
        s.blocked = Some(Blocked {
            version: v("1.3.0"),
            reason: "r".into(),
        });
        assert_eq!(s.unblock().map(|b| b.version), Some(v("1.3.0")));
        assert_eq!(s.admit(&running, &v("1.3.0")), Admission::Start);
    }

    #[test]
    fn a_power_cut_right_after_the_uki_rename_still_starts_the_trial() {
        // The entry was renamed into place, the power went before
        // `installed` was saved, and systemd-boot booted the new slot.
        let mut s = state(Phase::Verified {
            slot: Slot::B,
            version: v("1.3.0"),
        });
        assert!(!s.note_booted(&booted(Slot::A, "1.2.0", "boot-2"), 1, 1));
        assert!(s.phase.is_installing(), "on the old slot: resume");
        assert!(s.note_booted(&booted(Slot::B, "1.3.0", "boot-2"), 100, 300));
        assert_eq!(
            s.phase,
            Phase::BootedUnverified {
                slot: Slot::B,
                version: v("1.3.0"),
                deadline_unix: 400
            }
        );
    }

    #[test]
    fn reboot_in_the_same_boot_does_not_start_the_gate() {
        let mut s = state(Phase::RebootRequested {
            slot: Slot::B,
            version: v("1.3.0"),
            boot_id: "same".into(),
            gate_secs: Some(900),
        });
        assert!(!s.note_booted(&booted(Slot::B, "1.3.0", "same"), 1, 1));
        assert!(s.bless().is_ok());
        assert_eq!(
            s.phase,
            Phase::Blessed {
                slot: Slot::B,
                version: v("1.3.0")
            }
        );
        assert!(s.bless().is_err());
        assert!(s.request_reboot("x").is_err());
    }

    #[test]
    fn store_round_trips_atomically() {
        let d = tempfile::tempdir().unwrap();
        let store = StateStore::new(d.path().join("cairn"));
        assert_eq!(store.load().unwrap(), UpdateState::default());
        let s = UpdateState {
            schema: SCHEMA,
            phase: Phase::Written {
                slot: Slot::B,
                version: v("1.3.0"),
                root_sha256: Sha256::of(b"r"),
                verity_sha256: Sha256::of(b"v"),
            },
            blocked: Some(Blocked {
                version: v("1.1.0"),
                reason: "r".into(),
            }),
            last_result: None,
        };
        store.save(&s).unwrap();
        assert_eq!(store.load().unwrap(), s);
        let text = fs::read_to_string(store.path()).unwrap();
        assert!(text.contains("\"phase\": \"written\""), "{text}");
        assert!(text.contains(&Sha256::of(b"r").to_string()));
        let names: Vec<_> = fs::read_dir(d.path().join("cairn"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, [STATE_FILE], "no temp file left");

        fs::write(store.path(), "{\"schema\": 1, \"phase\": \"bogus\"}").unwrap();
        let err = store.load().unwrap_err();
        assert!(matches!(err, StateError::Corrupt { .. }), "{err}");
        assert!(err.to_string().contains(STATE_FILE));
        fs::write(store.path(), "{\"schema\": 9, \"phase\": \"idle\"}").unwrap();
        assert!(matches!(
            store.load().unwrap_err(),
            StateError::Schema { found: 9, .. }
        ));
    }

    #[test]
    fn watchdog_fires_only_for_an_undecided_trial_of_the_running_slot() {
        let b = |slot: Slot, ver: &str, boot: &str| Booted {
            slot,
            version: v(ver),
            boot_id: boot.into(),
        };
        let new = b(Slot::B, "2.0", "boot-1");
        let with = |phase: Phase| UpdateState {
            phase,
            ..Default::default()
        };
        // The agent noted the boot: it has the deadline plus the grace.
        let noted = with(Phase::BootedUnverified {
            slot: Slot::B,
            version: v("2.0"),
            deadline_unix: 1900,
        });
        assert_eq!(
            watchdog(&new, &noted, 1000, 1500, 300, 1800),
            Watchdog::Wait(2200)
        );
        match watchdog(&new, &noted, 1000, 2200, 300, 1800) {
            Watchdog::Fire {
                slot,
                version,
                reason,
            } => {
                assert_eq!((slot, version), (Slot::B, v("2.0")));
                assert!(
                    reason.contains("still undecided 300 s after its deadline"),
                    "{reason}"
                );
            }
            other => panic!("{other:?}"),
        }
        // The agent never ran on the new slot: from boot, `unnoted` seconds.
        let requested = with(Phase::RebootRequested {
            slot: Slot::B,
            version: v("2.0"),
            boot_id: "boot-0".into(),
            gate_secs: None,
        });
        assert_eq!(
            watchdog(&new, &requested, 1000, 1001, 300, 1800),
            Watchdog::Wait(2800)
        );
        assert!(matches!(
            watchdog(&new, &requested, 1000, 2800, 300, 1800),
            Watchdog::Fire { reason, .. } if reason.contains("did not start the health gate within 1800 s")
        ));
        // The power went right after the UKI's rename (still `verified`)
        // and the new slot booted: guarded the same way; on the old slot,
        // the install just resumes.
        let cut = with(Phase::Verified {
            slot: Slot::B,
            version: v("2.0"),
        });
        assert_eq!(
            watchdog(&new, &cut, 1000, 1001, 300, 1800),
            Watchdog::Wait(2800)
        );
        assert_eq!(
            watchdog(&b(Slot::A, "1.0", "boot-1"), &cut, 1000, 9999, 300, 1800),
            Watchdog::Done
        );
        // With the gate's limit recorded at the reboot request, that limit
        // (+ grace) counts from boot.
        let gated = with(Phase::RebootRequested {
            slot: Slot::B,
            version: v("2.0"),
            boot_id: "boot-0".into(),
            gate_secs: Some(600),
        });
        assert_eq!(
            watchdog(&new, &gated, 1000, 1001, 300, 1800),
            Watchdog::Wait(1900)
        );
        assert!(matches!(
            watchdog(&new, &gated, 1000, 1900, 300, 1800),
            Watchdog::Fire { reason, .. } if reason.contains("600 s from boot, + 300 s grace")
        ));
        // Still the boot that asked for the reboot, or the old slot running
        // (boot counting fell back), or another version in the slot, or
        // nothing on trial: nothing to guard.
        let old_boot = b(Slot::A, "1.0", "boot-0");
        assert_eq!(
            watchdog(&old_boot, &requested, 0, 9999, 300, 1800),
            Watchdog::Done
        );
        let same_boot = b(Slot::B, "2.0", "boot-0");
        assert_eq!(
            watchdog(&same_boot, &requested, 0, 9999, 300, 1800),
            Watchdog::Done
        );
        assert_eq!(
            watchdog(&b(Slot::A, "1.0", "boot-1"), &noted, 0, 9999, 300, 1800),
            Watchdog::Done
        );
        assert_eq!(
            watchdog(&b(Slot::B, "1.9", "boot-1"), &noted, 0, 9999, 300, 1800),
            Watchdog::Done
        );
        for settled in [
            Phase::Idle,
            Phase::Blessed {
                slot: Slot::B,
                version: v("2.0"),
            },
        ] {
            assert_eq!(
                watchdog(&new, &with(settled), 0, 9999, 300, 1800),
                Watchdog::Done
            );
        }
    }
}
