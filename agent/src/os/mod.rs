//! OS updates: the version in `fleet.yaml` (`os.version`), proven by TUF,
//! installed into the other A/B slot, booted under a cluster-wide reboot
//! lock after a drain, and blessed only when the node is healthy as a
//! Kubernetes node — otherwise marked bad, and the old slot boots again.
//!
//! One [`OsUpdate::step`] runs after every reconcile pass:
//!
//! 1. Once per boot: if this boot runs the slot being tried, the health
//!    gate's clock starts (`update.healthTimeout`, default 15 min).
//! 2. While a new slot is on trial: the gate ([`OsUpdate::gate`]) — every
//!    unit in `update.checks.units` active (a masked, failed or
//!    crash-looping one fails it at once), the API server reached, this
//!    Node Ready with a heartbeat from this boot, the current commit applied
//!    (and healthy) by this agent, every object in `update.checks.objects`
//!    healthy. Pass → bless the entry, uncordon, release the reboot lock.
//!    Fail or deadline → mark the entry bad and reboot: the old slot comes
//!    back, its agent reports the failure and releases the lock. The failed
//!    version is not tried again until the repository names another one.
//! 3. Otherwise compare the desired version with the running one
//!    ([`cairn_slots::UpdateState::admit`]): install in the background
//!    ([`install`]: TUF refresh, verify the version is signed, stream into
//!    the inactive slot, UKI with `+3` last), then — inside the maintenance
//!    window, holding one of `update.maxUnavailable` reboot Leases — cordon,
//!    drain (`update.drainTimeout`) and reboot through logind.
//!
//! A PXE-booted node (no `cairn.slot=` on its command line) runs what the
//! boot server gives it; it only reports the versions.

pub mod drain;
pub mod host;
pub mod images;
pub mod install;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use cairn_render::UpdatePolicy;
use cairn_slots::plan::{plan_install, LayoutDisk, RunReport, Runner, Seams};
use cairn_slots::state::{after_failure, Admission, AfterFailure, StateStore};
use cairn_slots::{
    apply_post_boot, decide_after_boot, Booted, DirEsp, HealthGate, OsVersion, Phase,
    PostBootAction,
};
use k8s_openapi::api::core::v1::Node;
use kube::api::Api;
use kube::Client;
use serde_json::json;

use crate::status;
use images::TufSettings;

/// The running OS version (from the kernel command line).
pub const ANN_OS_VERSION: &str = "cairn.dev/os-version";
/// The running slot.
pub const ANN_OS_SLOT: &str = "cairn.dev/os-slot";
/// One line: where the OS update stands.
pub const ANN_OS_UPDATE: &str = "cairn.dev/os-update";
/// `<version>: <reason>` of the version that failed and is not retried.
pub const ANN_OS_FAILED: &str = "cairn.dev/os-update-failed";

/// What the reconcile pass tells the update step.
pub struct Ctx<'a> {
    pub client: &'a Client,
    pub node: &'a str,
    /// The cluster of the last rendered commit.
    pub cluster: Option<&'a str>,
    /// `os.version` of the last rendered commit.
    pub desired: Option<&'a str>,
    /// `update:` of the last rendered commit.
    pub policy: Option<&'a UpdatePolicy>,
    /// The current commit was applied (and found healthy) by this agent.
    pub current_ok: bool,
}

/// The OS update state between passes.
pub struct OsUpdate {
    tuf: Option<TufSettings>,
    store: StateStore,
    booted: Option<Booted>,
    boot_noted: bool,
    settled_checked: bool,
    install: Option<tokio::task::JoinHandle<Result<Installed, String>>>,
    retry_after: u64,
    failures: u32,
    /// The version whose install failed last (the backoff applies to it; a
    /// new version named in Git is tried at once).
    failed_version: Option<OsVersion>,
    installing: Option<OsVersion>,
    /// What the background install is doing ("writing root-b").
    progress: std::sync::Arc<std::sync::Mutex<String>>,
    systemd: Option<host::Systemd>,
    status_line: Option<String>,
    reported_boot: bool,
    /// When this boot last asked to reboot away from a failed slot.
    left_at: Option<Instant>,
}

/// A finished install.
#[derive(Debug)]
pub struct Installed {
    pub report: RunReport,
    pub seconds: f64,
}

/// Seconds to wait before retrying a failed install: 1, 2, 4 … 60 minutes.
pub fn backoff_seconds(failures: u32) -> u64 {
    60 * (1u64 << failures.saturating_sub(1).min(6)).min(60)
}

