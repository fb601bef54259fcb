//! Struct field offsets of the running kernel, read from its BTF (`/sys/kernel/btf/vmlinux`,
//! Linux 5.4+ with `CONFIG_DEBUG_INFO_BTF`).
//!
//! The process programs read `linux_binprm`, `file`, `inode`, `super_block`, `task_struct` and
//! `pid` fields with `bpf_probe_read_kernel`. rustc emits no CO-RE relocations, so the loader
//! can't fix their offsets up: the supervisor finds each field here and passes the offsets to
//! the programs as the read-only global `KERNEL_OFFSETS`. A field that is missing, or whose
//! size is not the one the programs read, is an error: the process programs are then not
//! attached (never run with a guessed layout).
//!
//! aya-obj has a BTF parser, but its struct members are private to it; this one only walks the
//! type section, keeping structs, unions, typedefs, pointers, arrays and ints. Format:
//! <https://docs.kernel.org/bpf/btf.html>.
#![forbid(unsafe_code)]

use std::collections::HashMap;

use agent_supervisor_common::{KernelOffsets, TreeOffsets};

const MAGIC: u16 = 0xeb9f;
const HEADER_LEN: usize = 24;

const KIND_INT: u32 = 1;
const KIND_PTR: u32 = 2;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

/// Why the offsets could not be found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OffsetsError {
    #[error(
        "reading /sys/kernel/btf/vmlinux (needs a kernel built with CONFIG_DEBUG_INFO_BTF): {0}"
    )]
    Read(String),
    #[error("the kernel's BTF is malformed: {0}")]
    Malformed(&'static str),
    #[error("the kernel's BTF has no struct {0}")]
    NoStruct(String),
    #[error("the kernel's struct {0} has no field {1}")]
    NoField(String, String),
    #[error("struct {0} field {1} is {2} bytes here, the programs read {3}")]
    Size(String, String, usize, usize),
    #[error("the kernel's tracepoint {0} does not have the arguments the programs expect")]
    Tracepoint(&'static str),
}

#[derive(Debug, Clone)]
struct Member {
    name: String,
    ty: u32,
    /// Byte offset (bitfields are refused when looked up).
    bit_offset: u32,
}

#[derive(Debug, Clone)]
struct Type {
    kind: u32,
    name: String,
    /// Size (int, struct, union, enum) or the referenced type id (ptr, typedef, ...).
    size_or_type: u32,
    members: Vec<Member>,
    /// Array: (element type, number of elements).
    array: Option<(u32, u32)>,
    /// FUNC_PROTO: parameter types.
    params: Vec<u32>,
}

/// The types of one BTF blob, by id (id 0 is `void`).
pub struct KernelBtf {
    types: Vec<Type>,
    structs: HashMap<String, u32>,
    typedefs: HashMap<String, u32>,
}

fn u32_at(data: &[u8], off: usize) -> Result<u32, OffsetsError> {
    data.get(off..off + 4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or(OffsetsError::Malformed("truncated"))
}

impl KernelBtf {
    /// Parse the running kernel's BTF.
    pub fn from_sys_fs() -> Result<KernelBtf, OffsetsError> {
        let data = std::fs::read("/sys/kernel/btf/vmlinux")
            .map_err(|e| OffsetsError::Read(e.to_string()))?;
        Self::parse(&data)
    }

    /// Parse a little-endian BTF blob.
    pub fn parse(data: &[u8]) -> Result<KernelBtf, OffsetsError> {
        if data.len() < HEADER_LEN || u16::from_le_bytes([data[0], data[1]]) != MAGIC {
            return Err(OffsetsError::Malformed("bad magic"));
        }
        let hdr_len = u32_at(data, 4)? as usize;
        let (type_off, type_len) = (u32_at(data, 8)? as usize, u32_at(data, 12)? as usize);
        let (str_off, str_len) = (u32_at(data, 16)? as usize, u32_at(data, 20)? as usize);
        let section = |off: usize, len: usize| {
            data.get(hdr_len + off..hdr_len + off + len)
                .ok_or(OffsetsError::Malformed("section out of bounds"))
        };
        let types_data = section(type_off, type_len)?;
        let strings = section(str_off, str_len)?;
        let name_at = |off: u32| -> String {
            let s = strings.get(off as usize..).unwrap_or_default();
            String::from_utf8_lossy(&s[..s.iter().position(|&b| b == 0).unwrap_or(s.len())])
                .into_owned()
        };
        let void = Type {
            kind: 0,
            name: String::new(),
            size_or_type: 0,
            members: Vec::new(),
            array: None,
            params: Vec::new(),
        };
        let mut types = vec![void];
        let mut off = 0usize;
        while off + 12 <= types_data.len() {
            let name_off = u32_at(types_data, off)?;
            let info = u32_at(types_data, off + 4)?;
            let size_or_type = u32_at(types_data, off + 8)?;
            let (kind, vlen, kind_flag) = ((info >> 24) & 0x1f, info & 0xffff, info >> 31 == 1);
            off += 12;
            let mut t = Type {
                kind,
                name: name_at(name_off),
                size_or_type,
                members: Vec::new(),
                array: None,
                params: Vec::new(),
            };
            let extra = match kind {
                KIND_INT => 4,
                KIND_ARRAY => {
                    t.array = Some((u32_at(types_data, off)?, u32_at(types_data, off + 8)?));
                    12
                }
                KIND_STRUCT | KIND_UNION => {
                    for i in 0..vlen as usize {
                        let m = off + 12 * i;
                        let raw = u32_at(types_data, m + 8)?;
                        t.members.push(Member {
                            name: name_at(u32_at(types_data, m)?),
                            ty: u32_at(types_data, m + 4)?,
                            bit_offset: if kind_flag { raw & 0xff_ffff } else { raw },
                        });
                    }
                    12 * vlen as usize
                }
                KIND_ENUM => 8 * vlen as usize,
                KIND_FUNC_PROTO => {
                    for i in 0..vlen as usize {
                        t.params.push(u32_at(types_data, off + 8 * i + 4)?);
                    }
                    8 * vlen as usize
                }
                // DATASEC, ENUM64
                15 | KIND_ENUM64 => 12 * vlen as usize,
                // VAR, DECL_TAG
                14 | 17 => 4,
                // PTR, FWD, TYPEDEF, VOLATILE, CONST, RESTRICT, FUNC, FLOAT, TYPE_TAG
                2 | 7 | 8 | 9 | 10 | 11 | 12 | 16 | 18 => 0,
                _ => return Err(OffsetsError::Malformed("unknown type kind")),
            };
            off += extra;
            types.push(t);
        }
        let mut structs = HashMap::new();
        let mut typedefs = HashMap::new();
        for (id, t) in types.iter().enumerate() {
            // The first complete definition wins (forward declarations are FWD, not STRUCT).
            if t.kind == KIND_STRUCT && !t.name.is_empty() {
                structs.entry(t.name.clone()).or_insert(id as u32);
            }
            if t.kind == KIND_TYPEDEF {
                typedefs.entry(t.name.clone()).or_insert(id as u32);
            }
        }
        Ok(KernelBtf {
            types,
            structs,
            typedefs,
        })
    }

    fn ty(&self, id: u32) -> Result<&Type, OffsetsError> {
        self.types
            .get(id as usize)
            .ok_or(OffsetsError::Malformed("type id out of range"))
    }

    /// `id` with typedefs and qualifiers stripped.
    fn resolve(&self, mut id: u32) -> Result<&Type, OffsetsError> {
        for _ in 0..32 {
            let t = self.ty(id)?;
            match t.kind {
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    id = t.size_or_type
                }
                _ => return Ok(t),
            }
        }
        Err(OffsetsError::Malformed("typedef loop"))
    }

    fn size_of(&self, id: u32) -> Result<usize, OffsetsError> {
        let t = self.resolve(id)?;
        Ok(match t.kind {
            KIND_PTR => 8,
            KIND_ARRAY => {
                let (elem, n) = t.array.expect("array");
                self.size_of(elem)? * n as usize
            }
            _ => t.size_or_type as usize,
        })
    }

    /// The id of the type of `kind` (`BTF_KIND_*`) named `name`, e.g. the FUNC an LSM program
    /// attaches to (`attach_btf_id`).
    pub fn type_id(&self, kind: u32, name: &str) -> Option<u32> {
        self.types
            .iter()
            .position(|t| t.kind == kind && t.name == name)
            .map(|i| i as u32)
    }

    /// Size of `struct name`.
    pub fn struct_size(&self, name: &str) -> Result<u32, OffsetsError> {
        let id = *self
            .structs
            .get(name)
            .ok_or_else(|| OffsetsError::NoStruct(name.into()))?;
        Ok(self.ty(id)?.size_or_type)
    }

    /// Byte offset and type of `field` in struct/union `id`, looking into anonymous members.
    fn find_field(&self, id: u32, field: &str) -> Result<Option<(u32, u32)>, OffsetsError> {
        let t = self.resolve(id)?;
        for m in &t.members {
            if m.name == field {
                return Ok(Some((m.bit_offset, m.ty)));
            }
            if m.name.is_empty() {
                let inner = self.resolve(m.ty)?;
                if matches!(inner.kind, KIND_STRUCT | KIND_UNION) {
                    if let Some((off, ty)) = self.find_field(m.ty, field)? {
                        return Ok(Some((m.bit_offset + off, ty)));
                    }
                }
            }
        }
        Ok(None)
    }

    /// Byte offset of `strukt.field`, checking that the field is `size` bytes (`None`: any
    /// size, for flexible arrays).
    pub fn offset(
        &self,
        strukt: &str,
        field: &str,
        size: Option<usize>,
    ) -> Result<u32, OffsetsError> {
        let id = *self
            .structs
            .get(strukt)
            .ok_or_else(|| OffsetsError::NoStruct(strukt.into()))?;
        let no_field = || OffsetsError::NoField(strukt.into(), field.into());
        let (bits, ty) = self.find_field(id, field)?.ok_or_else(no_field)?;
        if bits % 8 != 0 {
            return Err(no_field());
        }
        if let Some(want) = size {
            let have = self.size_of(ty)?;
            if have != want {
                return Err(OffsetsError::Size(strukt.into(), field.into(), have, want));
            }
        }
        Ok(bits / 8)
    }

    /// The parameter types of tracepoint `name` (`btf_trace_<name>`: a pointer to a function
    /// whose first parameter is the tracepoint's private data), resolved to the struct names
    /// they point at (`""` for anything that is not a pointer to a struct).
    fn tracepoint_params(&self, name: &str) -> Option<Vec<String>> {
        let id = *self.typedefs.get(&format!("btf_trace_{name}"))?;
        let ptr = self.ty(self.ty(id).ok()?.size_or_type).ok()?;
        let proto = self.ty(ptr.size_or_type).ok()?;
        if ptr.kind != KIND_PTR || proto.kind != KIND_FUNC_PROTO {
            return None;
        }
        Some(
            proto
                .params
                .iter()
                .skip(1)
                .map(|&p| {
                    self.resolve(p)
                        .ok()
                        .filter(|t| t.kind == KIND_PTR)
                        .and_then(|t| self.resolve(t.size_or_type).ok())
                        .filter(|t| t.kind == KIND_STRUCT)
                        .map(|t| t.name.clone())
                        .unwrap_or_default()
                })
                .collect(),
        )
    }

    /// Check that the three tracepoints pass what the programs read: `sched_process_exec(task,
    /// pid, bprm)`, `sched_process_fork(parent, child)`, `sched_process_exit(task, ...)`.
    pub fn check_tracepoints(&self) -> Result<(), OffsetsError> {
        let is = |name: &'static str, want: &[&str]| {
            let params = self
                .tracepoint_params(name)
                .ok_or(OffsetsError::Tracepoint(name))?;
            let ok = params.len() >= want.len()
                && params.iter().zip(want).all(|(have, want)| have == want);
            ok.then_some(()).ok_or(OffsetsError::Tracepoint(name))
        };
        is("sched_process_exec", &["task_struct", "", "linux_binprm"])?;
        is("sched_process_fork", &["task_struct", "task_struct"])?;
        is("sched_process_exit", &["task_struct"])
    }

    /// Every offset the process programs need.
    pub fn process_offsets(&self) -> Result<KernelOffsets, OffsetsError> {
        const PTR: Option<usize> = Some(8);
        Ok(KernelOffsets {
            binprm_file: self.offset("linux_binprm", "file", PTR)?,
            binprm_filename: self.offset("linux_binprm", "filename", PTR)?,
            file_inode: self.offset("file", "f_inode", PTR)?,
            inode_ino: self.offset("inode", "i_ino", Some(8))?,
            inode_sb: self.offset("inode", "i_sb", PTR)?,
            sb_dev: self.offset("super_block", "s_dev", Some(4))?,
            task_pid: self.offset("task_struct", "pid", Some(4))?,
            task_tgid: self.offset("task_struct", "tgid", Some(4))?,
            task_real_parent: self.offset("task_struct", "real_parent", PTR)?,
            task_exit_code: self.offset("task_struct", "exit_code", Some(4))?,
            task_comm: self.offset("task_struct", "comm", Some(16))?,
            task_thread_pid: self.offset("task_struct", "thread_pid", PTR)?,
            pid_level: self.offset("pid", "level", Some(4))?,
            pid_numbers: self.offset("pid", "numbers", None)?,
            upid_nr: self.offset("upid", "nr", Some(4))?,
            upid_size: self.struct_size("upid")?,
            file_mode: self.offset("file", "f_mode", Some(4))?,
            file_dentry: self.offset("file", "f_path", Some(16))?
                + self.offset("path", "dentry", PTR)?,
            dentry_name: self.offset("dentry", "d_name", None)?
                + self.offset("qstr", "name", PTR)?,
            inode_nlink: self.offset("inode", "i_nlink", Some(4))?,
        })
    }
}

