//! Booting one guest with QEMU and following its results port until it powers off.
//!
//! The guest gets the host's root read-only over 9p (`-virtfs local,path=/,…,readonly=on`),
//! two serial ports written to files (ttyS0: the kernel console; ttyS1: the results), no
//! network card, no display. KVM is used only when `/dev/kvm` opens and the host is not a
//! nested paravirtual KVM (`/sys/module/kvm_pvm`), where stock Debian kernels do not boot;
//! otherwise TCG with one host thread per vCPU. A hard time limit kills QEMU.

use std::fs::{self, File, OpenOptions};
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};

use super::initramfs::MOUNT_TAG;
use super::kernels::Kernel;
use crate::process::find_in_path;

const QEMU: &str = "qemu-system-x86_64";

/// How the guest's CPU is run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    /// TCG, with the reason KVM is not used.
    Tcg(String),
}

impl Accel {
    fn args(&self) -> [&'static str; 4] {
        match self {
            Accel::Kvm => ["-accel", "kvm", "-cpu", "host"],
            Accel::Tcg(_) => ["-accel", "tcg,thread=multi", "-cpu", "max"],
        }
    }

    pub fn short(&self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg(_) => "tcg",
        }
    }
}

/// The user's choice on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum AccelChoice {
    /// KVM where it really works, TCG otherwise.
    #[default]
    Auto,
    Kvm,
    Tcg,
}

/// Picks the accelerator.
pub fn accel(choice: AccelChoice) -> Result<Accel> {
    match choice {
        AccelChoice::Tcg => Ok(Accel::Tcg("asked for on the command line".into())),
        AccelChoice::Kvm => match kvm_unusable() {
            None => Ok(Accel::Kvm),
            Some(why) => bail!("--accel kvm: {why}"),
        },
        AccelChoice::Auto => Ok(kvm_unusable().map_or(Accel::Kvm, Accel::Tcg)),
    }
}

/// Why KVM cannot be used here, or `None` when it can.
fn kvm_unusable() -> Option<String> {
    if Path::new("/sys/module/kvm_pvm").exists() {
        return Some(
            "the host's KVM is nested paravirtual (kvm_pvm), which stock Debian kernels do \
             not boot under"
                .into(),
        );
    }
    match OpenOptions::new().read(true).write(true).open("/dev/kvm") {
        Ok(_) => None,
        Err(error) => Some(format!("/dev/kvm cannot be opened: {error}")),
    }
}

/// Whether QEMU is installed.
pub fn check_installed() -> Result<()> {
    if find_in_path(QEMU).is_none() {
        bail!("{QEMU} is not installed: `cargo xtask setup` installs qemu-system-x86");
    }
    Ok(())
}

/// One boot.
pub struct Boot<'a> {
    pub kernel: &'a Kernel,
    pub initramfs: &'a Path,
    /// The guest script (a host path, which the guest sees at the same place).
    pub script: &'a Path,
    /// Host directories the guest must see even where it mounts a tmpfs (see initramfs.rs).
    pub keep: &'a [PathBuf],
    pub accel: &'a Accel,
    /// Where the run's logs go: `console.log`, `results.log`, `qemu.log`.
    pub dir: &'a Path,
    pub timeout: Duration,
}

/// How a boot ended.
#[derive(Debug)]
pub struct Ended {
    pub elapsed: Duration,
    /// QEMU was killed at the time limit.
    pub timed_out: bool,
    /// QEMU's own failure (it exited non-zero), with the end of its log.
    pub qemu_error: Option<String>,
}