impl OsUpdate {
    pub fn new(tuf: Option<TufSettings>, state_dir: &std::path::Path) -> OsUpdate {
        let booted = match host::booted() {
            Ok(b) => b,
            Err(e) => {
                log::error!("OS updates disabled: {e}");
                None
            }
        };
        match &booted {
            Some(b) => log::info!("disk boot: slot {} runs OS {}", b.slot, b.version),
            None => log::info!("network boot: the boot server decides the OS version"),
        }
        OsUpdate {
            tuf,
            store: StateStore::new(state_dir.join("update")),
            booted,
            boot_noted: false,
            settled_checked: false,
            install: None,
            retry_after: 0,
            failures: 0,
            failed_version: None,
            installing: None,
            progress: Default::default(),
            systemd: None,
            status_line: None,
            reported_boot: false,
            left_at: None,
        }
    }

    /// This boot runs a slot on trial (the health gate has not decided):
    /// the node is still cordoned, so workloads are not waited for.
    pub fn on_trial(&self) -> bool {
        let (Some(booted), Ok(mut state)) = (&self.booted, self.store.load()) else {
            return false;
        };
        // also before the first step of this boot has noted it
        matches!(state.phase, Phase::BootedUnverified { .. }) || state.note_booted(booted, 0, 0)
    }

    async fn systemd(&mut self) -> Result<&host::Systemd, String> {
        if self.systemd.is_none() {
            self.systemd = Some(host::Systemd::connect().await?);
        }
        Ok(self.systemd.as_ref().expect("set just above"))
    }

    async fn say(&mut self, ctx: &Ctx<'_>, line: String) {
        if self.status_line.as_deref() == Some(line.as_str()) {
            return;
        }
        log::info!("os update: {line}");
        if status::annotate(ctx.client, ctx.node, &json!({ ANN_OS_UPDATE: line }))
            .await
            .is_ok()
        {
            self.status_line = Some(line);
        }
    }

    async fn event(&self, ctx: &Ctx<'_>, type_: &str, reason: &str, msg: &str) {
        if type_ == "Warning" {
            log::warn!("{reason}: {msg}");
        } else {
            log::info!("{reason}: {msg}");
        }
        if let Err(e) = status::event(ctx.client, ctx.node, type_, reason, msg).await {
            log::warn!("could not post event {reason}: {e}");
        }
    }

