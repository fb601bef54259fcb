//! `agent-supervisor doctor`: every claim it makes about this host is checked against an
//! independent observation (`/proc`, `/proc/mounts`, securityfs, a C program that loads the
//! same BPF programs through the kernel's own headers, and real `run` sessions), its text and
//! `--json` outputs carry the same facts, and its exit code follows its WEAKER lines.
//! Nothing is hard-coded about this host: claims are checked against each other and against
//! what the test observes itself.

mod common;
use common::NoCi;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{bin, compile_c, run_with_timeout, Result_, Workspace};
use serde_json::Value;

const LIMIT: Duration = Duration::from_secs(30);

/// `agent-supervisor args...` in `dir`, time-limited.
fn cli_in(dir: &Path, args: &[&str]) -> Result_ {
    let mut c = common::supervisor_command();
    c.args(args).current_dir(dir).stdin(Stdio::null()).no_ci();
    let r = run_with_timeout(c, LIMIT);
    assert!(
        !r.timed_out,
        "agent-supervisor {args:?} hit the time limit: {r:?}"
    );
    r
}

/// `doctor --policy POLICY` in text and JSON form.
struct Doctor {
    text: Result_,
    json: Value,
    json_code: Option<i32>,
}

fn doctor(dir: &Path, policy: &str) -> Doctor {
    let text = cli_in(dir, &["doctor", "--policy", policy]);
    let j = cli_in(dir, &["doctor", "--policy", policy, "--json"]);
    let json = serde_json::from_str(&j.stdout)
        .unwrap_or_else(|e| panic!("doctor --json is not JSON ({e}): {j:?}"));
    assert!(matches!(text.code, Some(0 | 1)), "doctor failed: {text:?}");
    Doctor {
        text,
        json,
        json_code: j.code,
    }
}

/// The `  label: value` lines of the text report's host section.
fn host_lines(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .skip_while(|l| *l != "host")
        .skip(1)
        .take_while(|l| !l.is_empty())
        .map(|l| {
            let (label, value) = l.trim().split_once(':').expect("label: value");
            (label.to_string(), value.trim().to_string())
        })
        .collect()
}

fn line<'a>(lines: &'a BTreeMap<String, String>, label: &str) -> &'a str {
    lines
        .get(label)
        .unwrap_or_else(|| panic!("no {label:?} line in {lines:#?}"))
}

/// `/proc/mounts` as (mount point, fstype, options).
fn proc_mounts() -> Vec<(String, String, Vec<String>)> {
    std::fs::read_to_string("/proc/mounts")
        .expect("/proc/mounts")
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            (
                f[1].replace("\\040", " "),
                f[2].to_string(),
                f[3].split(',').map(String::from).collect(),
            )
        })
        .collect()
}

fn tmp() -> std::path::PathBuf {
    std::env::temp_dir()
}

