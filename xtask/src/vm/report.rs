//! Reading what a guest printed on its results port, and the kernel × test table.
//!
//! [`KernelRun::feed`] takes the port's lines one at a time (the protocol is in
//! [`super::runner`]) and keeps, per test executable, libtest's counts from its
//! `test result:` line, the names of failed tests, the skips the tests recorded, and how the
//! executable ended. A skipped test is counted by libtest as passed: it is moved to
//! "skipped" here, as `cargo xtask test` does on the host. Anything that did not finish
//! cleanly (a crash, a time-out, a guest that never got to the tests) is a failure.

use std::fmt::Write as _;

/// Everything one guest reported.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct KernelRun {
    /// `uname -r` in the guest.
    pub release: Option<String>,
    /// The active LSMs (`/sys/kernel/security/lsm`).
    pub lsm: Option<String>,
    /// The Landlock ABI version, or why there is none.
    pub landlock_abi: Option<String>,
    pub binaries: Vec<BinaryRun>,
    /// The script reached its end.
    pub done: bool,
    /// The guest's `/init` gave up before the tests (why).
    pub init_failure: Option<String>,
    /// Other `@@vm-test` lines the script printed (`note …`).
    pub notes: Vec<String>,
    in_progress: Option<usize>,
}

/// One test executable's run in one guest.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct BinaryRun {
    pub name: String,
    /// libtest's counts (its "passed" includes the skipped tests).
    pub libtest_passed: u64,
    pub libtest_failed: u64,
    pub ignored: u64,
    /// A `test result:` line was seen.
    pub has_result: bool,
    /// `module:line: why` of each skipped test.
    pub skips: Vec<String>,
    /// Names of the tests libtest reported as FAILED.
    pub failures: Vec<String>,
    /// The executable's exit status (124 or 137: killed by `timeout`).
    pub exit: Option<i32>,
    pub seconds: Option<u64>,
    /// The `end` marker was seen.
    pub ended: bool,
}

/// Counts that add up across kernels and layers.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub passed: u64,
    pub failed: u64,
    pub skipped: u64,
}

impl std::ops::AddAssign for Counts {
    fn add_assign(&mut self, other: Counts) {
        self.passed += other.passed;
        self.failed += other.failed;
        self.skipped += other.skipped;
    }
}

const MARKER: &str = "@@vm-test ";

impl KernelRun {
    /// Takes one line of the results port.
    pub fn feed(&mut self, line: &str) {
        let line = line.trim_end_matches(['\r', '\n']);
        if let Some(event) = line.strip_prefix(MARKER) {
            self.event(event);
            return;
        }
        let Some(binary) = self.in_progress.and_then(|i| self.binaries.get_mut(i)) else {
            return;
        };
        if let Some(rest) = line.strip_prefix("test result: ") {
            binary.has_result = true;
            binary.libtest_passed += libtest_count(rest, "passed");
            binary.libtest_failed += libtest_count(rest, "failed");
            binary.ignored += libtest_count(rest, "ignored");
        } else if let Some(name) = line
            .strip_prefix("test ")
            .and_then(|rest| rest.strip_suffix(" ... FAILED"))
        {
            binary.failures.push(name.to_string());
        } else if let Some(why) = line.strip_prefix("skipping ") {
            // Printed by skip_unless! (seen when libtest does not capture it).
            add_skip(binary, why);
        }
    }

    fn event(&mut self, event: &str) {
        let (kind, rest) = event.split_once(' ').unwrap_or((event, ""));
        let rest = rest.trim();
        match kind {
            "kernel" => self.release = Some(rest.to_string()),
            "lsm" => self.lsm = Some(rest.to_string()),
            "landlock-abi" => self.landlock_abi = Some(rest.to_string()),
            "init-failed" => self.init_failure = Some(rest.to_string()),
            "done" => {
                self.done = true;
                self.in_progress = None;
            }
            "begin" => {
                self.binaries.push(BinaryRun {
                    name: rest.to_string(),
                    ..BinaryRun::default()
                });
                self.in_progress = Some(self.binaries.len() - 1);
            }
            "skip" => {
                if let Some(binary) = self.in_progress.and_then(|i| self.binaries.get_mut(i)) {
                    add_skip(binary, rest);
                }
            }
            "end" => {
                let mut words = rest.split_whitespace();
                let name = words.next().unwrap_or("");
                let Some(binary) = self.in_progress.and_then(|i| self.binaries.get_mut(i)) else {
                    return;
                };
                if binary.name != name {
                    return;
                }
                binary.ended = true;
                for word in words {
                    if let Some(code) = word.strip_prefix("exit=") {
                        binary.exit = code.parse().ok();
                    } else if let Some(secs) = word.strip_prefix("seconds=") {
                        binary.seconds = secs.parse().ok();
                    }
                }
                self.in_progress = None;
            }
            _ => self.notes.push(event.to_string()),
        }
    }