    /// One update step (see the module docs).
    pub async fn step(&mut self, ctx: &Ctx<'_>) {
        let Some(booted) = self.booted.clone() else {
            return;
        };
        if !self.reported_boot {
            let ann =
                json!({ANN_OS_VERSION: booted.version.as_str(), ANN_OS_SLOT: booted.slot.as_str()});
            self.reported_boot = status::annotate(ctx.client, ctx.node, &ann).await.is_ok();
        }
        let gate_secs = ctx
            .policy
            .and_then(|p| p.health_timeout_seconds().ok())
            .unwrap_or(900);
        let now = host::now_unix();
        let mut state = match self.store.load() {
            Ok(s) => s,
            Err(e) => {
                self.say(ctx, format!("error: {e}")).await;
                return;
            }
        };
        if !self.boot_noted {
            if state.note_booted(&booted, now, gate_secs) {
                if let Err(e) = self.store.save(&state) {
                    log::error!("{e}");
                    return;
                }
                let msg = format!(
                    "booted {} from slot {}; the health gate has {gate_secs} s",
                    booted.version, booted.slot
                );
                self.event(ctx, "Normal", "OsUpdateTrial", &msg).await;
            }
            self.boot_noted = true;
        }

        if !self.poll_install(ctx).await {
            return;
        }

        // 1b. still running a slot this agent marked bad
        let mut stuck = false;
        match after_failure(&booted, &state) {
            AfterFailure::NotOnIt => {}
            AfterFailure::RebootAgain { slot, version } => {
                // The reboot did not happen (logind refused, the call was
                // lost): ask again, at most once a minute.
                if self
                    .left_at
                    .is_none_or(|t| t.elapsed() >= Duration::from_secs(60))
                {
                    self.left_at = Some(Instant::now());
                    self.say(
                        ctx,
                        format!(
                            "{version} in slot {slot} failed; rebooting into slot {} (again)",
                            slot.other()
                        ),
                    )
                    .await;
                    self.do_reboot(ctx).await;
                }
                return;
            }
            AfterFailure::Stuck { slot, version } => {
                // The machine rebooted and came back here: the other slot
                // did not boot. Rebooting again would loop. The node stays
                // cordoned and keeps its reboot Lease (the rollout halts)
                // until an operator looks; a new version named in Git is
                // still installed (into the slot that did not boot).
                let line = format!(
                    "{version} in slot {slot} failed its health gate, and slot {} did not boot after the reboot away from it; running {version} cordoned — repair slot {} or publish a fixed version",
                    slot.other(),
                    slot.other()
                );
                if self.status_line.as_deref() != Some(line.as_str()) {
                    self.event(ctx, "Warning", "OsUpdateStuck", &line).await;
                }
                self.say(ctx, line).await;
                stuck = true;
            }
        }

        // 2. a new slot on trial
        if state.phase.is_trial() {
            let gate = if matches!(state.phase, Phase::BootedUnverified { .. }) {
                self.gate(ctx, &booted).await
            } else {
                HealthGate::Pending
            };
            let action = decide_after_boot(&booted, &state, &gate, now);
            if action != PostBootAction::Nothing {
                self.post_boot(ctx, &booted, &action).await;
                return;
            }
            if let (Phase::BootedUnverified { deadline_unix, .. }, HealthGate::Pending) =
                (&state.phase, &gate)
            {
                if let (Some(c), Some(p)) = (ctx.cluster, ctx.policy) {
                    let _ =
                        drain::renew_reboot_lock(ctx.client, c, p.max_unavailable, ctx.node).await;
                }
                let left = deadline_unix.saturating_sub(now);
                self.say(
                    ctx,
                    format!(
                        "trying {} in slot {}: health gate pending, {left} s left",
                        booted.version, booted.slot
                    ),
                )
                .await;
                return;
            }
        }

        // after an attempt: the node was cordoned and holds the lock
        if !stuck && !self.settled_checked && state.phase.is_settled() {
            if let Some(cluster) = ctx.cluster {
                self.settled_checked = self.after_attempt(ctx, cluster, &state).await;
            }
        }

        // 3. the desired version
        let (Some(desired), Some(policy), Some(cluster)) = (ctx.desired, ctx.policy, ctx.cluster)
        else {
            return;
        };
        let desired = match OsVersion::new(desired) {
            Ok(v) => v,
            Err(e) => {
                self.say(ctx, format!("fleet.yaml os.version: {e}")).await;
                return;
            }
        };
        if state.note_desired(&desired) {
            let _ = self.store.save(&state);
            let _ = status::annotate(ctx.client, ctx.node, &json!({ ANN_OS_FAILED: null })).await;
        }
        match state.admit(&booted.version, &desired) {
            // the stuck line stays until Git names a version to install
            Admission::UpToDate | Admission::Blocked(_) if stuck => {}
            Admission::UpToDate => {
                self.say(
                    ctx,
                    format!("up to date: {} in slot {}", booted.version, booted.slot),
                )
                .await
            }
            Admission::Blocked(b) => {
                let line = format!("{}: {}", b.version, b.reason);
                let _ =
                    status::annotate(ctx.client, ctx.node, &json!({ ANN_OS_FAILED: line })).await;
                self.say(
                    ctx,
                    format!(
                        "{} failed and is not retried until fleet.yaml names another version; running {}",
                        b.version, booted.version
                    ),
                )
                .await
            }
            Admission::Start | Admission::Resume => self.start_install(ctx, &booted, desired).await,
            Admission::AwaitReboot => self.reboot(ctx, cluster, policy, &desired).await,
            Admission::AwaitHealth => {}
            Admission::Abandon => {
                let store = self.store.clone();
                let r = tokio::task::spawn_blocking(move || -> Result<(), String> {
                    let (_, layout) =
                        host::find_disk("/sys/class/block".as_ref(), "/dev".as_ref())?;
                    let esp = host::mount_esp(&layout)?;
                    cairn_slots::plan::abandon_install(&mut DirEsp::new(esp), &store)
                        .map(|_| ())
                        .map_err(|e| e.to_string())
                })
                .await
                .unwrap_or_else(|e| Err(e.to_string()));
                match r {
                    Ok(()) => {
                        self.event(
                            ctx,
                            "Normal",
                            "OsUpdateAbandoned",
                            &format!("fleet.yaml names the running {desired} again: the pending install was removed"),
                        )
                        .await
                    }
                    Err(e) => self.say(ctx, format!("abandoning the pending install: {e}")).await,
                }
            }
        }
    }

