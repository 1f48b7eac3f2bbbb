//! `convers8-campaign sandbox`: flags of the local server, checked and turned
//! into a [`SandboxConfig`], then the server runs until Ctrl-C or SIGTERM.
//! Prints one line on start (the URL and where the key came from, never the
//! key) so scripts and tests can learn the port when `--addr` asks for port 0.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::bail;

use super::output::out;
use convers8_campaign::engine::Stop;
use convers8_campaign::sandbox::{Sandbox, SandboxConfig};

const API_KEY_ENV: &str = "CONVERS8_API_KEY";
const DEFAULT_API_KEY: &str = "sandbox-key";

const EXAMPLES: &str = "\
Examples:
  # A well-behaved server on the default port
  convers8-campaign sandbox

  # A flaky, slow server for a rehearsal, reproducible with a seed
  convers8-campaign sandbox --addr 127.0.0.1:9090 --api-key test-key \\
      --rate 20 --fail-rate 0.02 --drop-rate 0.01 --latency-ms 80 \\
      --jitter-ms 40 --seed 7 --log sent.jsonl

Then point a campaign at it: CONVERS8_BASE_URL=http://127.0.0.1:9090
Inspect what it accepted: curl http://127.0.0.1:9090/_sandbox/messages

Exit codes: 0 stopped by Ctrl-C or SIGTERM, 1 error (address in use, bad
flags), 2 usage.";

/// Run a local Convers8 server (the sandbox) for tests and rehearsals.
#[derive(Debug, clap::Args)]
#[command(after_help = EXAMPLES)]
pub struct SandboxArgs {
    /// Address to listen on; port 0 picks a free port (printed on start).
    #[arg(long, default_value = "127.0.0.1:8080")]
    addr: SocketAddr,

    /// The API key clients must send as `Authorization: Bearer KEY`
    /// [default: $CONVERS8_API_KEY, else "sandbox-key"].
    #[arg(long, value_name = "KEY")]
    api_key: Option<String>,

    /// Messages per second accepted across all send endpoints; 0 = unlimited.
    #[arg(long, default_value_t = 80.0, value_parser = non_negative)]
    rate: f64,

    /// Token bucket size [default: the rate, at least 1].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    burst: Option<u32>,

    /// Fixed delay before every answer, in milliseconds.
    #[arg(long, default_value_t = 0, value_name = "MS")]
    latency_ms: u64,

    /// Extra random delay of 0 to this many milliseconds.
    #[arg(long, default_value_t = 0, value_name = "MS")]
    jitter_ms: u64,

    /// Probability (0 to 1) that a valid send is answered 500 internal_error.
    #[arg(long, default_value_t = 0.0, value_name = "P", value_parser = probability)]
    fail_rate: f64,

    /// Probability (0 to 1) that a valid send's connection closes without an answer.
    #[arg(long, default_value_t = 0.0, value_name = "P", value_parser = probability)]
    drop_rate: f64,

    /// Probability (0 to 1) that a valid send is delivered but answered after --slow-ms.
    #[arg(long, default_value_t = 0.0, value_name = "P", value_parser = probability)]
    slow_rate: f64,

    /// Delay of a slow answer, in milliseconds.
    #[arg(long, default_value_t = 10_000, value_name = "MS")]
    slow_ms: u64,

    /// Start a 429 storm at the beginning of every period of this many milliseconds.
    #[arg(long, value_name = "MS", value_parser = clap::value_parser!(u64).range(1..))]
    throttle_every_ms: Option<u64>,

    /// Length of each 429 storm, in milliseconds (with --throttle-every-ms).
    #[arg(long, default_value_t = 1_000, value_name = "MS")]
    throttle_for_ms: u64,

    /// Seed for every random choice (faults, jitter, message ids), to replay a run.
    #[arg(long)]
    seed: Option<u64>,

    /// Append every accepted message to FILE as one JSON line.
    #[arg(long, value_name = "FILE")]
    log: Option<PathBuf>,

    /// Start with no contacts instead of the guide's two examples.
    #[arg(long)]
    no_seed_contacts: bool,
}

/// Where the key came from, for the start-up line (the key itself is never printed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeySource {
    Flag,
    Env,
    Default,
}

impl std::fmt::Display for KeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            KeySource::Flag => "from --api-key",
            KeySource::Env => "from CONVERS8_API_KEY",
            KeySource::Default => "the default, see --help",
        })
    }
}

impl SandboxArgs {
    /// The checked configuration; `env_key` is `$CONVERS8_API_KEY`, passed in
    /// so the mapping is testable without touching the process environment.
    fn into_config(self, env_key: Option<String>) -> anyhow::Result<(SandboxConfig, KeySource)> {
        let (api_key, source) = match (self.api_key, env_key.filter(|k| !k.is_empty())) {
            (Some(key), _) => (key, KeySource::Flag),
            (None, Some(key)) => (key, KeySource::Env),
            (None, None) => (DEFAULT_API_KEY.to_owned(), KeySource::Default),
        };
        if api_key.trim().is_empty() {
            bail!("--api-key must not be empty");
        }
        if let Some(every) = self.throttle_every_ms
            && self.throttle_for_ms >= every
        {
            bail!(
                "--throttle-for-ms ({}) must be shorter than --throttle-every-ms ({every}), \
                 or every send would be refused",
                self.throttle_for_ms
            );
        }
        let config = SandboxConfig {
            api_key,
            rate: self.rate,
            // Saturating cast: a rate beyond u32 is unlimited in practice anyway.
            burst: self
                .burst
                .unwrap_or_else(|| self.rate.round().max(1.0) as u32),
            latency: Duration::from_millis(self.latency_ms),
            jitter: Duration::from_millis(self.jitter_ms),
            fail_rate: self.fail_rate,
            drop_rate: self.drop_rate,
            slow_rate: self.slow_rate,
            slow: Duration::from_millis(self.slow_ms),
            throttle_every: self.throttle_every_ms.map(Duration::from_millis),
            throttle_for: Duration::from_millis(self.throttle_for_ms),
            seed: self.seed,
            log: self.log,
            seed_contacts: !self.no_seed_contacts,
        };
        Ok((config, source))
    }
}

