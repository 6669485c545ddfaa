//! A/B OS slots for disk mode: boot-counted UKI entries on the ESP,
//! streaming verified writes into the inactive slot, and the update state
//! machine that ties them together.
//!
//! A cairn disk has a GPT with the partitions `esp`, `root-a`, `verity-a`,
//! `root-b`, `verity-b` and `state` ([`layout`]). Each slot is an erofs root
//! plus its dm-verity hash tree, booted by one UKI in `EFI/Linux/` that
//! systemd-boot 252 starts as a Boot Loader Specification type #2 entry with
//! boot counting in the file name ([`entry`]).
//!
//! An OS update ([`plan`]): make sure the running slot's entry is live,
//! remove the other slot's entries, zero the heads of its partitions,
//! stream root and verity in ([`mod@write`]: one pass, hashed while writing,
//! read back), point `loader.conf`'s `default` at the new entry's
//! tries-left pattern, install the UKI as `cairn-<slot>-<version>+3.efi`.
//! After the reboot the agent feeds the kernel command line, the state and
//! the health gate to [`state::decide_after_boot`] and applies the answer
//! ([`plan::apply_post_boot`]): bless (and retire the old entry), or mark
//! bad and reboot, or record that systemd-boot already fell back. A failed
//! version is not retried until the repository names another one.
//! [`status`] renders `cairnctl update status`.
//!
//! How systemd-boot 252 orders and selects entries, and why cairn steers the
//! first boot of a new slot with a `loader.conf` pattern rather than file
//! names or EFI variables, is written down with its upstream sources in
//! [`entry`].
//!
//! IO sits behind seams so everything here is unit-tested without root or
//! a VM: [`esp::Esp`] ([`esp::DirEsp`] / [`esp::MemEsp`]),
//! [`write::BlockTarget`], [`plan::SlotDisk`], [`plan::ImageSource`],
//! [`layout::PartitionSource`] ([`layout::GptSource`] /
//! [`layout::SysfsSource`]) and [`state::StateStore`].

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod entry;
pub mod esp;
pub mod install;
pub mod layout;
pub mod plan;
pub mod release;
pub mod slot;
pub mod state;
pub mod status;
pub mod write;

#[cfg(test)]
mod testloop;

pub use entry::{EntryError, EntryName, EntryState};
pub use esp::{DirEsp, Esp, EspError, MemEsp};
pub use layout::{DiskLayout, LayoutError, PartitionInfo};
pub use plan::{apply_post_boot, plan_install, run_plan, InstallPlan, PlanError, Step};
pub use slot::{Expected, OsVersion, Sha256, Slot, ValueError};
pub use state::{decide_after_boot, Booted, HealthGate, Phase, PostBootAction, UpdateState};
pub use status::Status;
pub use write::{invalidate, write_image, WriteError, WriteReport};
