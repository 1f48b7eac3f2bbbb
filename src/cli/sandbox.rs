//! `convers8-campaign sandbox`: flags of the local server, turned into a `SandboxConfig`.
use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct SandboxArgs {}

pub async fn run(_args: SandboxArgs) -> anyhow::Result<ExitCode> {
    Ok(ExitCode::SUCCESS)
}
