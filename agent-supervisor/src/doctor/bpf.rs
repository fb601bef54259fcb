//! Which BPF program types the kernel LOADS, proven with `bpf(BPF_PROG_LOAD)` of the smallest
//! valid program (`r0 = 0` or `1`; `exit`), with the attach details each type needs.
//!
//! A type that "loads" passed the verifier here; attaching may still need more (tracefs for
//! classic tracepoints, a cgroup v2 directory for `cgroup_sock_addr`, `bpf` in the active LSM
//! list for LSM programs to ever run). Kernel versions: socket filter 3.19, tracepoint 4.7,
//! raw_tracepoint 4.17, cgroup_sock_addr 4.17, tp_btf 5.5, lsm 5.7. Loading needs
//! `CAP_BPF` (or root) unless `kernel.unprivileged_bpf_disabled` is 0.
#![forbid(unsafe_code)]

use serde::Serialize;

use super::btf;
use super::{errno_text, Probe};
use crate::sys::{self, BpfInsn};

const PROG_TYPE_SOCKET_FILTER: u32 = 1;
const PROG_TYPE_TRACEPOINT: u32 = 5;
const PROG_TYPE_RAW_TRACEPOINT: u32 = 17;
const PROG_TYPE_CGROUP_SOCK_ADDR: u32 = 18;
const PROG_TYPE_TRACING: u32 = 26;
const PROG_TYPE_LSM: u32 = 29;
const ATTACH_CGROUP_INET4_CONNECT: u32 = 10;
const ATTACH_TRACE_RAW_TP: u32 = 23;
const ATTACH_LSM_MAC: u32 = 27;

/// The LSM hook the `lsm` probe attaches to (what the file rules would use).
pub const LSM_HOOK: &str = "bpf_lsm_file_open";
/// The tracepoint the `tp_btf` probe attaches to (the exec backstop's).
pub const TP_BTF_HOOK: &str = "btf_trace_sched_process_exec";

/// The result of loading one program type.
#[derive(Debug, Clone, Serialize)]
pub struct ProgramLoad {
    /// `socket_filter`, `tracepoint`, `raw_tracepoint`, `tp_btf`, `cgroup_sock_addr`, `lsm`.
    #[serde(rename = "type")]
    pub prog_type: &'static str,
    /// What it was loaded for (expected attach type, hook).
    pub detail: String,
    /// Loads, or why not.
    #[serde(flatten)]
    pub result: Probe,
    /// The first line of the verifier log of a failed load (`""`: the load failed before the
    /// verifier ran).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verifier_log: Option<String>,
}

impl ProgramLoad {
    /// One line for humans: `loads (connect4)`, `does not load: EPERM (...), empty verifier log`.
    pub fn describe(&self) -> String {
        if self.result.works {
            return format!("loads ({})", self.detail);
        }
        let log = match self.verifier_log.as_deref() {
            Some("") => ", empty verifier log".to_string(),
            Some(l) => format!(", verifier: {l}"),
            None => String::new(),
        };
        format!(
            "does not load: {}{log} ({})",
            self.result.why(),
            self.detail
        )
    }
}

