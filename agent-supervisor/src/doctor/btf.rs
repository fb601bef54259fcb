//! Finding a type id in the running kernel's BTF (`/sys/kernel/btf/vmlinux`, Linux 5.4+).
//!
//! The doctor's LSM and `tp_btf` load probes must name their hook by BTF type id
//! (`attach_btf_id`): the `FUNC` `bpf_lsm_file_open`, the `TYPEDEF`
//! `btf_trace_sched_process_exec`. This is the smallest parser that finds them: it walks the
//! type section once, knowing only each kind's size. Format:
//! <https://docs.kernel.org/bpf/btf.html>.
#![forbid(unsafe_code)]

/// `BTF_KIND_TYPEDEF`.
pub const KIND_TYPEDEF: u32 = 8;
/// `BTF_KIND_FUNC`.
pub const KIND_FUNC: u32 = 12;

const MAGIC: u16 = 0xeb9f;
const HEADER_LEN: usize = 24;
const TYPE_LEN: usize = 12;

/// Why a BTF blob could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BtfError {
    #[error("not BTF (bad magic or header)")]
    BadHeader,
    #[error("BTF type {id} has unknown kind {kind}")]
    UnknownKind { id: u32, kind: u32 },
    #[error("BTF is truncated")]
    Truncated,
}

fn u32_at(data: &[u8], off: usize) -> Result<u32, BtfError> {
    data.get(off..off + 4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or(BtfError::Truncated)
}

/// Bytes that follow the 12-byte common header of a type of `kind` with `vlen` members.
fn extra_len(kind: u32, vlen: usize) -> Option<usize> {
    Some(match kind {
        // INT
        1 => 4,
        // PTR, FWD, TYPEDEF, VOLATILE, CONST, RESTRICT, FUNC, FLOAT, TYPE_TAG
        2 | 7 | 8 | 9 | 10 | 11 | 12 | 16 | 18 => 0,
        // ARRAY
        3 => 12,
        // STRUCT, UNION, DATASEC, ENUM64
        4 | 5 | 15 | 19 => 12 * vlen,
        // ENUM, FUNC_PROTO
        6 | 13 => 8 * vlen,
        // VAR, DECL_TAG
        14 | 17 => 4,
        _ => return None,
    })
}

/// The type ids of `wanted` (kind, name) pairs in a little-endian BTF blob, in the same order
/// (None where absent). One pass over the types.
pub fn find_ids(data: &[u8], wanted: &[(u32, &str)]) -> Result<Vec<Option<u32>>, BtfError> {
    if data.len() < HEADER_LEN || u16::from_le_bytes([data[0], data[1]]) != MAGIC {
        return Err(BtfError::BadHeader);
    }
    let hdr_len = u32_at(data, 4)? as usize;
    let (type_off, type_len) = (u32_at(data, 8)? as usize, u32_at(data, 12)? as usize);
    let (str_off, str_len) = (u32_at(data, 16)? as usize, u32_at(data, 20)? as usize);
    let types = data
        .get(hdr_len + type_off..hdr_len + type_off + type_len)
        .ok_or(BtfError::Truncated)?;
    let strings = data
        .get(hdr_len + str_off..hdr_len + str_off + str_len)
        .ok_or(BtfError::Truncated)?;
    let name_at = |off: usize| -> &[u8] {
        let s = strings.get(off..).unwrap_or_default();
        &s[..s.iter().position(|&b| b == 0).unwrap_or(s.len())]
    };
    let mut found = vec![None; wanted.len()];
    let (mut off, mut id) = (0usize, 1u32);
    while off + TYPE_LEN <= types.len() {
        let name_off = u32_at(types, off)? as usize;
        let info = u32_at(types, off + 4)?;
        let (kind, vlen) = ((info >> 24) & 0x1f, (info & 0xffff) as usize);
        for (slot, (want_kind, want_name)) in found.iter_mut().zip(wanted) {
            if slot.is_none() && kind == *want_kind && name_at(name_off) == want_name.as_bytes() {
                *slot = Some(id);
            }
        }
        let extra = extra_len(kind, vlen).ok_or(BtfError::UnknownKind { id, kind })?;
        off += TYPE_LEN + extra;
        id += 1;
    }
    Ok(found)
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
        out.extend_from_slice(&MAGIC.to_le_bytes());
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
        assert_eq!(
            find_ids(b"not btf at all, not at all", &[]),
            Err(BtfError::BadHeader)
        );
        let mut cut = blob();
        cut.truncate(40);
        assert_eq!(find_ids(&cut, &[]), Err(BtfError::Truncated));
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
