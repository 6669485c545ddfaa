//! PID 1 of the initramfs. Parses nothing itself: see the library.

use std::io::Write;

use cairn_init::boot;
use cairn_init::cmdline::OnFailure;
use cairn_init::sys::{RealSys, Sys};

fn console(sys: &mut RealSys, msg: &str) {
    let line = format!("cairn-init: [{:8.3}] {msg}\n", sys.uptime());
    // /dev/console is our stdout when the kernel started us; write there and to kmsg-less stderr.
    let _ = std::io::stdout().write_all(line.as_bytes());
    let _ = std::io::stdout().flush();
}

fn fail(sys: &mut RealSys, on_failure: OnFailure, err: &dyn std::fmt::Display) -> ! {
    console(sys, &format!("FATAL: {err}"));
    match on_failure {
        OnFailure::Halt => {
            console(
                sys,
                "halted (cairn.on_failure=halt); reset the machine to retry",
            );
            loop {
                std::thread::sleep(std::time::Duration::from_secs(3600));
            }
        }
        OnFailure::Reboot => {
            console(sys, "rebooting in 5 seconds");
            std::thread::sleep(std::time::Duration::from_secs(5));
            nix::unistd::sync();
            let _ = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_AUTOBOOT);
            loop {
                std::thread::sleep(std::time::Duration::from_secs(3600));
            }
        }
    }
}

fn main() {
    let mut sys = RealSys;
    if let Err(e) = boot::early_mounts(&mut sys) {
        fail(&mut sys, OnFailure::Reboot, &e);
    }
    console(&mut sys, "stage 1 starting");
    let raw = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let on_failure = cairn_init::cmdline::Cmdline::parse(&raw)
        .map(|c| c.on_failure)
        .unwrap_or(OnFailure::Reboot);
    let mut log_lines = Vec::new();
    let result = boot::run(&mut sys, &raw, &mut |l| log_lines.push(l.to_string()));
    // print what happened so far, then act on the result
    for l in &log_lines {
        console(&mut sys, l);
    }
    match result {
        Ok(cmdline) => {
            console(
                &mut sys,
                &format!("switching root to systemd ({})", cmdline.init),
            );
            let err = sys.exec(&cmdline.init, &[]);
            fail(&mut sys, on_failure, &err);
        }
        Err(e) => fail(&mut sys, on_failure, &e),
    }
}