#[test]
fn text_and_json_report_the_same_facts() {
    let d = doctor(&tmp(), "preset:sandboxed");
    let (j, lines) = (&d.json, host_lines(&d.text.stdout));
    assert_eq!(
        d.text.code, d.json_code,
        "text and --json exit codes differ"
    );
    assert_eq!(
        line(&lines, "kernel"),
        j["kernel"].as_str().expect("kernel")
    );
    assert_eq!(
        line(&lines, "root").starts_with("yes"),
        j["root"].as_bool().expect("root")
    );
    let abi = j["landlock_abi"].as_i64().expect("landlock_abi");
    let landlock = line(&lines, "Landlock");
    if abi > 0 {
        assert_eq!(landlock, format!("ABI {abi}"));
    } else {
        assert!(landlock.starts_with("unavailable"), "{landlock}");
    }
    for (label, key) in [
        ("seccomp listener", "listener"),
        ("seccomp ID_VALID", "id_valid"),
        ("seccomp CONTINUE", "continue"),
        ("seccomp ADDFD+SEND", "addfd_send"),
        ("seccomp SYNC_WAKE_UP", "sync_wake_up"),
        ("seccomp WAIT_KILLABLE_RECV", "wait_killable_recv"),
    ] {
        let works = j["seccomp"][key]["works"].as_bool().expect(key);
        assert_eq!(
            line(&lines, label) == "works",
            works,
            "{label} vs seccomp.{key}"
        );
    }
    assert_eq!(
        line(&lines, "ptrace (exec guard)") == "works",
        j["ptrace"]["works"] == true
    );
    assert_eq!(
        line(&lines, "user namespaces").starts_with("work ("),
        j["user_namespaces"]["works"] == true
    );
    for p in j["bpf_programs"].as_array().expect("bpf_programs") {
        let name = p["type"].as_str().expect("type");
        let text = line(&lines, &format!("BPF {name}"));
        if p["works"] == true {
            assert!(text.starts_with("loads"), "BPF {name}: {text}");
        } else {
            assert!(text.starts_with("does not load"), "BPF {name}: {text}");
            let error = p["error"].as_str().expect("a failed load says why");
            assert!(text.contains(error), "BPF {name}: {text} lacks {error}");
        }
    }
    let active = line(&lines, "BPF LSM active");
    match j["bpf_lsm"]["active"].as_bool() {
        Some(true) => assert!(active.starts_with("yes"), "{active}"),
        Some(false) => assert!(active.starts_with("no"), "{active}"),
        None => assert!(active.starts_with("unknown ("), "{active}"),
    }
    assert_eq!(
        line(&lines, "BPF LSM usable") == "yes",
        j["bpf_lsm"]["usable"]["works"] == true
    );
    let layout = j["cgroups"]["layout"].as_str().expect("layout");
    assert!(line(&lines, "cgroups").starts_with(layout));
    for c in j["cgroups"]["v1_controllers"].as_array().expect("v1") {
        assert!(line(&lines, "cgroups").contains(c.as_str().expect("name")));
    }
    assert_eq!(
        line(&lines, "network backstop (BPF)").starts_with("available"),
        j["network_backstop"]["works"] == true
    );
    let memfd = line(&lines, "memfd_noexec sysctl");
    match j["memfd_noexec"]["sysctl"].as_u64() {
        Some(v) => assert!(memfd.contains(&format!("vm.memfd_noexec = {v}")), "{memfd}"),
        None => assert!(memfd.starts_with("not supported"), "{memfd}"),
    }

    // The policy part: the same protections, in the same order, with the same verdicts.
    let protections = j["policy"]["protections"].as_array().expect("protections");
    let headers: Vec<&str> = d
        .text
        .stdout
        .lines()
        .filter(|l| l.starts_with("  [ok] ") || l.starts_with("  [WEAKER] "))
        .collect();
    assert_eq!(headers.len(), protections.len(), "{}", d.text.stdout);
    let mechanisms: Vec<&str> = d
        .text
        .stdout
        .lines()
        .filter_map(|l| l.trim().strip_prefix("enforced by: "))
        .collect();
    for ((header, p), mechanism) in headers.iter().zip(protections).zip(&mechanisms) {
        let available = p["available"].as_bool().expect("available");
        assert_eq!(header.starts_with("  [ok] "), available, "{header}");
        assert!(header.ends_with(p["protection"].as_str().expect("protection")));
        assert_eq!(*mechanism, p["mechanism"].as_str().expect("mechanism"));
    }
    let weaker = j["weaker"].as_array().expect("weaker");
    let text_weaker = d
        .text
        .stdout
        .lines()
        .filter(|l| l.starts_with("WEAKER: "))
        .count();
    assert_eq!(text_weaker, weaker.len(), "{}", d.text.stdout);
}

