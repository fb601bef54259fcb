//! Finding a type id in the running kernel's BTF (`/sys/kernel/btf/vmlinux`, Linux 5.4+).
//!
//! The doctor's LSM and `tp_btf` load probes must name their hook by BTF type id
//! (`attach_btf_id`): the `FUNC` `bpf_lsm_file_open`, the `TYPEDEF`
//! `btf_trace_sched_process_exec`. The BTF is read by the same parser the eBPF loader uses for
//! its struct offsets ([`crate::ebpf::kernel_btf`]). Format:
//! <https://docs.kernel.org/bpf/btf.html>.
#![forbid(unsafe_code)]

use crate::ebpf::kernel_btf::{KernelBtf, OffsetsError};

/// `BTF_KIND_TYPEDEF`.
pub const KIND_TYPEDEF: u32 = 8;
/// `BTF_KIND_FUNC`.
pub const KIND_FUNC: u32 = 12;

/// Why a BTF blob could not be read.
pub type BtfError = OffsetsError;

/// The type ids of `wanted` (kind, name) pairs in a little-endian BTF blob, in the same order
/// (None where absent).
pub fn find_ids(data: &[u8], wanted: &[(u32, &str)]) -> Result<Vec<Option<u32>>, BtfError> {
    let btf = KernelBtf::parse(data)?;
    Ok(wanted
        .iter()
        .map(|&(kind, name)| btf.type_id(kind, name))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A BTF blob with: 1 INT "int", 2 FUNC_PROTO (1 param), 3 FUNC "f", 4 TYPEDEF "t".
    fn blob() -> Vec<u8> {
        let strings = b"\0int\0f\0t\0";
        let mut types = Vec::new();
        let mut ty = |name: u32, kind: u32, vlen: u32, size: u32, extra: &[u8]| {
            types.extend_from_slice(&name.to_le_bytes());
            types.extend_from_slice(&((kind << 24) | vlen).to_le_bytes());
            types.extend_from_slice(&size.to_le_bytes());
            types.extend_from_slice(extra);
        };
        ty(1, 1, 0, 4, &[0, 0, 0, 32]);
        ty(0, 13, 1, 1, &[0; 8]);
        ty(5, KIND_FUNC, 0, 2, &[]);
        ty(7, KIND_TYPEDEF, 0, 1, &[]);
        let mut out = Vec::new();
        out.extend_from_slice(&0xeb9f_u16.to_le_bytes());
        out.extend_from_slice(&[1, 0]);
        for v in [
            24u32,
            0,
            types.len() as u32,
            types.len() as u32,
            strings.len() as u32,
        ] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(&types);
        out.extend_from_slice(strings);
        out
    }

    #[test]
    fn finds_functions_and_typedefs_by_kind_and_name() {
        let ids = find_ids(
            &blob(),
            &[
                (KIND_FUNC, "f"),
                (KIND_TYPEDEF, "t"),
                (KIND_FUNC, "t"),
                (KIND_FUNC, "nope"),
            ],
        )
        .expect("parses");
        assert_eq!(ids, vec![Some(3), Some(4), None, None]);
    }

    #[test]
    fn refuses_what_is_not_btf() {
        assert!(find_ids(b"not btf at all, not at all", &[]).is_err());
        let mut cut = blob();
        cut.truncate(40);
        assert!(find_ids(&cut, &[]).is_err());
    }

    /// Privileged-free check against the running kernel: its BTF parses to the end (every kind
    /// known) and has the FUNC that LSM programs attach to whenever BPF LSM is built in.
    #[test]
    fn the_running_kernels_btf_parses() {
        let Ok(data) = std::fs::read("/sys/kernel/btf/vmlinux") else {
            eprintln!("skipping: /sys/kernel/btf/vmlinux is not readable (kernel without BTF)");
            return;
        };
        let ids = find_ids(&data, &[(KIND_FUNC, "bpf_lsm_file_open")]).expect("vmlinux BTF");
        eprintln!("bpf_lsm_file_open: {:?}", ids[0]);
    }
}