impl KernelBtf {
    /// The `dentry` fields `lsm/file_open`'s tree walk reads.
    pub fn tree_offsets(&self) -> Result<TreeOffsets, OffsetsError> {
        Ok(TreeOffsets {
            dentry_parent: self.offset("dentry", "d_parent", Some(8))?,
            dentry_inode: self.offset("dentry", "d_inode", Some(8))?,
        })
    }
}

/// The offsets for the running kernel, its tracepoints checked. Reading them from the
/// kernel's BTF (several MB) is most of a session's eBPF start-up, so they are kept for the
/// rest of the boot in the state directory ([`OffsetsCache`]).
pub fn running_kernel_offsets() -> Result<KernelOffsets, OffsetsError> {
    let cache = OffsetsCache::for_this_boot(&crate::trust::state_dir(crate::sys::euid_egid().0));
    if let Some(offsets) = cache.as_ref().and_then(OffsetsCache::read) {
        return Ok(offsets);
    }
    let btf = KernelBtf::from_sys_fs()?;
    btf.check_tracepoints()?;
    let offsets = btf.process_offsets()?;
    if let Some(cache) = &cache {
        cache.write(&offsets);
    }
    Ok(offsets)
}

/// The running kernel's offsets, kept in `<state dir>/kernel-offsets` for one boot: the file
/// holds the boot id and kernel release it was read for (any other boot ignores it) and the
/// offsets. The state directory is the supervisor's own (root's: `/var/lib/agent-supervisor`)
/// and read-only inside every sandbox, like the trust store.
pub struct OffsetsCache {
    path: std::path::PathBuf,
    key: String,
}