#[test]
fn kernel_landlock_and_root_match_independent_observations() {
    let d = doctor(&tmp(), "preset:sandboxed");
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").expect("osrelease");
    assert_eq!(d.json["kernel"], release.trim());
    assert!(d.text.stdout.contains(release.trim()));

    let version = cli_in(&tmp(), &["version", "--json"]);
    let version: Value = serde_json::from_str(&version.stdout).expect("version --json");
    assert_eq!(d.json["landlock_abi"], version["landlock_abi"]);
    // Landlock's ABI is only non-zero when it is an active LSM.
    if let Ok(lsms) = std::fs::read_to_string("/sys/kernel/security/lsm") {
        let active = lsms.trim().split(',').any(|l| l == "landlock");
        assert_eq!(
            active,
            d.json["landlock_abi"].as_i64() > Some(0),
            "lsm={lsms}"
        );
    }

    assert_eq!(d.json["root"], common::is_root());
    let status = std::fs::read_to_string("/proc/self/status").expect("status");
    let euid = status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .and_then(|l| l.split_whitespace().nth(2))
        .expect("euid");
    assert_eq!(d.json["euid"].to_string(), euid);
    assert_eq!(
        d.json["memfd_noexec"]["sysctl"].is_null(),
        !Path::new("/proc/sys/vm/memfd_noexec").exists()
    );
}

#[test]
fn cgroup_layout_and_tracefs_match_proc_mounts() {
    let d = doctor(&tmp(), "preset:sandboxed");
    let c = &d.json["cgroups"];
    let mounts = proc_mounts();
    let v2: Vec<&str> = mounts
        .iter()
        .filter(|m| m.1 == "cgroup2")
        .map(|m| m.0.as_str())
        .collect();
    let v1: Vec<&Vec<String>> = mounts
        .iter()
        .filter(|m| m.1 == "cgroup")
        .map(|m| &m.2)
        .collect();
    let expected = match (v2.is_empty(), v1.is_empty()) {
        (false, true) => "unified",
        (false, false) => "hybrid",
        (true, false) => "legacy",
        (true, true) => "none",
    };
    assert_eq!(c["layout"], expected, "{}", d.text.stdout);
    assert_eq!(c["cgroup2"].as_str(), v2.first().copied());
    // Every listed v1 controller is an option of a v1 mount, and every v1 mount is covered.
    let listed: Vec<&str> = c["v1_controllers"]
        .as_array()
        .expect("v1_controllers")
        .iter()
        .map(|v| v.as_str().expect("name"))
        .collect();
    for name in &listed {
        assert!(
            v1.iter().any(|opts| opts.iter().any(|o| o == name)),
            "{name} is no v1 mount's option"
        );
    }
    for opts in &v1 {
        assert!(
            opts.iter().any(|o| listed.contains(&o.as_str())),
            "v1 mount with {opts:?} missing from {listed:?}"
        );
    }
    if let Some(root) = v2.first() {
        let controllers =
            std::fs::read_to_string(format!("{root}/cgroup.controllers")).unwrap_or_default();
        let listed: Vec<&str> = c["cgroup2_controllers"]
            .as_array()
            .expect("cgroup2_controllers")
            .iter()
            .map(|v| v.as_str().expect("name"))
            .collect();
        assert_eq!(listed, controllers.split_whitespace().collect::<Vec<_>>());
    }
    let tracefs: Vec<&str> = mounts
        .iter()
        .filter(|m| m.1 == "tracefs")
        .map(|m| m.0.as_str())
        .collect();
    let claimed: Vec<&str> = d.json["tracefs"]
        .as_array()
        .expect("tracefs")
        .iter()
        .map(|v| v.as_str().expect("path"))
        .collect();
    assert_eq!(claimed, tracefs);
    let line = host_lines(&d.text.stdout)["tracefs"].clone();
    assert_eq!(line == "not mounted", tracefs.is_empty(), "{line}");
}

