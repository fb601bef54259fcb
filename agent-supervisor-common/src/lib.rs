//! `#[repr(C)]` types shared by the eBPF programs (`agent-supervisor-ebpf`) and the supervisor.
//! `no_std` so the eBPF crate can use it; the `user` feature adds `aya::Pod` impls.
#![no_std]
