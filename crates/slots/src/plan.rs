//! The install plan and the post-boot actions, executed against the seams
//! ([`Esp`], [`SlotDisk`], [`ImageSource`], [`StateStore`]).
//!
//! # The install plan ([`plan_install`])
//!
//! | # | step | phase after | why here |
//! |---|------|-------------|----------|
//! | 0 | [`Step::PrepareCurrentEntry`] | started | the running slot must have a *live* entry, or a failed trial has nothing to fall back to |
//! | 1 | [`Step::RemoveTargetEntries`] | started | the target slot becomes unbootable before it is touched |
//! | 2 | [`Step::InvalidateTarget`] | invalidated | zero the heads of root and verity: a half-written slot can never mount |
//! | 3 | [`Step::WriteRoot`] | root-written | stream, hash, fsync, read back |
//! | 4 | [`Step::WriteVerity`] | written | the same for the hash tree |
//! | 5 | [`Step::Verify`] | verified | re-read both from the device right before making them bootable (also after a resume) |
//! | 6 | [`Step::SetTrialDefault`] | verified | `loader.conf` `default` = the trial pattern; matches nothing yet |
//! | 7 | [`Step::InstallUki`] | installed | temp + fsync + rename: the one atomic step that makes the new slot bootable |
//!
//! Every step is idempotent and the phase is saved after each one, so after
//! a crash anywhere [`Runner::new`] resumes from the saved phase and repeats
//! at most the interrupted step. Until step 7's rename, the target slot has
//! no boot entry (and `loader.conf`'s pattern matches nothing), so the
//! running slot stays the default; after it, the target is complete and
//! verified. The tests crash after every step, and inside steps.
//!
//! # After the reboot ([`apply_post_boot`])
//!
//! Bless: retire the other slot's live entries (`+0`), bless the new entry,
//! drop the `default` line. Each intermediate state boots the new slot (see
//! [`crate::entry`]). Mark bad: rename the new entry to `+0[-DONE]`, drop
//! the `default` line, record the failure and block the version, then the
//! caller reboots into the old slot.

use std::io::{self, Read};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::entry::{trial_default_pattern, EntryName, EntryState};
use crate::esp::{self, listing, Esp, EspError};
use crate::layout::DiskLayout;
use crate::slot::{Expected, OsVersion, Slot};
use crate::state::{Booted, Phase, PostBootAction, StateError, StateStore, UpdateState};
use crate::write::{self, BlockTarget, PartitionFile, WriteError, WriteReport};

/// One step of an install.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Step {
    /// Make sure the running slot's entry exists and is live (bless it if
    /// it was retired: it is running).
    PrepareCurrentEntry,
    /// Remove every boot entry (and temp file) of the target slot.
    RemoveTargetEntries,
    /// Zero the first MiB of the target's root and verity partitions.
    InvalidateTarget,
    /// Stream the root image into the target root partition.
    WriteRoot,
    /// Stream the verity image into the target verity partition.
    WriteVerity,
    /// Read both partitions back and check their hashes.
    Verify,
    /// Point `loader.conf`'s `default` at the target's trial entry.
    SetTrialDefault,
    /// Install the UKI as `cairn-<target>-<version>+3.efi`.
    InstallUki,
}

impl Step {
    /// What the step does to `target`, for status lines ("writing root-b").
    pub fn describe(self, target: Slot) -> String {
        match self {
            Step::PrepareCurrentEntry => "checking the running slot's boot entry".into(),
            Step::RemoveTargetEntries => format!("removing slot {target}'s boot entries"),
            Step::InvalidateTarget => format!("invalidating slot {target}"),
            Step::WriteRoot => format!("writing {}", target.root_label()),
            Step::WriteVerity => format!("writing {}", target.verity_label()),
            Step::Verify => format!("reading slot {target} back"),
            Step::SetTrialDefault => format!("making slot {target} the next boot"),
            Step::InstallUki => format!("installing slot {target}'s UKI"),
        }
    }
}

/// The ordered steps to install `version` into the slot that is not running.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstallPlan {
    /// The running slot (the fallback).
    pub current: Slot,
    /// The slot being written.
    pub target: Slot,
    /// The version being installed.
    pub version: OsVersion,
    /// The steps, in order.
    pub steps: Vec<Step>,
}

impl InstallPlan {
    /// Index of `step` in the plan.
    pub fn position(&self, step: Step) -> Option<usize> {
        self.steps.iter().position(|s| *s == step)
    }
}

/// Plan an install of `target_version` next to the running `current_slot`.
pub fn plan_install(current_slot: Slot, target_version: OsVersion) -> InstallPlan {
    InstallPlan {
        current: current_slot,
        target: current_slot.other(),
        version: target_version,
        steps: vec![
            Step::PrepareCurrentEntry,
            Step::RemoveTargetEntries,
            Step::InvalidateTarget,
            Step::WriteRoot,
            Step::WriteVerity,
            Step::Verify,
            Step::SetTrialDefault,
            Step::InstallUki,
        ],
    }
}

/// The three signed artifacts of an OS version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Images {
    /// Their version.
    pub version: OsVersion,
    /// The erofs root image.
    pub root: Expected,
    /// The dm-verity hash tree.
    pub verity: Expected,
    /// The UKI.
    pub uki: Expected,
}

/// Which artifact to open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImagePart {
    /// The erofs root image.
    Root,
    /// The dm-verity hash tree.
    Verity,
    /// The UKI.
    Uki,
}

impl ImagePart {
    /// How messages name it.
    pub fn describe(self) -> &'static str {
        match self {
            ImagePart::Root => "root",
            ImagePart::Verity => "verity",
            ImagePart::Uki => "UKI",
        }
    }
}

/// Where the artifacts' bytes come from (a download, a cache). Each call
/// starts a fresh stream from the beginning; the plan checks length and
/// hash.
pub trait ImageSource {
    /// Open one artifact (the stream may borrow the source, e.g. its HTTP
    /// client).
    fn open(&mut self, part: ImagePart) -> io::Result<Box<dyn Read + Send + '_>>;
}

/// Which partition of a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartKind {
    /// `root-<slot>`.
    Root,
    /// `verity-<slot>`.
    Verity,
}

/// Opens a slot's partitions.
pub trait SlotDisk {
    /// Open `root-<slot>` or `verity-<slot>` read-write.
    fn open(&mut self, slot: Slot, kind: PartKind) -> Result<Box<dyn BlockTarget>, WriteError>;
}

/// The real disk: partitions' block devices from a [`DiskLayout`].
#[derive(Debug, Clone)]
pub struct LayoutDisk(pub DiskLayout);

