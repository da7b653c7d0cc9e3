//! Running machines: QEMU command lines from one typed spec, the running
//! process with its captured console, QMP, the guest agent and process
//! control, on a tokio runtime behind a blocking façade; and the PVH kernel
//! QEMU boots fastest.

pub mod console;
pub mod machine;
pub mod process;
pub mod pvh;
pub mod qemu;
pub mod qga;
pub mod qmp;
pub mod runtime;
