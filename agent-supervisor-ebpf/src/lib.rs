//! Empty library target: it exists so `agent-supervisor` can list this crate as a
//! build-dependency, which makes cargo rebuild the embedded eBPF object when this crate or
//! `agent-supervisor-common` changes. The programs are in `main.rs`.
#![no_std]