#[test]
fn bpf_lsm_claims_match_securityfs_and_each_other() {
    let d = doctor(&tmp(), "preset:sandboxed");
    let lsm = &d.json["bpf_lsm"];
    let lines = host_lines(&d.text.stdout);
    match std::fs::read_to_string("/sys/kernel/security/lsm") {
        Ok(list) => {
            let active: Vec<&str> = list.trim().split(',').collect();
            assert_eq!(lsm["active"], active.contains(&"bpf"), "lsm={list}");
            assert_eq!(lsm["lsms"], serde_json::json!(active));
        }
        Err(e) => {
            eprintln!("/sys/kernel/security/lsm unreadable ({e}): doctor must say unknown");
            assert!(lsm["active"].is_null(), "{lsm}");
            let securityfs_mounted = proc_mounts()
                .iter()
                .any(|m| m.1 == "securityfs" && m.0 == "/sys/kernel/security");
            if !securityfs_mounted {
                assert_eq!(
                    lines["BPF LSM active"],
                    "unknown (securityfs not mounted at /sys/kernel/security)"
                );
            }
        }
    }
    // Usable exactly when active and lsm programs load; a BPF LSM that is active but whose
    // programs do not load (the host of KERNEL-FACTS) is not usable.
    let lsm_loads = program(&d.json, "lsm")["works"] == true;
    assert_eq!(
        lsm["usable"]["works"] == true,
        lsm["active"] == true && lsm_loads,
        "{lsm}"
    );
    if !lsm_loads {
        let errno = program(&d.json, "lsm")["errno"].as_i64();
        let why = program(&d.json, "lsm")["error"]
            .as_str()
            .unwrap_or_default();
        assert!(
            errno.is_some() || why.contains("BTF"),
            "a failed lsm load names its errno (or the missing BTF): {lsm}"
        );
        assert!(lines["BPF lsm"].starts_with("does not load: "));
    }
}

fn program<'a>(json: &'a Value, name: &str) -> &'a Value {
    json["bpf_programs"]
        .as_array()
        .expect("bpf_programs")
        .iter()
        .find(|p| p["type"] == name)
        .unwrap_or_else(|| panic!("no {name} probe"))
}

/// Loads the same six programs through `<linux/bpf.h>` and `<linux/btf.h>` and prints
/// `name errno` (0 = loaded).
const BPF_PROBE_C: &str = r#"
#include <errno.h>
#include <linux/bpf.h>
#include <linux/btf.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

static unsigned char *btf; static long btf_len;

static unsigned btf_id(int want_kind, const char *want) {
    if (!btf) return 0;
    struct btf_header *h = (void *)btf;
    unsigned char *types = btf + h->hdr_len + h->type_off;
    const char *strs = (const char *)btf + h->hdr_len + h->str_off;
    unsigned off = 0, id = 1;
    while (off + sizeof(struct btf_type) <= h->type_len) {
        struct btf_type *t = (void *)(types + off);
        int kind = BTF_INFO_KIND(t->info), vlen = BTF_INFO_VLEN(t->info);
        if (kind == want_kind && strcmp(strs + t->name_off, want) == 0) return id;
        off += sizeof(*t);
        switch (kind) {
        case BTF_KIND_INT: off += 4; break;
        case BTF_KIND_ARRAY: off += sizeof(struct btf_array); break;
        case BTF_KIND_STRUCT: case BTF_KIND_UNION: off += vlen * sizeof(struct btf_member); break;
        case BTF_KIND_ENUM: off += vlen * sizeof(struct btf_enum); break;
        case BTF_KIND_FUNC_PROTO: off += vlen * sizeof(struct btf_param); break;
        case BTF_KIND_VAR: off += sizeof(struct btf_var); break;
        case BTF_KIND_DATASEC: off += vlen * sizeof(struct btf_var_secinfo); break;
        case BTF_KIND_DECL_TAG: off += sizeof(struct btf_decl_tag); break;
        case BTF_KIND_ENUM64: off += vlen * sizeof(struct btf_enum64); break;
        default: break;
        }
        id++;
    }
    return 0;
}

static int load(enum bpf_prog_type type, enum bpf_attach_type eat, unsigned btf_id, int r0) {
    struct bpf_insn insns[2] = {
        { .code = BPF_ALU64 | BPF_MOV | BPF_K, .dst_reg = BPF_REG_0, .imm = r0 },
        { .code = BPF_JMP | BPF_EXIT },
    };
    union bpf_attr a;
    memset(&a, 0, sizeof a);
    a.prog_type = type;
    a.insn_cnt = 2;
    a.insns = (uintptr_t)insns;
    a.license = (uintptr_t)"GPL";
    a.expected_attach_type = eat;
    a.attach_btf_id = btf_id;
    int fd = syscall(SYS_bpf, BPF_PROG_LOAD, &a, sizeof a);
    if (fd >= 0) { close(fd); return 0; }
    return errno;
}

