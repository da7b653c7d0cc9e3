//! S1–S5: the cluster as the article builds it by hand.

use anyhow::Result;

use super::Ctx;

pub fn s1_storage_up(_ctx: &mut Ctx) -> Result<()> {
    anyhow::bail!("todo")
}
pub fn s2_discovery(_ctx: &mut Ctx) -> Result<()> {
    anyhow::bail!("todo")
}
pub fn s3_login(_ctx: &mut Ctx) -> Result<()> {
    anyhow::bail!("todo")
}
pub fn s4_multipath(_ctx: &mut Ctx) -> Result<()> {
    anyhow::bail!("todo")
}
pub fn s5_bridge(_ctx: &mut Ctx) -> Result<()> {
    anyhow::bail!("todo")
}