impl SlotDisk for LayoutDisk {
    fn open(&mut self, slot: Slot, kind: PartKind) -> Result<Box<dyn BlockTarget>, WriteError> {
        let part = match kind {
            PartKind::Root => self.0.root(slot),
            PartKind::Verity => self.0.verity(slot),
        };
        let Some(dev) = &part.device else {
            return Err(WriteError::Open {
                target: part.to_string(),
                source: io::Error::new(
                    io::ErrorKind::NotFound,
                    "it has no block device (the layout was read from an image file)",
                ),
            });
        };
        Ok(Box::new(PartitionFile::open(dev, &part.name)?))
    }
}

/// Partitions as files `root-a.img`, `verity-b.img`, … in a directory (for
/// image builds and tests).
#[derive(Debug, Clone)]
pub struct DirDisk(pub PathBuf);

impl SlotDisk for DirDisk {
    fn open(&mut self, slot: Slot, kind: PartKind) -> Result<Box<dyn BlockTarget>, WriteError> {
        let label = match kind {
            PartKind::Root => slot.root_label(),
            PartKind::Verity => slot.verity_label(),
        };
        Ok(Box::new(PartitionFile::open(
            &self.0.join(format!("{label}.img")),
            label,
        )?))
    }
}

/// A failed plan step or post-boot action.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// An ESP operation failed.
    #[error(transparent)]
    Esp(#[from] EspError),
    /// Writing, verifying or invalidating a partition failed.
    #[error(transparent)]
    Write(#[from] WriteError),
    /// Loading or saving the state failed, or a transition was refused.
    #[error(transparent)]
    State(#[from] StateError),
    /// An artifact could not be opened.
    #[error("opening the {} image of {version} failed: {source}; the download or cache is unavailable, retry", .part.describe())]
    Source {
        /// Which one.
        part: ImagePart,
        /// Its version.
        version: OsVersion,
        /// The I/O error.
        source: io::Error,
    },
    /// The running slot has no entry to fall back to.
    #[error("the running slot {slot} has no boot entry on {esp}; refusing to update, because a failed update would have nothing to fall back to: reinstall the running slot's UKI first")]
    NoFallbackEntry {
        /// The running slot.
        slot: Slot,
        /// The ESP.
        esp: String,
    },
    /// The images are of another version than the plan.
    #[error(
        "the plan installs {plan} but the images are of {images}; this is a bug in the caller"
    )]
    VersionMismatch {
        /// The plan's version.
        plan: OsVersion,
        /// The images' version.
        images: OsVersion,
    },
    /// The state says the new slot is being tried.
    #[error("an update to {version} in slot {slot} is being tried (phase {phase}); let the health gate decide before installing anything")]
    Busy {
        /// The slot being tried.
        slot: Slot,
        /// Its version.
        version: OsVersion,
        /// The phase.
        phase: &'static str,
    },
    /// The version failed before and the repository has not moved on.
    #[error("{version} failed before ({reason}); it is not retried until the repository names another version")]
    Blocked {
        /// The blocked version.
        version: OsVersion,
        /// Why it failed.
        reason: String,
    },
    /// The plan would overwrite the running slot.
    #[error("the state says slot {slot} is being written, but slot {slot} is running; refusing to touch it (is cairn.slot= on the kernel command line right?)")]
    TargetIsRunning {
        /// The slot.
        slot: Slot,
    },
    /// The entry to bless or mark is not on the ESP.
    #[error("no boot entry for version {version} in slot {slot} on {esp}; the ESP changed behind cairn's back, run `cairnctl update status`")]
    EntryMissing {
        /// The slot.
        slot: Slot,
        /// The version.
        version: OsVersion,
        /// The ESP.
        esp: String,
    },
}

/// The seams a plan runs against.
pub struct Seams<'a> {
    /// The ESP.
    pub esp: &'a mut dyn Esp,
    /// The slot partitions.
    pub disk: &'a mut dyn SlotDisk,
    /// The artifacts.
    pub source: &'a mut dyn ImageSource,
    /// The state file.
    pub store: &'a StateStore,
}

/// What a finished run did.
#[derive(Debug, Clone, PartialEq)]
pub struct RunReport {
    /// Steps executed in this run (a resumed run skips finished ones).
    pub executed: Vec<Step>,
    /// Root write statistics, if it was written in this run.
    pub root: Option<WriteReport>,
    /// Verity write statistics, if it was written in this run.
    pub verity: Option<WriteReport>,
    /// The state at the end (phase `installed`).
    pub state: UpdateState,
}

/// Executes a plan step by step, saving the phase after each step.
pub struct Runner<'p, 's> {
    plan: &'p InstallPlan,
    images: &'p Images,
    seams: Seams<'s>,
    state: UpdateState,
    next: usize,
    report: RunReport,
}

impl<'p, 's> Runner<'p, 's> {
    /// Load the state and work out where to (re)start: a settled state or
    /// an install of another version starts over, an interrupted install of
    /// this version resumes after its last saved step.
    pub fn new(
        plan: &'p InstallPlan,
        images: &'p Images,
        seams: Seams<'s>,
    ) -> Result<Self, PlanError> {
        if plan.version != images.version {
            return Err(PlanError::VersionMismatch {
                plan: plan.version.clone(),
                images: images.version.clone(),
            });
        }
        let mut state = seams.store.load()?;
        if let Phase::BootedUnverified { slot, version, .. } = &state.phase {
            return Err(PlanError::Busy {
                slot: *slot,
                version: version.clone(),
                phase: state.phase.name(),
            });
        }
        if let Some((slot, _)) = state.phase.target() {
            if slot == plan.current && (state.phase.is_installing() || state.phase.is_trial()) {
                return Err(PlanError::TargetIsRunning { slot });
            }
        }
        let same = state.phase.target() == Some((plan.target, &plan.version));
        // Resume right after the step that reached the saved phase.
        let after = |step: Step| plan.position(step).map_or(0, |i| i + 1);
        let next = match &state.phase {
            Phase::Started { .. } if same => 0,
            Phase::Invalidated { .. } if same => after(Step::InvalidateTarget),
            Phase::RootWritten { .. } if same => after(Step::WriteRoot),
            Phase::Written { .. } if same => after(Step::WriteVerity),
            Phase::Verified { .. } if same => after(Step::Verify),
            Phase::Installed { .. } | Phase::RebootRequested { .. } if same => plan.steps.len(),
            _ => {
                if let Some(b) = state.blocked.as_ref().filter(|b| b.version == plan.version) {
                    return Err(PlanError::Blocked {
                        version: b.version.clone(),
                        reason: b.reason.clone(),
                    });
                }
                state.start(plan.target, plan.version.clone())?;
                seams.store.save(&state)?;
                0
            }
        };
        if next > 0 {
            log::info!(
                "resuming the install of {} into slot {} after phase {}",
                plan.version,
                plan.target,
                state.phase.name()
            );
        }
        let report = RunReport {
            executed: Vec::new(),
            root: None,
            verity: None,
            state: state.clone(),
        };
        Ok(Runner {
            plan,
            images,
            seams,
            state,
            next,
            report,
        })
    }

