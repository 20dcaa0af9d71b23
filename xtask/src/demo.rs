//! `cargo xtask demo`.
use anyhow::Result;
pub fn run() -> Result<()> {
    todo!()
}
