//! Run a whole campaign from Rust, with a progress callback of your own.
//!
//! Loads `campaigns/text/campaign.toml`, starts a local sandbox, and sends the
//! campaign to it, printing a line from the callback as it goes:
//!
//! ```sh
//! cargo run --example run_campaign
//! ```

use std::sync::atomic::{AtomicU64, Ordering};

use convers8_campaign::api::{ApiKey, ClientConfig};
use convers8_campaign::campaign::Campaign;
use convers8_campaign::engine::progress::Callback;
use convers8_campaign::engine::{self, RunEnd, RunOptions, Snapshot, Stop};
use convers8_campaign::sandbox::{Sandbox, SandboxConfig};
use convers8_campaign::state::StateLocation;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let campaign = Campaign::load("campaigns/text/campaign.toml".as_ref())?;
    let sandbox = Sandbox::start(SandboxConfig::default(), "127.0.0.1:0".parse()?).await?;
    let key = ApiKey::new(SandboxConfig::default().api_key, "the sandbox")?;

    // A throwaway state file: rerunning the example starts over.
    let dir = tempfile::tempdir()?;
    let api = ClientConfig::new(sandbox.base_url(), key);
    let options = RunOptions::from_campaign(
        &campaign,
        StateLocation::File(dir.path().join("example.state.db")),
        Some(api),
    );

    // Called a few times a second; print only when something changed.
    let last = AtomicU64::new(u64::MAX);
    let progress = Callback(|s: &Snapshot| {
        if last.swap(s.settled(), Ordering::Relaxed) != s.settled() {
            println!("{}/{} settled, {} sent", s.settled(), s.to_send, s.sent);
        }
    });

    // Ctrl-C stops claiming, lets the requests in flight finish and records them.
    let stop = Stop::when(async {
        let _ = tokio::signal::ctrl_c().await;
    });
    let report = engine::run(&campaign, &options, &progress, stop).await?;
    assert_eq!(report.end, RunEnd::Completed);
    println!(
        "done: {} sent, {} invalid, {} duplicate; the sandbox accepted {}",
        report.counts.sent,
        report.counts.invalid,
        report.counts.duplicate,
        sandbox.messages().len()
    );
    sandbox.shutdown().await;
    Ok(())
}
