//! Running machines: QEMU command lines from one typed spec, QMP, the guest agent and process control.

pub mod qemu;
pub mod qga;
pub mod qmp;
