//! S13–S14.

use anyhow::Result;

use super::Ctx;

pub fn s13_access_control(_ctx: &mut Ctx) -> Result<()> {
    anyhow::bail!("todo")
}
pub fn s14_reboot(_ctx: &mut Ctx) -> Result<()> {
    anyhow::bail!("todo")
}