int main(void) {
    FILE *f = fopen("/sys/kernel/btf/vmlinux", "rb");
    if (f) {
        fseek(f, 0, SEEK_END); btf_len = ftell(f); rewind(f);
        btf = malloc(btf_len);
        if (fread(btf, 1, btf_len, f) != (size_t)btf_len) { free(btf); btf = 0; }
        fclose(f);
    }
    printf("socket_filter %d\n", load(BPF_PROG_TYPE_SOCKET_FILTER, 0, 0, 0));
    printf("tracepoint %d\n", load(BPF_PROG_TYPE_TRACEPOINT, 0, 0, 0));
    printf("raw_tracepoint %d\n", load(BPF_PROG_TYPE_RAW_TRACEPOINT, 0, 0, 0));
    unsigned tp = btf_id(BTF_KIND_TYPEDEF, "btf_trace_sched_process_exec");
    printf("tp_btf %d\n", tp ? load(BPF_PROG_TYPE_TRACING, BPF_TRACE_RAW_TP, tp, 0) : -1);
    printf("cgroup_sock_addr %d\n",
           load(BPF_PROG_TYPE_CGROUP_SOCK_ADDR, BPF_CGROUP_INET4_CONNECT, 0, 1));
    unsigned hook = btf_id(BTF_KIND_FUNC, "bpf_lsm_file_open");
    printf("lsm %d\n", hook ? load(BPF_PROG_TYPE_LSM, BPF_LSM_MAC, hook, 0) : -1);
    return 0;
}
"#;

#[test]
fn bpf_program_loads_match_an_independent_loader() {
    let ws = Workspace::new("doctor-bpf");
    let probe = compile_c(&ws.dir, "bpf_probe", BPF_PROBE_C, &[]);
    skip_unless!(
        probe.is_some(),
        "no C compiler (cc) or kernel headers to build the independent BPF loader"
    );
    let probe = probe.expect("checked");
    let r = run_with_timeout(Command::new(&probe), LIMIT);
    assert_eq!(r.code, Some(0), "{r:?}");
    let d = doctor(&tmp(), "preset:sandboxed");
    let mut seen = 0;
    for l in r.stdout.lines() {
        let (name, errno) = l.split_once(' ').expect("name errno");
        let errno: i64 = errno.parse().expect("errno");
        let p = program(&d.json, name);
        eprintln!("{name}: independent loader errno {errno}, doctor {p}");
        if errno == -1 {
            // No BTF id: doctor cannot load it either, and says why.
            assert_eq!(p["works"], false);
            assert!(p["error"].as_str().unwrap_or_default().contains("BTF"));
        } else {
            assert_eq!(p["works"] == true, errno == 0, "{name}: {p}");
            if errno != 0 {
                assert_eq!(p["errno"].as_i64(), Some(errno), "{name}: {p}");
            }
        }
        seen += 1;
    }
    assert_eq!(
        seen,
        d.json["bpf_programs"].as_array().expect("array").len()
    );
    // Consistency: a kernel that loads a specific program type loads the plainest one too.
    if d.json["bpf_programs"]
        .as_array()
        .expect("array")
        .iter()
        .any(|p| p["works"] == true)
    {
        assert_eq!(program(&d.json, "socket_filter")["works"], true);
    }
}

/// A policy with a file `ask` rule on part of the workspace.
fn ask_policy(ws: &Workspace) -> std::path::PathBuf {
    ws.policy(&format!(
        "version = 1\n\n[[rule]]\ndecision = \"ask\"\nfile = \"{}/asked/**\"\naccess = [\"read\"]\nreason = \"asked files\"\n",
        ws.dir.display()
    ))
}