impl OffsetsCache {
    /// The cache for this boot, None when the boot id or release can't be read.
    pub fn for_this_boot(state_dir: &std::path::Path) -> Option<OffsetsCache> {
        let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").ok()?;
        Some(OffsetsCache {
            path: state_dir.join("kernel-offsets"),
            key: format!("v1 {} {}", boot_id.trim(), release.trim()),
        })
    }

    /// The cached offsets, when the file is this boot's and well-formed.
    pub fn read(&self) -> Option<KernelOffsets> {
        let text = std::fs::read_to_string(&self.path).ok()?;
        let mut lines = text.lines();
        let (key, values, sum) = (lines.next()?, lines.next()?, lines.next()?);
        if key != self.key || sum != Self::checksum(key, values) || lines.next().is_some() {
            return None;
        }
        let values: Vec<u32> = values
            .split(',')
            .map(|v| v.parse().ok())
            .collect::<Option<_>>()?;
        Some(KernelOffsets::from_array(values.try_into().ok()?))
    }

    /// SHA-256 of the key and values lines: a damaged file is not used.
    fn checksum(key: &str, values: &str) -> String {
        use sha2::Digest as _;
        let digest = sha2::Sha256::digest(format!("{key}\n{values}"));
        digest.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Keep `offsets` for this boot (written to a temporary file, then renamed: a reader never
    /// sees half a file). Failing to write only costs the next session the BTF read.
    pub fn write(&self, offsets: &KernelOffsets) {
        let values: Vec<String> = offsets.to_array().iter().map(u32::to_string).collect();
        let values = values.join(",");
        let sum = Self::checksum(&self.key, &values);
        let text = format!("{}\n{values}\n{sum}\n", self.key);
        let tmp = self
            .path
            .with_extension(format!("tmp{}", std::process::id()));
        let written = self
            .path
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| std::fs::write(&tmp, text))
            .and_then(|()| std::fs::rename(&tmp, &self.path));
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            tracing::debug!(
                "cannot cache the kernel offsets in {}: {e}",
                self.path.display()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A BTF blob: 1 INT "int" (4), 2 PTR → 3, 3 STRUCT "inner" {a: int @0},
    /// 4 STRUCT "outer" {x: int @0, <anon> union 5 @64, p: ptr @128}, 5 UNION {y: int, b: int}.
    fn blob() -> Vec<u8> {
        let strings = b"\0int\0inner\0a\0outer\0x\0p\0y\0b\0";
        let s = |name: &str| -> u32 {
            let needle = format!("\0{name}\0");
            strings
                .windows(needle.len())
                .position(|w| w == needle.as_bytes())
                .expect("string") as u32
                + 1
        };
        let mut types = Vec::new();
        let mut ty = |name: u32, kind: u32, vlen: u32, size: u32, extra: &[u32]| {
            types.extend_from_slice(&name.to_le_bytes());
            types.extend_from_slice(&((kind << 24) | vlen).to_le_bytes());
            types.extend_from_slice(&size.to_le_bytes());
            for e in extra {
                types.extend_from_slice(&e.to_le_bytes());
            }
        };
        ty(s("int"), KIND_INT, 0, 4, &[32]);
        ty(0, KIND_PTR, 0, 3, &[]);
        ty(s("inner"), KIND_STRUCT, 1, 4, &[s("a"), 1, 0]);
        ty(
            s("outer"),
            KIND_STRUCT,
            3,
            24,
            &[s("x"), 1, 0, 0, 5, 64, s("p"), 2, 128],
        );
        ty(0, KIND_UNION, 2, 4, &[s("y"), 1, 0, s("b"), 1, 0]);
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
    fn finds_fields_including_inside_anonymous_unions_and_checks_sizes() {
        let btf = KernelBtf::parse(&blob()).expect("parses");
        assert_eq!(btf.offset("outer", "x", Some(4)), Ok(0));
        assert_eq!(btf.offset("outer", "b", Some(4)), Ok(8));
        assert_eq!(btf.offset("outer", "p", Some(8)), Ok(16));
        assert_eq!(btf.struct_size("inner"), Ok(4));
        assert!(matches!(
            btf.offset("outer", "x", Some(8)),
            Err(OffsetsError::Size(..))
        ));
        assert!(matches!(
            btf.offset("outer", "nope", None),
            Err(OffsetsError::NoField(..))
        ));
        assert!(matches!(
            btf.offset("nope", "x", None),
            Err(OffsetsError::NoStruct(..))
        ));
    }

    #[test]
    fn offsets_are_cached_for_this_boot_only() {
        let dir = std::env::temp_dir().join(format!("as-offsets-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let Some(cache) = OffsetsCache::for_this_boot(&dir) else {
            panic!("no boot id or release in /proc");
        };
        assert_eq!(cache.read(), None, "nothing cached yet");
        let offsets = KernelOffsets::from_array(core::array::from_fn(|i| i as u32 * 8 + 1));
        cache.write(&offsets);
        assert_eq!(cache.read(), Some(offsets));
        // Another boot (or kernel) does not use it.
        let other = OffsetsCache {
            path: cache.path.clone(),
            key: "v1 another-boot 6.1.0".into(),
        };
        assert_eq!(other.read(), None);
        // A damaged file is ignored, not trusted.
        let text = std::fs::read_to_string(&cache.path).unwrap();
        std::fs::write(&cache.path, text.replace(",", ",x")).unwrap();
        assert_eq!(cache.read(), None);
        let lines: Vec<&str> = text.lines().collect();
        let shorter = lines[1]
            .trim_end_matches(|c: char| c.is_ascii_digit())
            .to_string()
            + "1";
        std::fs::write(
            &cache.path,
            format!("{}\n{shorter}\n{}\n", lines[0], lines[2]),
        )
        .unwrap();
        assert_eq!(cache.read(), None, "a changed value");
        std::fs::write(&cache.path, format!("{}\n{}\n", lines[0], lines[1])).unwrap();
        assert_eq!(cache.read(), None, "no checksum");
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// The running kernel has every field and tracepoint the programs use (skipped without
    /// kernel BTF).
    #[test]
    fn the_running_kernel_has_what_the_process_programs_read() {
        let btf = match KernelBtf::from_sys_fs() {
            Ok(btf) => btf,
            Err(e) => {
                eprintln!("skipping: {e}");
                return;
            }
        };
        btf.check_tracepoints().expect("tracepoint arguments");
        let o = btf.process_offsets().expect("offsets");
        assert!(
            o.task_tgid > 0 && o.task_comm > 0 && o.upid_size >= 8,
            "{o:?}"
        );
        assert_eq!(o.binprm_file % 8, 0);
        assert!(
            o.file_mode > 0 && o.file_dentry > 0 && o.inode_nlink > 0,
            "{o:?}"
        );
        assert_eq!(o.dentry_name % 8, 0);
        let t = btf.tree_offsets().expect("dentry offsets");
        assert!(t.dentry_parent > 0 && t.dentry_inode > 0, "{t:?}");
        assert_ne!(t.dentry_parent, t.dentry_inode);
    }
}