    /// The step [`Runner::step`] will run next, `None` when done.
    pub fn next_step(&self) -> Option<Step> {
        self.plan.steps.get(self.next).copied()
    }

    /// Run the next step and save the phase; `Ok(None)` when all are done.
    pub fn step(&mut self) -> Result<Option<Step>, PlanError> {
        let Some(step) = self.next_step() else {
            return Ok(None);
        };
        log::info!(
            "install {} into slot {}: {step:?}",
            self.plan.version,
            self.plan.target
        );
        self.execute(step)?;
        self.seams.store.save(&self.state)?;
        self.report.executed.push(step);
        self.next += 1;
        Ok(Some(step))
    }

    /// Run all remaining steps.
    pub fn run(self) -> Result<RunReport, PlanError> {
        self.run_reporting(|_| {})
    }

    /// Run all remaining steps, telling `before` each step as it starts
    /// (for status lines).
    pub fn run_reporting(mut self, mut before: impl FnMut(Step)) -> Result<RunReport, PlanError> {
        while let Some(step) = self.next_step() {
            before(step);
            self.step()?;
        }
        self.report.state = self.state.clone();
        Ok(self.report)
    }

    /// Open an artifact; a free function over the fields so the stream's
    /// borrow of the source does not cover the ESP or the disk.
    fn open<'a>(
        source: &'a mut dyn ImageSource,
        plan: &InstallPlan,
        part: ImagePart,
    ) -> Result<Box<dyn Read + Send + 'a>, PlanError> {
        source.open(part).map_err(|source| PlanError::Source {
            part,
            version: plan.version.clone(),
            source,
        })
    }

    fn execute(&mut self, step: Step) -> Result<(), PlanError> {
        let (target, version) = (self.plan.target, self.plan.version.clone());
        match step {
            Step::PrepareCurrentEntry => self.prepare_current_entry(),
            Step::RemoveTargetEntries => remove_slot_entries(self.seams.esp, target),
            Step::InvalidateTarget => {
                let mut root = self.seams.disk.open(target, PartKind::Root)?;
                let mut verity = self.seams.disk.open(target, PartKind::Verity)?;
                write::invalidate(&mut [root.as_mut(), verity.as_mut()])?;
                self.state.phase = Phase::Invalidated {
                    slot: target,
                    version,
                };
                Ok(())
            }
            Step::WriteRoot => {
                let report = self.write_part(PartKind::Root)?;
                self.report.root = Some(report);
                self.state.phase = Phase::RootWritten {
                    slot: target,
                    version,
                    root_sha256: self.images.root.sha256,
                };
                Ok(())
            }
            Step::WriteVerity => {
                let report = self.write_part(PartKind::Verity)?;
                self.report.verity = Some(report);
                self.state.phase = Phase::Written {
                    slot: target,
                    version,
                    root_sha256: self.images.root.sha256,
                    verity_sha256: self.images.verity.sha256,
                };
                Ok(())
            }
            Step::Verify => {
                let checked = (|| -> Result<(), WriteError> {
                    let mut root = self.seams.disk.open(target, PartKind::Root)?;
                    write::verify_written(root.as_mut(), &self.images.root)?;
                    let mut verity = self.seams.disk.open(target, PartKind::Verity)?;
                    write::verify_written(verity.as_mut(), &self.images.verity)?;
                    Ok(())
                })();
                if let Err(e) = checked {
                    // The partitions do not hold the images: write them again
                    // next time.
                    self.reinvalidate(&[PartKind::Root, PartKind::Verity]);
                    self.state.phase = Phase::Invalidated {
                        slot: target,
                        version,
                    };
                    self.seams.store.save(&self.state)?;
                    self.next = self
                        .plan
                        .position(Step::InvalidateTarget)
                        .map_or(0, |i| i + 1);
                    return Err(e.into());
                }
                self.state.phase = Phase::Verified {
                    slot: target,
                    version,
                };
                Ok(())
            }
            Step::SetTrialDefault => {
                let pattern = trial_default_pattern(target, &version);
                esp::set_default(self.seams.esp, Some(&pattern))?;
                Ok(())
            }
            Step::InstallUki => {
                let name = EntryName::trial(target, version.clone()).file_name();
                let mut src = Self::open(self.seams.source, self.plan, ImagePart::Uki)?;
                self.seams.esp.install(&name, &mut src, &self.images.uki)?;
                self.state.phase = Phase::Installed {
                    slot: target,
                    version,
                    entry: name,
                };
                Ok(())
            }
        }
    }

    fn write_part(&mut self, kind: PartKind) -> Result<WriteReport, PlanError> {
        let (part, expected) = match kind {
            PartKind::Root => (ImagePart::Root, self.images.root),
            PartKind::Verity => (ImagePart::Verity, self.images.verity),
        };
        let mut src = Self::open(self.seams.source, self.plan, part)?;
        let mut dest = self.seams.disk.open(self.plan.target, kind)?;
        match write::write_image(&mut src, &expected, dest.as_mut()) {
            Ok(r) => Ok(r),
            Err(e) => {
                drop(dest);
                drop(src);
                self.reinvalidate(&[kind]);
                Err(e.into())
            }
        }
    }

    /// Best effort after a failed write: zero the head again. The slot has
    /// no entry anyway; this keeps it unmountable too.
    fn reinvalidate(&mut self, kinds: &[PartKind]) {
        for kind in kinds {
            let r = self
                .seams
                .disk
                .open(self.plan.target, *kind)
                .and_then(|mut t| write::invalidate(&mut [t.as_mut()]));
            if let Err(e) = r {
                log::warn!("could not re-invalidate slot {}: {e}", self.plan.target);
            }
        }
    }

    fn prepare_current_entry(&mut self) -> Result<(), PlanError> {
        let l = listing(self.seams.esp)?;
        let current = self.plan.current;
        let Some(best) = l.of_slot(current).first().map(|e| (*e).clone()) else {
            return Err(PlanError::NoFallbackEntry {
                slot: current,
                esp: self.seams.esp.describe(),
            });
        };
        if best.state() != EntryState::Blessed {
            let blessed = best.bless();
            log::warn!(
                "the running slot's entry {best} is not blessed; blessing it as {blessed} so a failed update can fall back to it"
            );
            self.seams
                .esp
                .rename(&best.file_name(), &blessed.file_name())?;
        }
        Ok(())
    }
}

/// Run a plan to the end (resuming an interrupted one).
pub fn run_plan(
    plan: &InstallPlan,
    images: &Images,
    seams: Seams<'_>,
) -> Result<RunReport, PlanError> {
    Runner::new(plan, images, seams)?.run()
}