#[test]
fn a_file_ask_rule_is_enforced_by_trapping_opens() {
    let ws = Workspace::new("doctor-ask");
    let policy = ask_policy(&ws);
    let policy = policy.to_str().expect("utf-8 path");
    let d = doctor(&ws.dir, policy);
    let protections = d.json["policy"]["protections"]
        .as_array()
        .expect("protections");
    let rule = protections
        .iter()
        .find(|p| {
            p["protection"]
                .as_str()
                .is_some_and(|s| s.contains(" ask file ") && s.contains("/asked/**"))
        })
        .unwrap_or_else(|| panic!("no protection for the ask rule: {}", d.text.stdout));
    let mechanism = rule["mechanism"].as_str().expect("mechanism");
    assert!(
        mechanism.starts_with("seccomp user notification on open*"),
        "{mechanism}"
    );
    let needs: Vec<&str> = rule["needs"]
        .as_array()
        .expect("needs")
        .iter()
        .map(|n| n.as_str().expect("need"))
        .collect();
    assert!(
        needs.contains(&"seccomp_listener") && needs.contains(&"seccomp_addfd"),
        "{needs:?}"
    );
    // The text shows it under the rule.
    let text = &d.text.stdout;
    let at = text
        .find(rule["protection"].as_str().expect("protection"))
        .expect("rule in the text");
    assert!(text[at..]
        .lines()
        .nth(1)
        .is_some_and(|l| l.trim() == format!("enforced by: {mechanism}")));
    // `policy explain` names the same mechanism for an open the rule decides.
    let target = ws.dir.join("asked/x.txt");
    let explain = cli_in(
        &ws.dir,
        &[
            "policy",
            "explain",
            policy,
            "--json",
            "--",
            "open",
            target.to_str().expect("utf-8"),
        ],
    );
    let explain: Value = serde_json::from_str(&explain.stdout).expect("explain --json");
    assert_eq!(explain["decision"], "ask");
    assert_eq!(explain["enforced_by"], mechanism);
}

#[test]
fn seccomp_and_namespace_claims_match_a_real_session() {
    let ws = Workspace::new("doctor-session");
    let policy = ask_policy(&ws);
    ws.write("asked/x.txt", "asked content\n");
    let d = doctor(&ws.dir, policy.to_str().expect("utf-8"));
    let works = |v: &Value| v["works"] == true;
    let s = &d.json["seccomp"];
    // The session needs: namespaces and a listener to start, CONTINUE + ptrace to let `cat`
    // run (exec is checked), ADDFD to hand it the asked file.
    let doctor_says_it_works = works(&d.json["user_namespaces"])
        && works(&s["listener"])
        && works(&s["continue"])
        && works(&d.json["ptrace"])
        && works(&s["addfd_send"]);
    let r = ws.run(
        &[
            "--policy",
            policy.to_str().expect("utf-8"),
            "--headless",
            "--default-allow",
        ],
        &["cat", "asked/x.txt"],
        LIMIT,
    );
    assert!(!r.timed_out, "{r:?}");
    let session_worked = r.code == Some(0) && r.stdout == "asked content\n";
    assert_eq!(
        doctor_says_it_works, session_worked,
        "doctor: {}\nsession: {r:?}",
        d.text.stdout
    );
    // The open really was trapped and decided (so ADDFD carried it).
    if session_worked {
        assert!(
            ws.decisions("open")
                .iter()
                .any(|rec| rec.to_string().contains("asked/x.txt")),
            "no audited open of the asked file: {:?}",
            ws.audit()
        );
    }
}

#[test]
fn exit_code_follows_the_weaker_lines() {
    for preset in ["preset:unrestricted", "preset:sandboxed", "preset:locked"] {
        let d = doctor(&tmp(), preset);
        let weaker = d.json["weaker"].as_array().expect("weaker");
        let expected = if weaker.is_empty() { 0 } else { 1 };
        assert_eq!(d.text.code, Some(expected), "{preset}: {}", d.text.stdout);
        assert_eq!(d.json["ok"], weaker.is_empty());
        assert_eq!(
            d.text.stdout.contains("WEAKER: "),
            !weaker.is_empty(),
            "{preset}"
        );
        // A protection is available exactly when it has no WEAKER line.
        for p in d.json["policy"]["protections"]
            .as_array()
            .expect("protections")
        {
            assert_eq!(
                p["available"] == true,
                p["weaker"].as_array().is_some_and(|w| w.is_empty()),
                "{p}"
            );
        }
    }
}