pub async fn run(args: SandboxArgs) -> anyhow::Result<ExitCode> {
    let addr = args.addr;
    let (config, key_source) = args.into_config(std::env::var(API_KEY_ENV).ok())?;
    // Heard before the start-up line: a parent that reads the line and
    // signals at once must not kill the server mid-answer.
    let stop = Stop::new();
    let _signals = super::signals::stop_on_signals(
        stop.clone(),
        super::signals::Words {
            stopping: "finishing the answers in flight",
            quit_costs: "requests in flight then get no answer",
        },
    );
    let sandbox = match Sandbox::start(config, addr).await {
        Ok(sandbox) => sandbox,
        // The io error already names the address (and a log file, if that failed).
        Err(err) if err.kind() == std::io::ErrorKind::AddrInUse => bail!(
            "{err}; is another server using it? pick another --addr (port 0 picks a free one)"
        ),
        Err(err) => return Err(anyhow::Error::new(err).context("cannot start the sandbox")),
    };
    // One line, flushed by the newline: a parent process reads the port from it.
    out!(
        "sandbox listening on {} (api key: {key_source})",
        sandbox.base_url()
    );
    stop.stopped().await;
    sandbox.shutdown().await;
    Ok(ExitCode::SUCCESS)
}

fn probability(value: &str) -> Result<f64, String> {
    match value.parse::<f64>() {
        Ok(p) if (0.0..=1.0).contains(&p) => Ok(p),
        _ => Err("must be a number from 0 to 1".into()),
    }
}

fn non_negative(value: &str) -> Result<f64, String> {
    match value.parse::<f64>() {
        Ok(r) if r.is_finite() && r >= 0.0 => Ok(r),
        _ => Err("must be a number of at least 0".into()),
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Wrapper {
        #[command(flatten)]
        args: SandboxArgs,
    }

    fn parse(flags: &[&str]) -> Result<SandboxArgs, clap::Error> {
        let argv = std::iter::once("sandbox").chain(flags.iter().copied());
        Wrapper::try_parse_from(argv).map(|w| w.args)
    }

    #[test]
    fn defaults_map_to_a_well_behaved_server() {
        let (config, source) = parse(&[]).unwrap().into_config(None).unwrap();
        assert_eq!(source, KeySource::Default);
        assert_eq!(config.api_key, "sandbox-key");
        assert_eq!((config.rate, config.burst), (80.0, 80));
        assert_eq!(config.fail_rate, 0.0);
        assert!(config.seed_contacts);
        assert_eq!(config.slow, Duration::from_secs(10));
    }

    #[test]
    fn key_comes_from_flag_then_env() {
        let (config, source) = parse(&["--api-key", "k1"])
            .unwrap()
            .into_config(Some("k2".into()))
            .unwrap();
        assert_eq!((config.api_key.as_str(), source), ("k1", KeySource::Flag));
        let (config, source) = parse(&[]).unwrap().into_config(Some("k2".into())).unwrap();
        assert_eq!((config.api_key.as_str(), source), ("k2", KeySource::Env));
        assert!(!source.to_string().contains("k2"));
    }

    #[test]
    fn flags_map_into_the_config() {
        let args = parse(&[
            "--rate",
            "2.4",
            "--latency-ms",
            "5",
            "--jitter-ms",
            "3",
            "--fail-rate",
            "0.5",
            "--seed",
            "9",
            "--throttle-every-ms",
            "1000",
            "--throttle-for-ms",
            "100",
            "--no-seed-contacts",
        ])
        .unwrap();
        let (config, _) = args.into_config(None).unwrap();
        assert_eq!(config.burst, 2, "burst defaults to the rounded rate");
        assert_eq!(config.latency, Duration::from_millis(5));
        assert_eq!(config.jitter, Duration::from_millis(3));
        assert_eq!(config.fail_rate, 0.5);
        assert_eq!(config.seed, Some(9));
        assert_eq!(config.throttle_every, Some(Duration::from_secs(1)));
        assert!(!config.seed_contacts);
    }

    #[test]
    fn bad_values_name_the_flag() {
        let err = parse(&["--fail-rate", "1.5"]).unwrap_err().to_string();
        assert!(err.contains("--fail-rate"), "{err}");
        assert!(err.contains("from 0 to 1"), "{err}");
        let err = parse(&["--rate=-1"]).unwrap_err().to_string();
        assert!(err.contains("--rate"), "{err}");
        let err = parse(&["--throttle-every-ms", "100", "--throttle-for-ms", "100"])
            .unwrap()
            .into_config(None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("--throttle-for-ms"), "{err}");
    }
}