/// Remove every entry of `slot`, its malformed `cairn-<slot>-*` files and
/// all cairn temp files.
fn remove_slot_entries(esp: &mut dyn Esp, slot: Slot) -> Result<(), PlanError> {
    let l = listing(esp)?;
    let prefix = format!("{}{slot}-", crate::entry::PREFIX);
    let doomed = l
        .of_slot(slot)
        .into_iter()
        .map(EntryName::file_name)
        .chain(
            l.malformed
                .iter()
                .map(|(n, _)| n.clone())
                .filter(|n| n.starts_with(&prefix)),
        )
        .chain(l.temp.iter().cloned());
    for name in doomed {
        log::info!("removing {name} from the ESP");
        esp.remove(&name)?;
    }
    Ok(())
}

/// Undo an install the repository no longer wants: remove the target's
/// entries, drop the `default` line, and go idle.
pub fn abandon_install(esp: &mut dyn Esp, store: &StateStore) -> Result<UpdateState, PlanError> {
    let mut state = store.load()?;
    if let Phase::BootedUnverified { slot, version, .. } = &state.phase {
        return Err(PlanError::Busy {
            slot: *slot,
            version: version.clone(),
            phase: state.phase.name(),
        });
    }
    if state.phase.is_installing() || state.phase.is_trial() {
        if let Some((slot, _)) = state.phase.target() {
            remove_slot_entries(esp, slot)?;
        }
        esp::set_default(esp, None)?;
        state.phase = Phase::Idle;
        store.save(&state)?;
    }
    Ok(state)
}

/// Entries of `slot` with `version` (any counter state).
fn entries_of(esp: &dyn Esp, slot: Slot, version: &OsVersion) -> Result<Vec<EntryName>, PlanError> {
    Ok(listing(esp)?
        .entries
        .into_iter()
        .filter(|e| e.slot() == slot && e.version() == version)
        .collect())
}

/// What the caller must do after [`apply_post_boot`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostBootOutcome {
    /// Reboot now (into the old slot).
    pub reboot: bool,
    /// The state as saved.
    pub state: UpdateState,
}

/// Carry out a [`PostBootAction`] on the ESP and the state (idempotent: a
/// crash in the middle is finished by deciding and applying again).
pub fn apply_post_boot(
    action: &PostBootAction,
    booted: &Booted,
    esp: &mut dyn Esp,
    store: &StateStore,
) -> Result<PostBootOutcome, PlanError> {
    let mut state = store.load()?;
    let reboot = match action {
        PostBootAction::Nothing => false,
        PostBootAction::Bless { slot, version } => {
            bless_slot(esp, *slot, version)?;
            if state.phase.is_trial() {
                state.bless()?;
                store.save(&state)?;
            }
            log::info!("slot {slot} with {version} is blessed");
            false
        }
        PostBootAction::MarkBadAndReboot {
            slot,
            version,
            reason,
        } => {
            mark_slot_bad(esp, *slot, version)?;
            if !state.phase.is_settled() {
                state.fail_and_leave(reason, &booted.boot_id)?;
                store.save(&state)?;
            }
            log::warn!(
                "slot {slot} with {version} failed: {reason}; rebooting into slot {}",
                slot.other()
            );
            true
        }
        PostBootAction::ReportRolledBack {
            slot,
            version,
            booted,
        } => {
            mark_slot_bad(esp, *slot, version)?;
            if !state.phase.is_settled() {
                state.fail(&format!(
                    "systemd-boot fell back to slot {booted}: slot {slot} with {version} did not come up"
                ))?;
                store.save(&state)?;
            }
            log::warn!("update to {version} rolled back to slot {booted}");
            false
        }
    };
    Ok(PostBootOutcome { reboot, state })
}

/// Bless: retire the other slot's live entries, bless this one, drop the
/// `default` line; in that order, so every intermediate state boots `slot`.
fn bless_slot(esp: &mut dyn Esp, slot: Slot, version: &OsVersion) -> Result<(), PlanError> {
    let mine = entries_of(esp, slot, version)?;
    let Some(entry) = mine.first().cloned() else {
        return Err(PlanError::EntryMissing {
            slot,
            version: version.clone(),
            esp: esp.describe(),
        });
    };
    for other in listing(esp)?.of_slot(slot.other()) {
        if other.is_live() {
            let retired = other.mark_bad();
            log::info!("retiring {other} as {retired}");
            esp.rename(&other.file_name(), &retired.file_name())?;
        }
    }
    if entry.state() != EntryState::Blessed {
        esp.rename(&entry.file_name(), &entry.bless().file_name())?;
    }
    esp::set_default(esp, None)?;
    Ok(())
}