/// What a line of `run`'s "warning:" lines is about, as words both it and doctor's matching
/// WEAKER line contain. A warning not in this table fails the test: teach it (and doctor).
const WARNING_TOPICS: &[&str] = &[
    // First: its line names the path-based protections that stay (Landlock among them).
    "BPF LSM",
    "vm.memfd_noexec",
    "network backstop",
    "exec backstop",
    "Landlock",
    "WAIT_KILLABLE_RECV",
    "DNS resolver",
    "default limits",
];

fn topic(line: &str) -> &'static str {
    WARNING_TOPICS
        .iter()
        .find(|t| line.contains(*t))
        .unwrap_or_else(|| panic!("a weakness doctor's test does not know: {line}"))
}

/// `run`'s warnings (said once, on stderr, at start) and doctor's session-wide WEAKER lines
/// are about the same things.
fn assert_same_weaknesses(run_stderr: &str, doctor: &Value) {
    let mut from_run: Vec<&str> = run_stderr
        .lines()
        .filter_map(|l| l.strip_prefix("agent-supervisor: warning: "))
        .map(topic)
        .collect();
    let mut from_doctor: Vec<&str> = doctor["policy"]["protections"]
        .as_array()
        .expect("protections")
        .iter()
        .filter(|p| p["rule"].is_null())
        .flat_map(|p| p["weaker"].as_array().expect("weaker").iter())
        .map(|w| topic(w.as_str().expect("text")))
        .collect();
    from_run.sort();
    from_doctor.sort();
    from_doctor.dedup();
    eprintln!("weaknesses: run {from_run:?}, doctor {from_doctor:?}");
    assert_eq!(
        from_run, from_doctor,
        "run said:\n{run_stderr}\ndoctor: {doctor}"
    );
}

#[test]
fn run_warns_about_what_doctor_calls_weaker() {
    let ws = Workspace::new("doctor-warnings");
    let d = doctor(&ws.dir, "preset:sandboxed");
    let r = ws.run(
        &["--policy", "preset:sandboxed", "--headless"],
        &["true"],
        LIMIT,
    );
    assert!(!r.timed_out, "{r:?}");
    assert_same_weaknesses(&r.stderr, &d.json);
}