struct Spec {
    name: &'static str,
    prog_type: u32,
    expected_attach_type: u32,
    /// (BTF kind, name) of the hook, for types that attach by BTF id.
    btf_hook: Option<(u32, &'static str)>,
    r0: i32,
    detail: &'static str,
}

const SPECS: &[Spec] = &[
    Spec {
        name: "socket_filter",
        prog_type: PROG_TYPE_SOCKET_FILTER,
        expected_attach_type: 0,
        btf_hook: None,
        r0: 0,
        detail: "socket filter",
    },
    Spec {
        name: "tracepoint",
        prog_type: PROG_TYPE_TRACEPOINT,
        expected_attach_type: 0,
        btf_hook: None,
        r0: 0,
        detail: "perf tracepoint",
    },
    Spec {
        name: "raw_tracepoint",
        prog_type: PROG_TYPE_RAW_TRACEPOINT,
        expected_attach_type: 0,
        btf_hook: None,
        r0: 0,
        detail: "raw tracepoint",
    },
    Spec {
        name: "tp_btf",
        prog_type: PROG_TYPE_TRACING,
        expected_attach_type: ATTACH_TRACE_RAW_TP,
        btf_hook: Some((btf::KIND_TYPEDEF, TP_BTF_HOOK)),
        r0: 0,
        detail: "BPF_TRACE_RAW_TP",
    },
    Spec {
        name: "cgroup_sock_addr",
        prog_type: PROG_TYPE_CGROUP_SOCK_ADDR,
        expected_attach_type: ATTACH_CGROUP_INET4_CONNECT,
        btf_hook: None,
        r0: 1,
        detail: "connect4",
    },
    Spec {
        name: "lsm",
        prog_type: PROG_TYPE_LSM,
        expected_attach_type: ATTACH_LSM_MAC,
        btf_hook: Some((btf::KIND_FUNC, LSM_HOOK)),
        r0: 0,
        detail: "BPF_LSM_MAC",
    },
];

/// Try every program type. Never attaches anything; every loaded program is closed at once.
pub fn probe() -> Vec<ProgramLoad> {
    let hooks: Vec<(u32, &str)> = SPECS.iter().filter_map(|s| s.btf_hook).collect();
    let btf_ids: Result<Vec<Option<u32>>, String> = std::fs::read("/sys/kernel/btf/vmlinux")
        .map_err(|e| format!("/sys/kernel/btf/vmlinux: {e}"))
        .and_then(|data| {
            btf::find_ids(&data, &hooks).map_err(|e| format!("/sys/kernel/btf/vmlinux: {e}"))
        });
    SPECS
        .iter()
        .map(|spec| {
            let btf_id = match spec.btf_hook {
                None => Ok(0),
                Some(hook) => {
                    let index = hooks.iter().position(|h| *h == hook).expect("listed");
                    match &btf_ids {
                        Ok(ids) => ids[index].ok_or_else(|| format!("no BTF type {}", hook.1)),
                        Err(e) => Err(e.clone()),
                    }
                }
            };
            load(spec, btf_id)
        })
        .collect()
}

fn load(spec: &Spec, btf_id: Result<u32, String>) -> ProgramLoad {
    let detail = match (&btf_id, spec.btf_hook) {
        (Ok(id), Some((_, hook))) => format!("{}, BTF id {id} {hook}", spec.detail),
        _ => spec.detail.to_string(),
    };
    let btf_id = match btf_id {
        Ok(id) => id,
        Err(why) => {
            return ProgramLoad {
                prog_type: spec.name,
                detail,
                result: Probe::failed_msg(format!("cannot name the hook: {why}")),
                verifier_log: None,
            }
        }
    };
    // BPF_ALU64 | BPF_MOV | BPF_K (r0 = imm); BPF_JMP | BPF_EXIT.
    let insns = [
        BpfInsn {
            code: 0xb7,
            regs: 0,
            off: 0,
            imm: spec.r0,
        },
        BpfInsn {
            code: 0x95,
            regs: 0,
            off: 0,
            imm: 0,
        },
    ];
    let mut log = vec![0u8; 4096];
    let loaded = sys::bpf_prog_load(
        &sys::BpfProgLoad {
            prog_type: spec.prog_type,
            expected_attach_type: spec.expected_attach_type,
            attach_btf_id: btf_id,
            insns: &insns,
            license: c"GPL",
        },
        &mut log,
    );
    match loaded {
        Ok(fd) => {
            drop(fd);
            ProgramLoad {
                prog_type: spec.name,
                detail,
                result: Probe::works(),
                verifier_log: None,
            }
        }
        Err(e) => {
            let text =
                String::from_utf8_lossy(&log[..log.iter().position(|&b| b == 0).unwrap_or(0)])
                    .lines()
                    .find(|l| !l.trim().is_empty())
                    .unwrap_or_default()
                    .to_string();
            ProgramLoad {
                prog_type: spec.name,
                detail,
                result: Probe {
                    works: false,
                    errno: e.raw_os_error(),
                    error: Some(errno_text(&e)),
                },
                verifier_log: Some(text),
            }
        }
    }
}