    /// Check on a background install; false while it still runs.
    async fn poll_install(&mut self, ctx: &Ctx<'_>) -> bool {
        let Some(h) = &self.install else {
            return true;
        };
        if !h.is_finished() {
            let doing = self.progress.lock().map(|p| p.clone()).unwrap_or_default();
            if let (Some(v), false) = (self.installing.clone(), doing.is_empty()) {
                self.say(ctx, format!("installing {v}: {doing}")).await;
            }
            return false;
        }
        let Some(h) = self.install.take() else {
            return true;
        };
        match h
            .await
            .unwrap_or_else(|e| Err(format!("install task: {e}")))
        {
            Ok(done) => {
                self.failures = 0;
                let (slot, version) = done
                    .report
                    .state
                    .phase
                    .target()
                    .map(|(s, v)| (s.to_string(), v.to_string()))
                    .unwrap_or_default();
                let mib = |r: &Option<cairn_slots::WriteReport>| {
                    r.as_ref()
                        .map_or(0.0, |r| r.bytes as f64 / (1 << 20) as f64)
                };
                let msg = format!(
                    "{version} installed into slot {slot} in {:.0} s ({:.0} MiB root + {:.1} MiB verity written, verified and read back); boot entry +3",
                    done.seconds,
                    mib(&done.report.root),
                    mib(&done.report.verity)
                );
                self.event(ctx, "Normal", "OsUpdateInstalled", &msg).await;
            }
            Err(e) => {
                if self.failed_version != self.installing {
                    self.failures = 0;
                }
                self.failures += 1;
                self.failed_version = self.installing.clone();
                let wait = backoff_seconds(self.failures);
                self.retry_after = host::now_unix() + wait;
                self.event(ctx, "Warning", "OsUpdateRefused", &e).await;
                self.say(ctx, format!("install failed, retrying in {wait} s: {e}"))
                    .await;
            }
        }
        true
    }

    async fn start_install(&mut self, ctx: &Ctx<'_>, booted: &Booted, desired: OsVersion) {
        if host::now_unix() < self.retry_after && self.failed_version.as_ref() == Some(&desired) {
            return;
        }
        let Some(tuf) = self.tuf.clone() else {
            self.say(
                ctx,
                format!(
                    "fleet.yaml wants {desired} but the agent has no update repository (update: in agent.yaml); running {}",
                    booted.version
                ),
            )
            .await;
            return;
        };
        let store = self.store.clone();
        let current = booted.slot;
        let v = desired.clone();
        self.say(
            ctx,
            format!("installing {desired} into slot {}", current.other()),
        )
        .await;
        self.event(
            ctx,
            "Normal",
            "OsUpdateStarted",
            &format!(
                "installing {desired} into slot {} (running {} in slot {current})",
                current.other(),
                booted.version
            ),
        )
        .await;
        self.installing = Some(desired.clone());
        let progress = self.progress.clone();
        self.install = Some(tokio::task::spawn_blocking(move || {
            install(&tuf, &store, current, v, &progress)
        }));
    }

    /// The health gate of a booted trial slot.
    pub async fn gate(&mut self, ctx: &Ctx<'_>, booted: &Booted) -> HealthGate {
        let Some(policy) = ctx.policy else {
            return HealthGate::Pending;
        };
        // every unit first: one that cannot start fails the gate at once,
        // even while another is still starting
        let mut units_pending = false;
        for unit in &policy.checks.units {
            let st = match self.systemd().await {
                Ok(sd) => sd.unit(unit).await,
                Err(e) => Err(e),
            };
            match st {
                Err(e) => {
                    log::warn!("health gate: {e}");
                    units_pending = true;
                }
                Ok(st) => match st.verdict(unit) {
                    Ok(true) => {}
                    Ok(false) => units_pending = true,
                    Err(why) => return HealthGate::Failed(why),
                },
            }
        }
        if units_pending {
            return HealthGate::Pending;
        }
        let nodes: Api<Node> = Api::all(ctx.client.clone());
        let node = match nodes.get_opt(ctx.node).await {
            Ok(Some(n)) => n,
            Ok(None) => return HealthGate::Pending,
            Err(e) => {
                log::info!("health gate: API server not reached yet: {e}");
                return HealthGate::Pending;
            }
        };
        let since = host::boot_time_unix().unwrap_or(0);
        if !node_ready_since(&node, since) {
            return HealthGate::Pending;
        }
        if !ctx.current_ok {
            return HealthGate::Pending;
        }
        for o in &policy.checks.objects {
            match object_health(ctx.client, o).await {
                Ok(cairn_apply::health::Health::Current) => {}
                Ok(cairn_apply::health::Health::Failed(why)) => {
                    return HealthGate::Failed(format!("{} {}: {why}", o.kind, o.name))
                }
                Ok(cairn_apply::health::Health::InProgress(_)) | Err(_) => {
                    return HealthGate::Pending
                }
            }
        }
        log::info!(
            "health gate passed for {} in slot {}",
            booted.version,
            booted.slot
        );
        HealthGate::Ok
    }