    /// The run of the executable called `name`, if it began.
    pub fn binary(&self, name: &str) -> Option<&BinaryRun> {
        self.binaries.iter().find(|b| b.name == name)
    }

    /// Whether BPF LSM is active (`bpf` among the active LSMs).
    pub fn bpf_lsm_active(&self) -> Option<bool> {
        self.lsm
            .as_deref()
            .map(|list| list.split(',').any(|lsm| lsm.trim() == "bpf"))
    }

    /// Counts over the executables in `expected`; one that never began is one failure.
    pub fn counts(&self, expected: &[String]) -> Counts {
        let mut total = Counts::default();
        for name in expected {
            total += match self.binary(name) {
                Some(binary) => binary.counts(),
                None => Counts {
                    failed: 1,
                    ..Counts::default()
                },
            };
        }
        total
    }
}

impl BinaryRun {
    /// Passed (without skips), failed (a run that did not end cleanly is one more) and
    /// skipped tests.
    pub fn counts(&self) -> Counts {
        let skipped = self.skips.len() as u64;
        let unclean = !self.ended || self.exit != Some(0) || !self.has_result;
        Counts {
            passed: self.libtest_passed.saturating_sub(skipped),
            failed: self.libtest_failed + u64::from(unclean && self.libtest_failed == 0),
            skipped,
        }
    }

    /// Why the run did not end cleanly, if it did not.
    pub fn trouble(&self) -> Option<String> {
        match (self.ended, self.exit) {
            (false, _) => Some("did not finish (the guest stopped: time-out or crash)".into()),
            (true, Some(124 | 137)) => Some("killed by the per-executable time limit".into()),
            (true, Some(0)) if !self.has_result => Some("printed no `test result:` line".into()),
            (true, Some(0)) => None,
            (true, Some(code)) if self.libtest_failed == 0 => Some(format!(
                "exited with {code} without a failed test (crash or harness error)"
            )),
            (true, Some(_)) => None,
            (true, None) => Some("exit status unknown".into()),
        }
    }

    /// The table cell: `passed/failed/skipped`, marked when the run did not end cleanly.
    fn cell(&self) -> String {
        let c = self.counts();
        let mark = match (self.ended, self.exit) {
            (false, _) => " DNF",
            (true, Some(124 | 137)) => " TIMEOUT",
            _ if c.failed > 0 => " FAIL",
            _ => "",
        };
        format!("{}/{}/{}{mark}", c.passed, c.failed, c.skipped)
    }
}

fn add_skip(binary: &mut BinaryRun, why: &str) {
    let why = why.trim().to_string();
    if !why.is_empty() && !binary.skips.contains(&why) {
        binary.skips.push(why);
    }
}

/// `N word` in libtest's `ok. 3 passed; 1 failed; 0 ignored; …`.
fn libtest_count(summary: &str, word: &str) -> u64 {
    summary
        .split(';')
        .find_map(|part| {
            let part = part.trim();
            let part = part.rsplit_once(". ").map_or(part, |(_, count)| count);
            part.strip_suffix(word)?.trim().parse().ok()
        })
        .unwrap_or(0)
}

/// A column of the table: a kernel's label and what its guest reported.
pub struct Column<'a> {
    pub label: String,
    pub run: &'a KernelRun,
}