#[test]
fn without_root_doctor_says_what_is_weaker_and_exits_1() {
    skip_unless!(
        common::is_root(),
        "needs root to switch to an unprivileged user"
    );
    let setpriv = Path::new("/usr/bin/setpriv");
    skip_unless!(setpriv.exists(), "setpriv (util-linux) is not installed");
    // A copy of the binary and a directory the unprivileged user can reach.
    let ws = Workspace::new("doctor-nobody");
    let base = ws.dir.parent().expect("base").to_path_buf();
    let copy = base.join("agent-supervisor");
    std::fs::copy(bin(), &copy).expect("copy the binary");
    for p in [&base, &ws.dir, &copy] {
        std::process::Command::new("chmod")
            .arg("755")
            .arg(p)
            .status()
            .expect("chmod");
    }
    let mut c = Command::new(setpriv);
    c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(&copy)
        .args(["doctor", "--policy", "preset:sandboxed", "--json"])
        .current_dir(&ws.dir)
        .env("HOME", &ws.dir)
        .stdin(Stdio::null());
    let r = run_with_timeout(c, LIMIT);
    assert!(!r.timed_out, "{r:?}");
    let j: Value = serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("{e}: {r:?}"));
    // A session of the same user warns about the same things.
    std::process::Command::new("chmod")
        .arg("777")
        .arg(&ws.dir)
        .status()
        .expect("chmod");
    let mut c = Command::new(setpriv);
    c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(&copy)
        .args([
            "run",
            "--headless",
            "--policy",
            "preset:sandboxed",
            "--audit",
        ])
        .arg(ws.dir.join("audit.jsonl"))
        .args(["--", "true"])
        .current_dir(&ws.dir)
        .env("HOME", &ws.dir)
        .no_ci()
        .stdin(Stdio::null());
    let session = run_with_timeout(c, LIMIT);
    assert!(!session.timed_out, "{session:?}");
    if session.code == Some(0) {
        assert_same_weaknesses(&session.stderr, &j);
    } else {
        // The session could not start: doctor must have said why.
        assert!(
            j["user_namespaces"]["works"] == false || j["seccomp"]["listener"]["works"] == false,
            "run failed ({session:?}) but doctor saw nothing missing: {j}"
        );
    }
    assert_eq!(j["root"], false);
    assert_eq!(j["euid"], 65534);
    // Without root the sandbox cannot set vm.memfd_noexec: doctor says so, and exits 1.
    if !j["memfd_noexec"]["sysctl"].is_null() {
        assert_eq!(j["memfd_noexec"]["settable_in_sandbox"]["works"], false);
        assert!(
            j["weaker"]
                .as_array()
                .expect("weaker")
                .iter()
                .any(|w| w.as_str().is_some_and(|w| w.contains("memfd_noexec"))),
            "{j}"
        );
        assert_eq!(r.code, Some(1), "{r:?}");
    }
    // BPF needs CAP_BPF unless unprivileged BPF is enabled: doctor's loads follow the sysctl.
    let unprivileged_bpf = std::fs::read_to_string("/proc/sys/kernel/unprivileged_bpf_disabled")
        .map(|s| s.trim() == "0")
        .unwrap_or(false);
    if !unprivileged_bpf {
        for p in j["bpf_programs"].as_array().expect("bpf_programs") {
            assert_eq!(p["works"], false, "{p}");
        }
    }
}

#[test]
fn policy_is_looked_up_like_run_does() {
    // No policy anywhere we control: `run` and `doctor` must pick the same one (the built-in
    // preset, or /etc/agent-supervisor/policy.toml when the machine has one).
    let ws = Workspace::new("doctor-lookup");
    let home = ws.dir.parent().expect("base").join("home");
    std::fs::create_dir_all(&home).expect("home");
    let env = |c: &mut Command| {
        c.current_dir(&ws.dir)
            .env("HOME", &home)
            .env_remove("XDG_CONFIG_HOME")
            .no_ci()
            .stdin(Stdio::null());
    };
    let mut c = common::supervisor_command();
    c.args(["doctor", "--json"]);
    env(&mut c);
    let d = run_with_timeout(c, LIMIT);
    let j: Value = serde_json::from_str(&d.stdout).unwrap_or_else(|e| panic!("{e}: {d:?}"));
    let mut c = common::supervisor_command();
    c.args(["run", "--headless", "--audit"])
        .arg(&ws.audit)
        .args(["--", "true"]);
    env(&mut c);
    let r = run_with_timeout(c, LIMIT);
    assert!(!r.timed_out, "{r:?}");
    let source = j["policy"]["source"].as_str().expect("source");
    assert!(
        r.stderr.contains(&format!("policy {source},")),
        "doctor used {source}; run said: {}",
        r.stderr
    );
}

#[test]
fn bad_policy_is_an_internal_error_and_help_has_an_example() {
    let r = cli_in(&tmp(), &["doctor", "--policy", "/nonexistent/policy.toml"]);
    assert_eq!(r.code, Some(125), "{r:?}");
    assert!(r.stderr.contains("/nonexistent/policy.toml"), "{r:?}");
    let h = cli_in(&tmp(), &["doctor", "--help"]);
    assert_eq!(h.code, Some(0));
    assert!(
        h.stdout.contains("Examples:") && h.stdout.contains("agent-supervisor doctor --policy"),
        "{}",
        h.stdout
    );
}
