//! `mcprom demo`.
use std::time::Duration;
/// Run the demo.
pub async fn run(_duration: Option<Duration>) -> anyhow::Result<()> {
    anyhow::bail!("the demo needs the simulator")
}