    async fn post_boot(&mut self, ctx: &Ctx<'_>, booted: &Booted, action: &PostBootAction) {
        let store = self.store.clone();
        let a = action.clone();
        let b = booted.clone();
        let r = tokio::task::spawn_blocking(move || -> Result<bool, String> {
            let (_, layout) = host::find_disk("/sys/class/block".as_ref(), "/dev".as_ref())?;
            let esp = host::mount_esp(&layout)?;
            apply_post_boot(&a, &b, &mut DirEsp::new(esp), &store)
                .map(|o| o.reboot)
                .map_err(|e| e.to_string())
        })
        .await
        .unwrap_or_else(|e| Err(e.to_string()));
        let reboot = match r {
            Ok(reboot) => reboot,
            Err(e) => {
                self.say(ctx, format!("after boot: {e}")).await;
                return;
            }
        };
        match action {
            PostBootAction::Bless { slot, version } => {
                let msg =
                    format!("slot {slot} with {version} passed the health gate and is blessed");
                self.event(ctx, "Normal", "OsUpdateBlessed", &msg).await;
                if let Some(cluster) = ctx.cluster {
                    self.settled_checked = self
                        .after_attempt(ctx, cluster, &cairn_slots::UpdateState::default())
                        .await;
                }
                self.say(ctx, format!("blessed {version} in slot {slot}"))
                    .await;
            }
            PostBootAction::MarkBadAndReboot {
                slot,
                version,
                reason,
            } => {
                let line = format!("{version}: {reason}");
                let _ =
                    status::annotate(ctx.client, ctx.node, &json!({ ANN_OS_FAILED: line })).await;
                let msg = format!(
                    "slot {slot} with {version} failed: {reason}; rebooting into slot {}",
                    slot.other()
                );
                self.event(ctx, "Warning", "OsUpdateFailed", &msg).await;
            }
            PostBootAction::ReportRolledBack {
                slot,
                version,
                booted,
            } => {
                let msg = format!(
                    "{version} in slot {slot} did not boot; systemd-boot fell back to slot {booted}"
                );
                let line = format!("{version}: did not boot (boot counting fell back)");
                let _ =
                    status::annotate(ctx.client, ctx.node, &json!({ ANN_OS_FAILED: line })).await;
                self.event(ctx, "Warning", "OsUpdateRolledBack", &msg).await;
            }
            PostBootAction::Nothing => {}
        }
        if reboot {
            self.left_at = Some(Instant::now());
            self.do_reboot(ctx).await;
        }
    }

    /// After an attempt ended (blessed, or back on the old slot): uncordon
    /// what cairn cordoned and release the reboot lock. Returns true when
    /// done.
    async fn after_attempt(
        &mut self,
        ctx: &Ctx<'_>,
        cluster: &str,
        state: &cairn_slots::UpdateState,
    ) -> bool {
        let uncordoned = match drain::uncordon(ctx.client, ctx.node).await {
            Ok(u) => u,
            Err(e) => {
                log::warn!("uncordon {}: {e}", ctx.node);
                return false;
            }
        };
        if let Err(e) = drain::release_reboot_locks(ctx.client, cluster, ctx.node).await {
            log::warn!("releasing the reboot lock: {e}");
            return false;
        }
        if uncordoned {
            if let Phase::Failed {
                version, reason, ..
            } = &state.phase
            {
                let booted = self.booted.as_ref().map(|b| b.version.to_string());
                let msg = format!(
                    "back on {} after {version} failed: {reason}",
                    booted.unwrap_or_default()
                );
                self.event(ctx, "Warning", "OsUpdateRolledBack", &msg).await;
            }
        }
        true
    }