/// The Markdown table: one row per test executable, one column per kernel, cells
/// `passed/failed/skipped`, and a total row.
pub fn table(columns: &[Column<'_>], binaries: &[String]) -> String {
    let mut rows: Vec<Vec<String>> = Vec::new();
    let mut header = vec!["test executable".to_string()];
    header.extend(columns.iter().map(|c| c.label.clone()));
    rows.push(header);
    for name in binaries {
        let mut row = vec![name.clone()];
        for column in columns {
            row.push(match column.run.binary(name) {
                Some(binary) => binary.cell(),
                None => "not run".to_string(),
            });
        }
        rows.push(row);
    }
    let mut total = vec!["total".to_string()];
    for column in columns {
        let c = column.run.counts(binaries);
        total.push(format!("{}/{}/{}", c.passed, c.failed, c.skipped));
    }
    rows.push(total);

    let widths: Vec<usize> = (0..rows[0].len())
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for (n, row) in rows.iter().enumerate() {
        out.push('|');
        for (cell, width) in row.iter().zip(&widths) {
            let _ = write!(out, " {cell:<width$} |");
        }
        out.push('\n');
        if n == 0 {
            out.push('|');
            for width in &widths {
                let _ = write!(out, "{}|", "-".repeat(width + 2));
            }
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(lines: &str) -> KernelRun {
        let mut run = KernelRun::default();
        for line in lines.lines() {
            run.feed(line);
        }
        run
    }

    #[test]
    fn a_clean_run_with_skips() {
        let r = run("@@vm-test kernel 6.12.117+deb12-amd64\n\
                     @@vm-test lsm lockdown,capability,landlock,yama,bpf,ima,evm\n\
                     @@vm-test landlock-abi 6\n\
                     @@vm-test begin hardening\n\
                     running 5 tests\n\
                     test a ... ok\n\
                     test result: ok. 5 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 1.12s\n\
                     @@vm-test skip hardening:19: no setpriv\n\
                     @@vm-test end hardening exit=0 seconds=7\n\
                     @@vm-test done\n");
        assert_eq!(r.release.as_deref(), Some("6.12.117+deb12-amd64"));
        assert_eq!(r.landlock_abi.as_deref(), Some("6"));
        assert_eq!(r.bpf_lsm_active(), Some(true));
        let expected = vec!["hardening".to_string()];
        assert_eq!(
            r.counts(&expected),
            Counts {
                passed: 4,
                failed: 0,
                skipped: 1
            }
        );
        let b = r.binary("hardening").unwrap();
        assert_eq!((b.ignored, b.seconds, b.trouble()), (1, Some(7), None));
    }

    #[test]
    fn failures_crashes_and_missing_runs_are_failures() {
        let r = run("@@vm-test lsm capability,landlock\n\
                     @@vm-test begin attacks\n\
                     test x ... FAILED\n\
                     test y ... ok\n\
                     test result: FAILED. 1 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; finished in 1s\n\
                     @@vm-test end attacks exit=101 seconds=3\n\
                     @@vm-test begin cli\n\
                     @@vm-test end cli exit=139 seconds=1\n\
                     @@vm-test begin behaviour\n\
                     test z ... ok\n");
        assert_eq!(r.bpf_lsm_active(), Some(false));
        let attacks = r.binary("attacks").unwrap();
        assert_eq!(attacks.failures, ["x"]);
        assert_eq!(attacks.counts().failed, 1);
        assert_eq!(attacks.trouble(), None);
        let cli = r.binary("cli").unwrap();
        assert_eq!(cli.counts().failed, 1);
        assert!(cli.trouble().unwrap().contains("139"));
        let behaviour = r.binary("behaviour").unwrap();
        assert!(!behaviour.ended);
        assert!(behaviour.cell().ends_with("DNF"));
        let expected: Vec<String> = ["attacks", "cli", "behaviour", "doctor"]
            .map(String::from)
            .to_vec();
        assert_eq!(r.counts(&expected).failed, 4);

        let table = table(
            &[Column {
                label: "6.1".into(),
                run: &r,
            }],
            &expected,
        );
        assert!(table.contains("| doctor          | not run "), "{table}");
        assert!(table.contains("| total           | 1/4/0 "), "{table}");
    }

    #[test]
    fn a_timed_out_executable_and_init_failures() {
        let r = run("@@vm-test begin behaviour\n@@vm-test end behaviour exit=124 seconds=900\n@@vm-test done\n");
        let b = r.binary("behaviour").unwrap();
        assert!(b.cell().ends_with("TIMEOUT"));
        assert_eq!(b.counts().failed, 1);
        let r = run("@@vm-test init-failed cannot mount the host root over 9p\n");
        assert_eq!(
            r.init_failure.as_deref(),
            Some("cannot mount the host root over 9p")
        );
        assert!(!r.done);
    }

    #[test]
    fn printed_skips_and_recorded_skips_count_once() {
        let r = run("@@vm-test begin doctor\n\
                     skipping doctor:431: no BPF LSM\n\
                     test result: ok. 3 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 1s\n\
                     @@vm-test skip doctor:431: no BPF LSM\n\
                     @@vm-test end doctor exit=0 seconds=1\n");
        assert_eq!(
            r.binary("doctor").unwrap().skips,
            ["doctor:431: no BPF LSM"]
        );
        assert_eq!(
            r.binary("doctor").unwrap().counts(),
            Counts {
                passed: 2,
                failed: 0,
                skipped: 1
            }
        );
    }
}
