//! `agent-supervisor daemon`: the supervisor as a service (see docs/daemon.md).
pub mod proto {
    //! Generated from `proto/agent_supervisor/v1/supervisor.proto`.
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("agent_supervisor.v1");

    /// For server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("agent_supervisor_v1_descriptor");
}
