//! S7–S12: faults under I/O.

use anyhow::Result;

use super::Ctx;

pub fn s7_initiator_link_cut(_ctx: &mut Ctx) -> Result<()> {
    anyhow::bail!("todo")
}
pub fn s8_target_link_cut(_ctx: &mut Ctx) -> Result<()> {
    anyhow::bail!("todo")
}
pub fn s9_throughput(_ctx: &mut Ctx) -> Result<()> {
    anyhow::bail!("todo")
}
pub fn s10_all_paths_down(_ctx: &mut Ctx) -> Result<()> {
    anyhow::bail!("todo")
}
pub fn s11_target_restart(_ctx: &mut Ctx) -> Result<()> {
    anyhow::bail!("todo")
}
pub fn s12_link_flapping(_ctx: &mut Ctx) -> Result<()> {
    anyhow::bail!("todo")
}