/// Mark bad: rename the live entries of `slot`/`version` to `+0[-DONE]` and
/// drop the `default` line.
fn mark_slot_bad(esp: &mut dyn Esp, slot: Slot, version: &OsVersion) -> Result<(), PlanError> {
    for e in entries_of(esp, slot, version)? {
        if e.is_live() {
            esp.rename(&e.file_name(), &e.mark_bad().file_name())?;
        }
    }
    esp::set_default(esp, None)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entry::{default_entry, sd_boot::DefaultSettings};
    use crate::esp::{loader_conf_default, MemEsp, MemFault};
    use crate::state::{decide_after_boot, Booted, HealthGate};
    use std::fs;
    use std::path::Path;

    fn v(s: &str) -> OsVersion {
        OsVersion::new(s).unwrap()
    }

    fn noise(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        let mut out = Vec::with_capacity(len + 8);
        while out.len() < len {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            out.extend_from_slice(&x.to_le_bytes());
        }
        out.truncate(len);
        out
    }

    /// Artifacts in memory; optionally the root stream breaks after n bytes.
    struct MemSource {
        root: Vec<u8>,
        verity: Vec<u8>,
        uki: Vec<u8>,
        break_root_after: Option<usize>,
    }

    struct Breaking {
        data: io::Cursor<Vec<u8>>,
        left: usize,
    }

    impl Read for Breaking {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.left == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::ConnectionReset,
                    "download cut",
                ));
            }
            let n = buf.len().min(self.left);
            let got = self.data.read(&mut buf[..n])?;
            self.left -= got;
            Ok(got)
        }
    }

    impl ImageSource for MemSource {
        fn open(&mut self, part: ImagePart) -> io::Result<Box<dyn Read + Send + '_>> {
            let data = match part {
                ImagePart::Root => self.root.clone(),
                ImagePart::Verity => self.verity.clone(),
                ImagePart::Uki => self.uki.clone(),
            };
            if part == ImagePart::Root {
                if let Some(left) = self.break_root_after.take() {
                    return Ok(Box::new(Breaking {
                        data: io::Cursor::new(data),
                        left,
                    }));
                }
            }
            Ok(Box::new(io::Cursor::new(data)))
        }
    }

    /// A machine: ESP, four partition files, a state dir, and the artifacts
    /// of the version being installed.
    struct Machine {
        _dir: tempfile::TempDir,
        disk_dir: PathBuf,
        esp: MemEsp,
        store: StateStore,
        source: MemSource,
        images: Images,
        old_root: Vec<u8>,
        old_b_root: Vec<u8>,
    }

    const PART: u64 = 5 << 20;

    impl Machine {
        /// Slot a runs `running` (blessed); slot b holds a retired older
        /// image; we install `new` into b.
        fn new(running: &str, new: &str) -> Machine {
            // A root image spanning two pipeline buffers.
            Self::with_sizes(running, new, crate::write::CHUNK + 4321, PART)
        }

        /// The same with a smaller root image and partitions (the crash
        /// matrix runs 36 installs).
        fn with_sizes(running: &str, new: &str, root_len: usize, part: u64) -> Machine {
            let dir = tempfile::tempdir().unwrap();
            let disk_dir = dir.path().join("disk");
            fs::create_dir_all(&disk_dir).unwrap();
            // Slot a's root holds recognisable bytes (it must stay untouched);
            // the rest are sparse, with an old image's head in slot b.
            let old_root = noise(part as usize, 77);
            fs::write(disk_dir.join("root-a.img"), &old_root).unwrap();
            for name in ["verity-a", "root-b", "verity-b"] {
                let p = disk_dir.join(format!("{name}.img"));
                fs::File::create(&p).unwrap().set_len(part).unwrap();
            }
            let old_b_verity = noise(4096, 79);
            fs::write(disk_dir.join("verity-b.img"), &old_b_verity).unwrap();
            fs::File::options()
                .write(true)
                .open(disk_dir.join("verity-b.img"))
                .unwrap()
                .set_len(part)
                .unwrap();
            let old_b_root = noise(part as usize, 78);
            fs::write(disk_dir.join("root-b.img"), &old_b_root).unwrap();
            let mut esp =
                MemEsp::with_files(&[&format!("cairn-a-{running}.efi"), "cairn-b-0.9.0+0.efi"]);
            esp.loader_conf = Some("timeout 0\n".into());
            let source = MemSource {
                root: noise(root_len, 1),
                verity: noise(70_000, 2),
                uki: noise(5000, 3),
                break_root_after: None,
            };
            let images = Images {
                version: v(new),
                root: Expected::of(&source.root),
                verity: Expected::of(&source.verity),
                uki: Expected::of(&source.uki),
            };
            Machine {
                store: StateStore::new(dir.path().join("state")),
                _dir: dir,
                disk_dir,
                esp,
                source,
                images,
                old_root,
                old_b_root,
            }
        }

        fn plan(&self) -> InstallPlan {
            plan_install(Slot::A, self.images.version.clone())
        }

        fn runner<'a>(
            &'a mut self,
            plan: &'a InstallPlan,
            disk: &'a mut DirDisk,
        ) -> Result<Runner<'a, 'a>, PlanError> {
            Runner::new(
                plan,
                &self.images,
                Seams {
                    esp: &mut self.esp,
                    disk,
                    source: &mut self.source,
                    store: &self.store,
                },
            )
        }

        fn part(&self, label: &str) -> Vec<u8> {
            fs::read(self.disk_dir.join(format!("{label}.img"))).unwrap()
        }

        fn target_complete(&self) -> bool {
            let r = self.part("root-b");
            let vr = self.part("verity-b");
            r[..self.source.root.len()] == self.source.root[..]
                && vr[..self.source.verity.len()] == self.source.verity[..]
        }

        fn settings(&self) -> DefaultSettings {
            DefaultSettings {
                conf_default: self
                    .esp
                    .loader_conf
                    .as_deref()
                    .and_then(loader_conf_default),
                ..Default::default()
            }
        }

        /// What systemd-boot 252 would boot now.
        fn default(&self) -> Option<EntryName> {
            let l = listing(&self.esp).unwrap();
            default_entry(&l.entries, &self.settings())
        }

        /// One power-on: systemd-boot picks the default and bumps its
        /// counter (renaming the file) before starting it.
        fn boot(&mut self) -> EntryName {
            let e = self.default().expect("something to boot");
            let next = e.after_try();
            if next != e {
                self.esp.rename(&e.file_name(), &next.file_name()).unwrap();
            }
            next
        }

        /// The invariant: the default is the old slot, or the new slot fully
        /// written; and no target entry exists for a half-written slot.
        fn assert_bootable(&self, when: &str) {
            let d = self
                .default()
                .unwrap_or_else(|| panic!("{when}: nothing bootable"));
            match d.slot() {
                Slot::A => assert_eq!(d.file_name(), "cairn-a-1.3.0.efi", "{when}"),
                Slot::B => {
                    assert_eq!(d.version(), &self.images.version, "{when}: {d}");
                    assert!(
                        self.target_complete(),
                        "{when}: {d} is the default but slot b is not fully written"
                    );
                }
            }
            // A slot that holds neither its old image nor the complete new
            // one must not be mountable: root or verity head zeroed.
            let untouched = self.part("root-b") == self.old_b_root
                && self.part("verity-b")[..4096] == noise(4096, 79)[..];
            if !untouched && !self.target_complete() {
                let zero_head = |label: &str| self.part(label)[..1 << 20].iter().all(|b| *b == 0);
                assert!(
                    zero_head("root-b") || zero_head("verity-b"),
                    "{when}: slot b is partially written and its heads are not zeroed"
                );
            }
            // Not even a retired entry may point at a partially written slot
            // (it could still be picked by hand in the menu).
            for e in listing(&self.esp).unwrap().of_slot(Slot::B) {
                let new_ok = e.version() == &self.images.version && self.target_complete();
                let old_ok =
                    e.version().as_str() == "0.9.0" && self.part("root-b") == self.old_b_root;
                assert!(
                    new_ok || old_ok,
                    "{when}: entry {e} exists while slot b holds neither its old nor its new image"
                );
            }
        }
    }

    fn finish(m: &mut Machine) -> RunReport {
        let plan = m.plan();
        let mut disk = DirDisk(m.disk_dir.clone());
        m.runner(&plan, &mut disk).unwrap().run().unwrap()
    }

    #[test]
    fn plan_lists_the_steps_in_order() {
        let p = plan_install(Slot::B, v("2.0"));
        assert_eq!(p.target, Slot::A);
        assert_eq!(
            p.steps,
            [
                Step::PrepareCurrentEntry,
                Step::RemoveTargetEntries,
                Step::InvalidateTarget,
                Step::WriteRoot,
                Step::WriteVerity,
                Step::Verify,
                Step::SetTrialDefault,
                Step::InstallUki,
            ]
        );
    }

    /// Full cycle for an upgrade and a downgrade: install, boot the new
    /// slot (even though it may sort lower), bless, and the new slot stays
    /// the default afterwards.
    #[test]
    fn install_try_bless_for_upgrade_and_downgrade() {
        for new in ["1.4.0", "1.1.0"] {
            let mut m = Machine::new("1.3.0", new);
            let report = finish(&mut m);
            assert_eq!(report.executed.len(), 8);
            assert!(report.root.is_some_and(|r| r.bytes == m.images.root.len));
            assert!(m.target_complete());
            assert_eq!(
                m.esp.files.get(&format!("cairn-b-{new}+3.efi")),
                Some(&m.source.uki)
            );
            assert!(!m.esp.files.contains_key("cairn-b-0.9.0+0.efi"));
            assert_eq!(
                m.part("root-a"),
                m.old_root,
                "the running slot is untouched"
            );

            let mut s = m.store.load().unwrap();
            s.request_reboot("boot-0").unwrap();
            m.store.save(&s).unwrap();

            let booted = m.boot();
            assert_eq!(
                booted.file_name(),
                format!("cairn-b-{new}+2-1.efi"),
                "{new}: the new slot is tried first"
            );
            let b = Booted {
                slot: Slot::B,
                version: v(new),
                boot_id: "boot-1".into(),
            };
            let mut s = m.store.load().unwrap();
            assert!(s.note_booted(&b, 1000, 600));
            m.store.save(&s).unwrap();
            let action = decide_after_boot(&b, &s, &HealthGate::Ok, 1100);
            assert_eq!(
                action,
                PostBootAction::Bless {
                    slot: Slot::B,
                    version: v(new)
                }
            );
            let out = apply_post_boot(&action, &b, &mut m.esp, &m.store).unwrap();
            assert!(!out.reboot);
            assert_eq!(
                out.state.phase,
                Phase::Blessed {
                    slot: Slot::B,
                    version: v(new)
                }
            );
            assert_eq!(m.esp.files.keys().cloned().collect::<Vec<_>>(), {
                let mut want = vec![
                    "cairn-a-1.3.0+0.efi".to_string(),
                    format!("cairn-b-{new}.efi"),
                ];
                want.sort();
                want
            });
            assert_eq!(
                m.esp.loader_conf.as_deref(),
                Some("timeout 0\n"),
                "default line dropped, rest kept"
            );
            // Later boots keep choosing the blessed new slot, whatever the versions.
            for _ in 0..3 {
                assert_eq!(m.boot().file_name(), format!("cairn-b-{new}.efi"));
            }
            // Applying the same action again changes nothing.
            let before = m.esp.files.clone();
            apply_post_boot(&action, &b, &mut m.esp, &m.store).unwrap();
            assert_eq!(m.esp.files, before);
        }
    }

    /// The new slot never comes up: systemd-boot tries it three times, then
    /// falls back; the agent on the old slot reports the rollback and blocks
    /// the version.
    #[test]
    fn boot_counting_falls_back_and_the_version_is_blocked() {
        for new in ["1.4.0", "1.1.0"] {
            let mut m = Machine::new("1.3.0", new);
            finish(&mut m);
            let mut s = m.store.load().unwrap();
            s.request_reboot("boot-0").unwrap();
            m.store.save(&s).unwrap();
            let tries: Vec<String> = (0..3).map(|_| m.boot().file_name()).collect();
            assert_eq!(
                tries,
                [
                    format!("cairn-b-{new}+2-1.efi"),
                    format!("cairn-b-{new}+1-2.efi"),
                    format!("cairn-b-{new}+0-3.efi")
                ]
            );
            assert_eq!(
                m.boot().file_name(),
                "cairn-a-1.3.0.efi",
                "{new}: fallback to the old slot"
            );

            let b = Booted {
                slot: Slot::A,
                version: v("1.3.0"),
                boot_id: "boot-4".into(),
            };
            let s = m.store.load().unwrap();
            let action = decide_after_boot(&b, &s, &HealthGate::Pending, 0);
            assert_eq!(
                action,
                PostBootAction::ReportRolledBack {
                    slot: Slot::B,
                    version: v(new),
                    booted: Slot::A
                }
            );
            let out = apply_post_boot(&action, &b, &mut m.esp, &m.store).unwrap();
            assert!(!out.reboot);
            assert!(
                matches!(&out.state.phase, Phase::Failed { reason, .. } if reason.contains("fell back to slot a"))
            );
            assert_eq!(
                out.state.admit(&v("1.3.0"), &v(new)),
                crate::state::Admission::Blocked(out.state.blocked.clone().unwrap())
            );
            assert_eq!(
                loader_conf_default(m.esp.loader_conf.as_deref().unwrap()),
                None
            );
            assert_eq!(m.boot().file_name(), "cairn-a-1.3.0.efi");
            // Running the plan for the blocked version anyway is refused.
            let plan = m.plan();
            let mut disk = DirDisk(m.disk_dir.clone());
            let err = m.runner(&plan, &mut disk).err().unwrap();
            assert!(
                matches!(&err, PlanError::Blocked { version, .. } if version.as_str() == new),
                "{err}"
            );
        }
    }

    /// The new slot boots but the health gate fails: mark bad, reboot, and
    /// the old slot is chosen although the bad entry had tries left.
    #[test]
    fn failed_health_gate_marks_bad_and_returns_to_the_old_slot() {
        let mut m = Machine::new("1.3.0", "1.4.0");
        finish(&mut m);
        let mut s = m.store.load().unwrap();
        s.request_reboot("boot-0").unwrap();
        m.store.save(&s).unwrap();
        assert_eq!(m.boot().file_name(), "cairn-b-1.4.0+2-1.efi");
        let b = Booted {
            slot: Slot::B,
            version: v("1.4.0"),
            boot_id: "boot-1".into(),
        };
        let mut s = m.store.load().unwrap();
        s.note_booted(&b, 0, 10);
        m.store.save(&s).unwrap();
        let action = decide_after_boot(&b, &s, &HealthGate::Failed("node NotReady".into()), 5);
        let out = apply_post_boot(&action, &b, &mut m.esp, &m.store).unwrap();
        assert!(out.reboot);
        assert!(m.esp.files.contains_key("cairn-b-1.4.0+0-1.efi"));
        assert_eq!(m.boot().file_name(), "cairn-a-1.3.0.efi");
        assert_eq!(
            out.state.blocked.as_ref().unwrap().reason,
            "health gate failed: node NotReady"
        );
        // Still on slot b in the same boot: the reboot did not happen, ask
        // again. Back on b after a reboot: slot a did not boot, stay put.
        // On slot a: done.
        use crate::state::{after_failure, AfterFailure};
        let slot_b = |boot: &str| Booted {
            boot_id: boot.into(),
            ..b.clone()
        };
        assert_eq!(
            after_failure(&slot_b("boot-1"), &out.state),
            AfterFailure::RebootAgain {
                slot: Slot::B,
                version: v("1.4.0")
            }
        );
        assert_eq!(
            after_failure(&slot_b("boot-2"), &out.state),
            AfterFailure::Stuck {
                slot: Slot::B,
                version: v("1.4.0")
            }
        );
        let on_a = Booted {
            slot: Slot::A,
            version: v("1.3.0"),
            boot_id: "boot-2".into(),
        };
        assert_eq!(after_failure(&on_a, &out.state), AfterFailure::NotOnIt);
        // The state file keeps the leaving boot across restarts.
        assert_eq!(m.store.load().unwrap(), out.state);
    }

    /// Crash after every step k (effects done and saved), then after every
    /// step's effects but before its phase was saved; each time the machine
    /// must be bootable as before or fully updated, and re-running finishes
    /// the install.
    #[test]
    fn every_crash_point_keeps_the_machine_bootable() {
        for new in ["1.4.0", "1.1.0"] {
            for k in 0..=8 {
                for lose_last_save in [false, true] {
                    let when = format!("{new}, crash after {k} steps, lost save: {lose_last_save}");
                    let mut m = Machine::with_sizes("1.3.0", new, 300_001, 1 << 20);
                    let plan = m.plan();
                    let mut disk = DirDisk(m.disk_dir.clone());
                    let state_path = m.store.path();
                    {
                        let mut r = m.runner(&plan, &mut disk).unwrap();
                        for i in 0..k {
                            let before = fs::read(&state_path).unwrap();
                            r.step()
                                .unwrap()
                                .unwrap_or_else(|| panic!("{when}: step {i} missing"));
                            if lose_last_save && i + 1 == k {
                                fs::write(&state_path, before).unwrap();
                            }
                        }
                    }
                    m.assert_bootable(&when);
                    let report = finish(&mut m);
                    assert!(report.executed.len() <= 8, "{when}");
                    assert!(report.executed.len() >= 8 - k, "{when}");
                    assert!(
                        matches!(report.state.phase, Phase::Installed { .. }),
                        "{when}"
                    );
                    m.assert_bootable(&format!("{when}, resumed"));
                    assert_eq!(
                        m.default().unwrap().file_name(),
                        format!("cairn-b-{new}+3.efi"),
                        "{when}"
                    );
                    assert_eq!(m.part("root-a"), m.old_root, "{when}");
                }
            }
        }
    }

    #[test]
    fn a_crash_inside_the_root_write_resumes_by_rewriting() {
        let mut m = Machine::new("1.3.0", "1.1.0");
        m.source.break_root_after = Some(crate::write::CHUNK + 17);
        assert!(m.source.root.len() > crate::write::CHUNK + 17);
        let plan = m.plan();
        let mut disk = DirDisk(m.disk_dir.clone());
        let err = m.runner(&plan, &mut disk).unwrap().run().unwrap_err();
        assert!(
            matches!(err, PlanError::Write(WriteError::SourceRead { offset, .. }) if offset == crate::write::CHUNK as u64 + 17),
            "{err}"
        );
        assert!(err.to_string().contains("root-b"), "{err}");
        assert!(matches!(
            m.store.load().unwrap().phase,
            Phase::Invalidated { .. }
        ));
        assert!(
            m.part("root-b")[..1 << 20].iter().all(|b| *b == 0),
            "re-invalidated"
        );
        m.assert_bootable("after the broken download");
        let report = finish(&mut m);
        assert_eq!(
            report.executed[0],
            Step::WriteRoot,
            "resumes at the root write"
        );
        assert!(m.target_complete());
    }

    #[test]
    fn a_crash_inside_the_uki_install_leaves_only_an_ignored_temp_file() {
        let mut m = Machine::new("1.3.0", "1.4.0");
        m.esp.fault = Some(MemFault::InstallBeforeRename);
        let plan = m.plan();
        let mut disk = DirDisk(m.disk_dir.clone());
        let err = m.runner(&plan, &mut disk).unwrap().run().unwrap_err();
        assert!(
            matches!(err, PlanError::Esp(EspError::Injected(_))),
            "{err}"
        );
        assert_eq!(listing(&m.esp).unwrap().temp.len(), 1);
        m.assert_bootable("after the interrupted UKI install");
        assert_eq!(m.default().unwrap().file_name(), "cairn-a-1.3.0.efi");
        let report = finish(&mut m);
        assert_eq!(report.executed, [Step::SetTrialDefault, Step::InstallUki]);
        assert_eq!(m.default().unwrap().file_name(), "cairn-b-1.4.0+3.efi");
    }

    #[test]
    fn a_corrupted_partition_found_by_verify_is_rewritten() {
        let mut m = Machine::new("1.3.0", "1.4.0");
        let plan = m.plan();
        let mut disk = DirDisk(m.disk_dir.clone());
        {
            let mut r = m.runner(&plan, &mut disk).unwrap();
            for _ in 0..5 {
                r.step().unwrap();
            }
        }
        // Bit rot between the write and the verify step.
        let p = m.disk_dir.join("verity-b.img");
        let mut data = fs::read(&p).unwrap();
        data[100] ^= 1;
        fs::write(&p, data).unwrap();
        let err = m.runner(&plan, &mut disk).unwrap().run().unwrap_err();
        assert!(
            matches!(err, PlanError::Write(WriteError::VerifyMismatch { .. })),
            "{err}"
        );
        assert!(matches!(
            m.store.load().unwrap().phase,
            Phase::Invalidated { .. }
        ));
        m.assert_bootable("after verify found corruption");
        let report = finish(&mut m);
        assert_eq!(report.executed[0], Step::WriteRoot);
        assert!(m.target_complete());
    }

    #[test]
    fn no_entry_for_the_running_slot_is_refused_before_writing() {
        let mut m = Machine::new("1.3.0", "1.4.0");
        m.esp.files.remove("cairn-a-1.3.0.efi");
        let plan = m.plan();
        let mut disk = DirDisk(m.disk_dir.clone());
        let err = m.runner(&plan, &mut disk).unwrap().run().unwrap_err();
        assert!(
            matches!(err, PlanError::NoFallbackEntry { slot: Slot::A, .. }),
            "{err}"
        );
        assert_eq!(
            m.part("root-b"),
            noise(PART as usize, 78),
            "nothing written"
        );
    }

    #[test]
    fn a_retired_running_entry_is_blessed_first() {
        let mut m = Machine::new("1.3.0", "1.4.0");
        m.esp.files.remove("cairn-a-1.3.0.efi");
        m.esp.files.insert("cairn-a-1.3.0+0.efi".into(), Vec::new());
        finish(&mut m);
        assert!(m.esp.files.contains_key("cairn-a-1.3.0.efi"));
        // And the fallback works because of it.
        for _ in 0..3 {
            m.boot();
        }
        assert_eq!(m.boot().file_name(), "cairn-a-1.3.0.efi");
    }

    #[test]
    fn a_different_version_restarts_and_the_running_slot_is_never_a_target() {
        let mut m = Machine::new("1.3.0", "1.4.0");
        finish(&mut m);
        // The repo moves to 1.5.0 before the reboot.
        let mut m2 = Machine::new("1.3.0", "1.5.0");
        m2.esp = m.esp.clone();
        fs::create_dir_all(m2.store.path().parent().unwrap()).unwrap();
        fs::copy(m.store.path(), m2.store.path()).unwrap();
        let report = finish(&mut m2);
        assert_eq!(report.executed.len(), 8);
        assert!(!m2.esp.files.contains_key("cairn-b-1.4.0+3.efi"));
        assert_eq!(m2.default().unwrap().file_name(), "cairn-b-1.5.0+3.efi");

        // A plan that would write the running slot is refused.
        let wrong = plan_install(Slot::B, v("1.5.0"));
        let mut disk = DirDisk(m2.disk_dir.clone());
        let err = Runner::new(
            &wrong,
            &m2.images,
            Seams {
                esp: &mut m2.esp,
                disk: &mut disk,
                source: &mut m2.source,
                store: &m2.store,
            },
        )
        .err()
        .unwrap();
        assert!(
            matches!(err, PlanError::TargetIsRunning { slot: Slot::B }),
            "{err}"
        );
    }

    #[test]
    fn nothing_is_installed_while_a_trial_awaits_the_health_gate() {
        let mut m = Machine::with_sizes("1.3.0", "1.4.0", 1000, 1 << 20);
        let s = UpdateState {
            phase: Phase::BootedUnverified {
                slot: Slot::B,
                version: v("1.2.0"),
                deadline_unix: 9,
            },
            ..Default::default()
        };
        m.store.save(&s).unwrap();
        let plan = m.plan();
        let mut disk = DirDisk(m.disk_dir.clone());
        let err = m.runner(&plan, &mut disk).err().unwrap();
        assert!(
            matches!(err, PlanError::Busy { slot: Slot::B, .. }),
            "{err}"
        );
        assert!(matches!(
            abandon_install(&mut m.esp, &m.store),
            Err(PlanError::Busy { .. })
        ));
    }

    #[test]
    fn abandon_removes_the_trial_entry() {
        let mut m = Machine::new("1.3.0", "1.4.0");
        finish(&mut m);
        let s = abandon_install(&mut m.esp, &m.store).unwrap();
        assert_eq!(s.phase, Phase::Idle);
        assert_eq!(listing(&m.esp).unwrap().of_slot(Slot::B).len(), 0);
        assert_eq!(m.default().unwrap().file_name(), "cairn-a-1.3.0.efi");
    }

    #[test]
    fn layout_disk_needs_block_devices() {
        let d = tempfile::tempdir().unwrap();
        let (img, _) = crate::layout::tests::cairn_image(d.path());
        let layout = DiskLayout::find(&crate::layout::GptSource::new(&img)).unwrap();
        let err = LayoutDisk(layout)
            .open(Slot::B, PartKind::Root)
            .err()
            .unwrap();
        assert!(
            err.to_string().contains("root-b") && err.to_string().contains("no block device"),
            "{err}"
        );
    }

    // One loop device per partition: the kernels these tests run on may
    // lack GPT support, so partition scanning of a whole-disk loop is not
    // relied on.
    use crate::testloop::Loop;

    fn read_dev(dev: &Path, len: usize) -> Vec<u8> {
        let mut buf = vec![0u8; len];
        fs::File::open(dev).unwrap().read_exact(&mut buf).unwrap();
        buf
    }

    /// Root tier: an install onto a GPT disk attached as a loop device —
    /// partitions found through sysfs, written through their block devices
    /// (`O_DIRECT`), a download that breaks half way leaves the slot's head
    /// zeroed on the device, the resumed install lands every byte, and the
    /// running slot's partition is not touched.
    #[test]
    #[ignore = "root tier: needs root and loop devices (the test command runs it)"]
    fn root_tier_install_onto_loop_devices() {
        use std::io::Write as _;
        let mut m = Machine::new("1.3.0", "2.0.0");
        let d = tempfile::tempdir().unwrap();
        let (img, _) = crate::layout::tests::cairn_image(d.path());
        let mut layout = DiskLayout::find(&crate::layout::GptSource::new(&img)).unwrap();
        let mut loops = Vec::new();
        for part in [
            &mut layout.root_a,
            &mut layout.verity_a,
            &mut layout.root_b,
            &mut layout.verity_b,
        ] {
            let lo = Loop::attach(
                &img,
                &[
                    format!("--offset={}", part.start),
                    format!("--sizelimit={}", part.size),
                ],
            );
            part.device = Some(lo.0.clone());
            loops.push(lo);
        }
        let dev = |slot, kind| {
            let p = match kind {
                PartKind::Root => layout.root(slot),
                PartKind::Verity => layout.verity(slot),
            };
            p.device.clone().unwrap()
        };
        // Slot a holds recognisable bytes; slot b an old image's head.
        let a_bytes = noise(1 << 20, 5);
        let b_head = noise(1 << 20, 6);
        for (slot, bytes) in [(Slot::A, &a_bytes), (Slot::B, &b_head)] {
            let mut f = fs::OpenOptions::new()
                .write(true)
                .open(dev(slot, PartKind::Root))
                .unwrap();
            f.write_all(bytes).unwrap();
            f.sync_all().unwrap();
        }
        let b_root = dev(Slot::B, PartKind::Root);
        assert!(
            PartitionFile::open(&b_root, "root-b").unwrap().is_direct(),
            "{} should take O_DIRECT",
            b_root.display()
        );

        let plan = m.plan();
        let mut disk = LayoutDisk(layout.clone());
        m.source.break_root_after = Some(crate::write::CHUNK + 17);
        let seams = Seams {
            esp: &mut m.esp,
            disk: &mut disk,
            source: &mut m.source,
            store: &m.store,
        };
        let err = run_plan(&plan, &m.images, seams).unwrap_err();
        assert!(err.to_string().contains("root-b"), "{err}");
        assert!(
            read_dev(&b_root, 1 << 20).iter().all(|b| *b == 0),
            "a broken download must leave root-b's head zeroed on the device"
        );
        assert!(listing(&m.esp).unwrap().of_slot(Slot::B).is_empty());

        let seams = Seams {
            esp: &mut m.esp,
            disk: &mut disk,
            source: &mut m.source,
            store: &m.store,
        };
        let report = run_plan(&plan, &m.images, seams).unwrap();
        assert!(report.root.is_some() && report.verity.is_some());
        // Read through the page cache after the writer's O_DIRECT writes:
        // what the kernel will mount must be what was signed.
        assert_eq!(read_dev(&b_root, m.source.root.len()), m.source.root);
        assert_eq!(
            read_dev(&dev(Slot::B, PartKind::Verity), m.source.verity.len()),
            m.source.verity
        );
        assert_eq!(read_dev(&dev(Slot::A, PartKind::Root), 1 << 20), a_bytes);
        assert_eq!(m.default().unwrap().slot(), Slot::B);
    }
}