impl Boot<'_> {
    pub fn console_log(&self) -> PathBuf {
        self.dir.join("console.log")
    }

    pub fn results_log(&self) -> PathBuf {
        self.dir.join("results.log")
    }

    fn command(&self) -> Result<Command> {
        let modules = self.kernel.modules_base.as_path();
        for path in [self.script, modules]
            .into_iter()
            .chain(self.keep.iter().map(PathBuf::as_path))
        {
            let text = path.to_string_lossy();
            if text.contains(|c: char| c.is_whitespace() || c == ':') || !path.is_absolute() {
                bail!(
                    "{} must be an absolute path without spaces or colons: it goes on the \
                     guest's kernel command line",
                    path.display()
                );
            }
        }
        let keep: Vec<String> = self
            .keep
            .iter()
            .map(|p| p.display().to_string())
            .chain([modules.display().to_string()])
            .collect();
        let append = format!(
            "console=ttyS0 rdinit=/init lsm=landlock,lockdown,yama,bpf panic=-1 \
             vmtest.script={} vmtest.modules={} vmtest.keep={}",
            self.script.display(),
            modules.display(),
            keep.join(":")
        );
        let mut cmd = Command::new(QEMU);
        cmd.args(self.accel.args())
            .args(["-m", "2G", "-smp", "2"])
            .args([
                "-nodefaults",
                "-nographic",
                "-no-reboot",
                "-monitor",
                "none",
            ])
            .arg("-kernel")
            .arg(&self.kernel.vmlinuz)
            .arg("-initrd")
            .arg(self.initramfs)
            .arg("-append")
            .arg(append)
            .arg("-virtfs")
            .arg(format!(
                "local,path=/,mount_tag={MOUNT_TAG},readonly=on,security_model=none,multidevs=remap"
            ))
            .arg("-serial")
            .arg(format!("file:{}", self.console_log().display()))
            .arg("-serial")
            .arg(format!("file:{}", self.results_log().display()));
        Ok(cmd)
    }

    /// Boots and calls `on_line` with every line of the results port as it arrives, until
    /// the guest powers off or the time limit.
    pub fn run(&self, mut on_line: impl FnMut(&str)) -> Result<Ended> {
        for log in [self.console_log(), self.results_log()] {
            let _ = fs::remove_file(log);
        }
        let qemu_log_path = self.dir.join("qemu.log");
        let qemu_log = File::create(&qemu_log_path)
            .with_context(|| format!("creating {}", qemu_log_path.display()))?;
        let mut cmd = self.command()?;
        cmd.stdin(Stdio::null())
            .stdout(qemu_log.try_clone()?)
            .stderr(qemu_log);
        let started = Instant::now();
        let mut child = cmd
            .spawn()
            .with_context(|| format!("could not start {QEMU}"))?;
        let child = KillOnDrop(&mut child);

        let mut follower = Follower::default();
        let mut timed_out = false;
        let status = loop {
            follower.poll(&self.results_log(), &mut on_line);
            if let Some(status) = child.0.try_wait()? {
                break Some(status);
            }
            if started.elapsed() > self.timeout {
                timed_out = true;
                let _ = child.0.kill();
                let _ = child.0.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        follower.poll(&self.results_log(), &mut on_line);
        follower.finish(&mut on_line);

        let qemu_error = match status {
            Some(status) if !status.success() => Some(format!(
                "{QEMU} exited with {status}: {}",
                tail(&qemu_log_path, 5)
            )),
            _ => None,
        };
        Ok(Ended {
            elapsed: started.elapsed(),
            timed_out,
            qemu_error,
        })
    }
}

/// Kills QEMU if we leave early (an error, a panic): no guest outlives vm-test.
struct KillOnDrop<'a>(&'a mut Child);

impl Drop for KillOnDrop<'_> {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Follows a growing file, line by line.
#[derive(Default)]
struct Follower {
    file: Option<File>,
    partial: Vec<u8>,
}

impl Follower {
    fn poll(&mut self, path: &Path, on_line: &mut impl FnMut(&str)) {
        if self.file.is_none() {
            self.file = File::open(path).ok();
        }
        let Some(file) = &mut self.file else { return };
        let mut chunk = Vec::new();
        if file.read_to_end(&mut chunk).is_err() {
            return;
        }
        self.partial.extend_from_slice(&chunk);
        while let Some(newline) = self.partial.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=newline).collect();
            on_line(&String::from_utf8_lossy(&line[..line.len() - 1]));
        }
    }

    fn finish(&mut self, on_line: &mut impl FnMut(&str)) {
        if !self.partial.is_empty() {
            on_line(&String::from_utf8_lossy(&self.partial));
            self.partial.clear();
        }
    }
}

/// The last `lines` lines of a log file, joined with " | " (empty when unreadable).
pub fn tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    all[all.len().saturating_sub(lines)..].join(" | ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follower_hands_out_whole_lines_as_they_grow() {
        let dir = std::env::temp_dir().join(format!("xtask-vm-follow-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("results.log");
        let mut follower = Follower::default();
        let mut seen = Vec::new();
        follower.poll(&path, &mut |l| seen.push(l.to_string()));
        assert!(seen.is_empty(), "no file yet");
        fs::write(&path, "one\ntw").unwrap();
        follower.poll(&path, &mut |l| seen.push(l.to_string()));
        assert_eq!(seen, ["one"]);
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        std::io::Write::write_all(&mut f, b"o\nthree").unwrap();
        follower.poll(&path, &mut |l| seen.push(l.to_string()));
        follower.finish(&mut |l| seen.push(l.to_string()));
        assert_eq!(seen, ["one", "two", "three"]);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn tcg_and_kvm_arguments() {
        assert_eq!(
            Accel::Tcg(String::new()).args(),
            ["-accel", "tcg,thread=multi", "-cpu", "max"]
        );
        assert_eq!(Accel::Kvm.args(), ["-accel", "kvm", "-cpu", "host"]);
    }
}