    async fn reboot(
        &mut self,
        ctx: &Ctx<'_>,
        cluster: &str,
        policy: &UpdatePolicy,
        desired: &OsVersion,
    ) {
        if policy.max_unavailable == 0 {
            self.say(
                ctx,
                format!("{desired} installed; updates are paused (update.maxUnavailable: 0)"),
            )
            .await;
            return;
        }
        if !policy.in_window(host::now_unix()) {
            self.say(
                ctx,
                format!("{desired} installed; waiting for the maintenance window"),
            )
            .await;
            return;
        }
        if !ctx.current_ok {
            self.say(ctx, format!("{desired} installed; waiting until the current commit is applied before rebooting"))
                .await;
            return;
        }
        match drain::acquire_reboot_lock(ctx.client, cluster, policy.max_unavailable, ctx.node)
            .await
        {
            Ok(Ok(_)) => {}
            Ok(Err(holders)) => {
                self.say(
                    ctx,
                    format!(
                        "{desired} installed; waiting for a reboot slot (update.maxUnavailable {} held by {})",
                        policy.max_unavailable,
                        holders.join(", ")
                    ),
                )
                .await;
                return;
            }
            Err(e) => {
                self.say(ctx, format!("reboot lock: {e}")).await;
                return;
            }
        }
        if let Err(e) = drain::cordon(ctx.client, ctx.node, desired.as_str()).await {
            self.say(ctx, format!("cordon: {e}")).await;
            return;
        }
        self.say(ctx, format!("draining before rebooting into {desired}"))
            .await;
        let timeout = Duration::from_secs(policy.drain_timeout_seconds().unwrap_or(600));
        let started = Instant::now();
        match drain::drain(ctx.client, ctx.node, timeout).await {
            Ok(r) if r.blocked.is_empty() => {
                log::info!(
                    "drained in {:.0} s: evicted {:?}, left {:?}",
                    started.elapsed().as_secs_f64(),
                    r.evicted,
                    r.skipped
                );
            }
            Ok(r) => {
                let _ = drain::uncordon(ctx.client, ctx.node).await;
                let _ = drain::release_reboot_locks(ctx.client, cluster, ctx.node).await;
                self.retry_after = host::now_unix() + 300;
                let msg = format!(
                    "drain did not finish within {} s ({}); uncordoned, retrying in 5 minutes",
                    timeout.as_secs(),
                    r.blocked.join(", ")
                );
                self.event(ctx, "Warning", "OsUpdateDrainBlocked", &msg)
                    .await;
                self.say(ctx, msg).await;
                return;
            }
            Err(e) => {
                self.say(ctx, format!("drain: {e}")).await;
                return;
            }
        }
        let mut state = match self.store.load() {
            Ok(s) => s,
            Err(e) => {
                self.say(ctx, e.to_string()).await;
                return;
            }
        };
        let boot_id = match host::boot_id() {
            Ok(b) => b,
            Err(e) => {
                self.say(ctx, e).await;
                return;
            }
        };
        let gate_secs = policy.health_timeout_seconds().ok();
        if let Err(e) = state
            .request_reboot_gated(&boot_id, gate_secs)
            .map_err(|e| e.to_string())
            .and_then(|_| self.store.save(&state).map_err(|e| e.to_string()))
        {
            self.say(ctx, e).await;
            return;
        }
        let msg = format!("rebooting into {desired}");
        self.event(ctx, "Normal", "OsUpdateRebooting", &msg).await;
        self.say(ctx, msg).await;
        self.do_reboot(ctx).await;
    }

    async fn do_reboot(&mut self, ctx: &Ctx<'_>) {
        let r = match self.systemd().await {
            Ok(sd) => sd.reboot().await,
            Err(e) => Err(e),
        };
        if let Err(e) = r {
            log::warn!("reboot over D-Bus: {e}; trying systemctl");
            if let Err(e2) = host::systemctl_reboot(false) {
                self.say(ctx, format!("reboot: {e}; {e2}")).await;
            }
        }
    }
}

/// Ready=True, with a heartbeat from this boot (a Ready condition left over
/// from before the reboot does not count).
pub fn node_ready_since(node: &Node, boot_unix: u64) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
        .is_some_and(|c| {
            c.status == "True"
                && c.last_heartbeat_time
                    .as_ref()
                    .is_some_and(|t| t.0.as_second() >= boot_unix as i64)
        })
}

async fn object_health(
    client: &Client,
    o: &cairn_render::ObjectRef,
) -> Result<cairn_apply::health::Health, String> {
    let (group, version) = match o.api_version.split_once('/') {
        Some((g, v)) => (g.to_string(), v.to_string()),
        None => (String::new(), o.api_version.clone()),
    };
    let gvk = kube::api::GroupVersionKind::gvk(&group, &version, &o.kind);
    let (ar, caps) = kube::discovery::pinned_kind(client, &gvk)
        .await
        .map_err(|e| e.to_string())?;
    let api: Api<kube::api::DynamicObject> = match (&o.namespace, caps.scope) {
        (Some(ns), kube::discovery::Scope::Namespaced) => {
            Api::namespaced_with(client.clone(), ns, &ar)
        }
        _ => Api::all_with(client.clone(), &ar),
    };
    let obj = api.get(&o.name).await.map_err(|e| e.to_string())?;
    let v = serde_json::to_value(&obj).map_err(|e| e.to_string())?;
    Ok(cairn_apply::health::health(&v))
}

/// Install `version` into the slot after `current` (blocking; resumes an
/// interrupted install of the same version).
pub fn install(
    tuf: &TufSettings,
    store: &StateStore,
    current: cairn_slots::Slot,
    version: OsVersion,
    progress: &std::sync::Mutex<String>,
) -> Result<Installed, String> {
    let set = |what: String| {
        if let Ok(mut p) = progress.lock() {
            *p = what;
        }
    };
    set("checking the update repository".into());
    let started = Instant::now();
    let (_, layout) = host::find_disk("/sys/class/block".as_ref(), "/dev".as_ref())?;
    let esp_dir: PathBuf = host::mount_esp(&layout)?;
    let mut up = images::updater(tuf)?;
    let release = images::resolve(&mut up, &version, current.other())?;
    let plan = plan_install(current, version);
    let mut esp = DirEsp::new(esp_dir);
    let mut disk = LayoutDisk(layout);
    let mut source = images::TufImages {
        updater: &up,
        release: &release,
    };
    let report = Runner::new(
        &plan,
        &release.images,
        Seams {
            esp: &mut esp,
            disk: &mut disk,
            source: &mut source,
            store,
        },
    )
    .and_then(|r| r.run_reporting(|step| set(step.describe(plan.target))))
    .map_err(|e| e.to_string())?;
    set(String::new());
    Ok(Installed {
        report,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// `cairnctl update status`: both slots, versions, tries left, the update
/// in flight and the last result. `esp`: a mounted ESP (default: find the
/// cairn disk and mount its ESP); `booted`: what runs (default: this
/// machine's command line).
pub fn status_report(
    state_dir: &std::path::Path,
    esp: Option<PathBuf>,
    booted: Option<Booted>,
    efivars: &std::path::Path,
) -> Result<cairn_slots::Status, String> {
    let state = StateStore::new(state_dir.join("update"))
        .load()
        .map_err(|e| e.to_string())?;
    let esp_dir = match esp {
        Some(e) => e,
        None => {
            let (_, layout) = host::find_disk("/sys/class/block".as_ref(), "/dev".as_ref())?;
            host::mount_esp(&layout)?
        }
    };
    let esp = DirEsp::new(esp_dir);
    let listing = cairn_slots::esp::listing(&esp).map_err(|e| e.to_string())?;
    let vars = cairn_slots::esp::read_loader_efi_vars(efivars).unwrap_or_default();
    let settings = cairn_slots::esp::default_settings(&esp, &vars).map_err(|e| e.to_string())?;
    Ok(cairn_slots::Status::new(cairn_slots::status::StatusInput {
        state: &state,
        listing: &listing,
        settings: &settings,
        booted: booted.as_ref(),
        now_unix: host::now_unix(),
    }))
}

/// `cairnctl update watchdog`: the trial's guard that does not depend on
/// the agent. Runs from boot (`cairn-trial-watchdog.service`); while the
/// running slot is on trial it waits, re-reading the state at least once a
/// minute, and if the agent has not decided by the health gate's deadline
/// plus `grace` (or has not even started the gate `unnoted` seconds after
/// boot — it cannot run on this slot), marks the slot bad and reboots into
/// the other one. Returns what it did.
pub fn watchdog(state_dir: &std::path::Path, grace: u64, unnoted: u64) -> Result<String, String> {
    let Some(booted) = host::booted()? else {
        return Ok(
            "not a disk boot (no cairn.slot= on the kernel command line): nothing to guard".into(),
        );
    };
    let boot_unix = host::boot_time_unix().ok_or("no btime in /proc/stat")?;
    let store = StateStore::new(state_dir.join("update"));
    loop {
        let state = store.load().map_err(|e| e.to_string())?;
        let now = host::now_unix();
        match cairn_slots::state::watchdog(&booted, &state, boot_unix, now, grace, unnoted) {
            cairn_slots::state::Watchdog::Done => {
                return Ok(format!(
                    "slot {} ({}) is not on trial ({}): nothing to guard",
                    booted.slot,
                    booted.version,
                    state.phase.name()
                ))
            }
            cairn_slots::state::Watchdog::Wait(at) => {
                let secs = at.saturating_sub(now).clamp(1, 60);
                std::thread::sleep(Duration::from_secs(secs));
            }
            cairn_slots::state::Watchdog::Fire {
                slot,
                version,
                reason,
            } => {
                let reason = format!("trial watchdog: {reason}");
                log::error!(
                    "{version} in slot {slot}: {reason}; marking it bad and rebooting into slot {}",
                    slot.other()
                );
                let (_, layout) = host::find_disk("/sys/class/block".as_ref(), "/dev".as_ref())?;
                let esp = host::mount_esp(&layout)?;
                let action = PostBootAction::MarkBadAndReboot {
                    slot,
                    version: version.clone(),
                    reason: reason.clone(),
                };
                apply_post_boot(&action, &booted, &mut DirEsp::new(esp), &store)
                    .map_err(|e| e.to_string())?;
                host::systemctl_reboot(false)?;
                return Ok(format!(
                    "{version} in slot {slot}: {reason}; marked bad, rebooting into slot {}",
                    slot.other()
                ));
            }
        }
    }
}

/// `cairnctl update unblock`: forget a failed version so the agent tries it
/// again. Returns what was blocked.
pub fn unblock(state_dir: &std::path::Path) -> Result<Option<cairn_slots::state::Blocked>, String> {
    let store = StateStore::new(state_dir.join("update"));
    let mut state = store.load().map_err(|e| e.to_string())?;
    let b = state.unblock();
    store.save(&state).map_err(|e| e.to_string())?;
    Ok(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_of_a_fresh_disk_and_unblock() {
        let d = tempfile::tempdir().unwrap();
        let esp = d.path().join("esp");
        std::fs::create_dir_all(esp.join("EFI/Linux")).unwrap();
        std::fs::create_dir_all(esp.join("loader")).unwrap();
        std::fs::write(esp.join("loader/loader.conf"), "timeout 0\n").unwrap();
        std::fs::write(esp.join("EFI/Linux/cairn-a-0.1.0.efi"), b"uki").unwrap();
        std::fs::write(esp.join("EFI/Linux/cairn-b-0.2.0+2-1.efi"), b"uki").unwrap();
        let booted = Booted::from_cmdline("cairn.slot=a cairn.version=0.1.0", "x").unwrap();
        let st = status_report(
            d.path(),
            Some(esp),
            Some(booted),
            &d.path().join("no-efivars"),
        )
        .unwrap();
        let text = st.to_string();
        assert!(text.contains("0.1.0") && text.contains("0.2.0"), "{text}");
        assert!(text.contains('2'), "tries left shown: {text}");
        assert_eq!(unblock(d.path()).unwrap(), None);
    }

    #[test]
    fn backoff_doubles_to_an_hour() {
        assert_eq!(backoff_seconds(1), 60);
        assert_eq!(backoff_seconds(2), 120);
        assert_eq!(backoff_seconds(6), 1920);
        assert_eq!(backoff_seconds(7), 3600);
        assert_eq!(backoff_seconds(30), 3600);
    }

    #[test]
    fn ready_needs_a_heartbeat_from_this_boot() {
        let node = |status: &str, hb: &str| -> Node {
            serde_json::from_value(json!({
                "metadata": {"name": "n"},
                "status": {"conditions": [
                    {"type": "Ready", "status": status, "lastHeartbeatTime": hb}
                ]}
            }))
            .unwrap()
        };
        let boot = 1_795_908_600; // 2026-11-28T23:30:00Z
        assert!(node_ready_since(
            &node("True", "2026-11-28T23:31:00Z"),
            boot
        ));
        assert!(!node_ready_since(
            &node("True", "2026-11-28T23:29:00Z"),
            boot
        ));
        assert!(!node_ready_since(
            &node("False", "2026-11-28T23:31:00Z"),
            boot
        ));
        let none: Node = serde_json::from_value(json!({"metadata": {"name": "n"}})).unwrap();
        assert!(!node_ready_since(&none, 0));
    }
}
