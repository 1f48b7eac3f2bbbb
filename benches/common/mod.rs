//! What the benchmarks share: the real release binary, a sandbox started as a
//! separate process on 127.0.0.1, generated recipient lists and campaign
//! folders, tiny HTTP reads of the sandbox's `/_sandbox/*` endpoints, and the
//! one table each benchmark prints.
//!
//! Every benchmark measures whole processes, so nothing here runs inside the
//! process being measured. Every wait is bounded by a deadline, and every
//! child process is killed when its guard is dropped, so a failing benchmark
//! cannot leave a server running.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use convers8_campaign::sandbox::{RecordedMessage, SandboxStats};

/// The key both the sandbox and the campaign use.
pub const KEY: &str = "bench-key-5c1e";

/// The binary under test. Cargo builds it with the bench profile (release
/// settings) for `cargo bench` and tells the bench where it is.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_convers8-campaign"))
}

/// True when `cargo bench` started this benchmark: it passes `--bench`.
/// `cargo test --benches` (or `--all-targets`) runs bench targets too, in a
/// debug build and without that flag; a whole-process benchmark of minutes
/// has no business there, so each `main` returns early (see [`skip_unless_bench`]).
pub fn invoked_by_cargo_bench() -> bool {
    std::env::args().any(|a| a == "--bench")
}

/// Prints why and returns true when this is not a `cargo bench` run.
pub fn skip_unless_bench(name: &str) -> bool {
    if invoked_by_cargo_bench() {
        return false;
    }
    println!("{name}: skipped (not started by `cargo bench`; run `cargo bench --bench {name}`)");
    true
}

/// A count from the environment (e.g. `BENCH_N=50000`), else `default`.
pub fn env_count(name: &str, default: usize) -> usize {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .replace('_', "")
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v} is not a whole number")),
        Err(_) => default,
    }
}

/// A sandbox running as its own process; killed when dropped.
pub struct SandboxProcess {
    child: Child,
    pub url: String,
    pub addr: SocketAddr,
}

impl SandboxProcess {
    /// Starts `convers8-campaign sandbox --addr 127.0.0.1:0 ...` and reads the
    /// URL from its one start-up line.
    pub fn start(extra: &[&str]) -> SandboxProcess {
        let mut child = Command::new(bin())
            .args(["sandbox", "--addr", "127.0.0.1:0", "--api-key", KEY])
            .arg("--no-seed-contacts")
            .args(extra)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the sandbox process starts");
        let stdout = child.stdout.take().expect("sandbox stdout is piped");
        // Read the line on a thread so a sandbox that never prints cannot hang us.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                panic!("the sandbox printed no start-up line within 20 s");
            }
        };
        let url = line
            .split_whitespace()
            .find(|w| w.starts_with("http://127.0.0.1:"))
            .unwrap_or_else(|| panic!("no URL in the sandbox's start-up line: {line:?}"))
            .to_owned();
        let addr = url
            .trim_start_matches("http://")
            .parse()
            .expect("the sandbox URL is host:port");
        SandboxProcess { child, url, addr }
    }

    pub fn stats(&self) -> SandboxStats {
        let body = http_get(self.addr, "/_sandbox/stats");
        serde_json::from_str(&body).expect("/_sandbox/stats is JSON")
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the sandbox accepted so far, in order.
    pub fn messages(&self) -> Vec<RecordedMessage> {
        let body = http_get(self.addr, "/_sandbox/messages");
        serde_json::from_str(&body).expect("/_sandbox/messages is JSON")
    }
}

impl Drop for SandboxProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A GET on loopback with `Connection: close`; returns the body. Small and
/// dependency-free on purpose: it must not share a client with what is measured.
pub fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut stream =
        TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect to the sandbox");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("read timeout");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .expect("send the request");
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).expect("read the answer");
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .expect("an HTTP answer has a head");
    assert!(head.starts_with("HTTP/1.1 200"), "GET {path}: {head}");
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_owned()
    }
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    loop {
        let Some((size, rest)) = body.split_once("\r\n") else {
            return out;
        };
        let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if size == 0 || rest.len() < size {
            return out;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].trim_start_matches("\r\n");
    }
}

/// The countries of the generated lists: prefix, and how a valid mobile
/// number continues (the digits after the prefix, minus the 7 varying ones).
const COUNTRIES: [(&str, &str, &str); 5] = [
    ("KE", "+2547", "1"),
    ("TZ", "+2557", "5"),
    ("UG", "+2567", "7"),
    ("NG", "+23480", "3"),
    ("ZA", "+278", "2"),
];

/// A recipient CSV of `n` distinct valid numbers over five countries, with
/// five columns: phone, name, city, country, code. One row in ten is written
/// without `+` and relies on `default_country = "KE"`, like a CRM export.
pub fn write_recipients(path: &Path, n: usize) {
    let file = std::fs::File::create(path).expect("create the CSV");
    let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
    writeln!(out, "phone,name,city,country,code").expect("write");
    let cities = ["Nairobi", "Dar es Salaam", "Kampala", "Lagos", "Cape Town"];
    for i in 0..n {
        let c = i % COUNTRIES.len();
        let (country, prefix, lead) = COUNTRIES[c];
        let serial = i / COUNTRIES.len();
        let phone = if c == 0 && i % 10 == 0 {
            // A local Kenyan number: 07XX... with the default country.
            format!("07{lead}{serial:07}")
        } else {
            format!("{prefix}{lead}{serial:07}")
        };
        writeln!(
            out,
            "{phone},Customer {i},{},{country},C{:06}",
            cities[c],
            i % 1_000_000
        )
        .expect("write");
    }
    out.flush().expect("flush the CSV");
}

/// A text campaign over `recipients.csv` with the given `[send]` lines.
pub fn campaign_toml(send: &str) -> String {
    format!(
        r#"[campaign]
name = "bench"

[recipients]
csv = "recipients.csv"
default_country = "KE"

[send]
{send}

[message]
type = "text"
[message.content]
text = "Hi {{{{name}}}}, your code {{{{code}}}} is ready in {{{{city}}}}."

[ledger]
path = "ledger.db"
"#
    )
}

/// A campaign folder in a temp dir: `campaign.toml` and `recipients.csv`.
pub struct CampaignDir {
    pub dir: tempfile::TempDir,
}

impl CampaignDir {
    /// A campaign with a ledger of its own, `ledger.db` beside it (runs
    /// measure with the ledger on, as operators run, and campaigns of one
    /// bench never see one another).
    pub fn new(rows: usize, send: &str) -> CampaignDir {
        Self::with_toml(rows, &campaign_toml(send))
    }

    /// The same campaign with `ledger = false`: the ledger's cost is the
    /// difference between the two.
    pub fn without_ledger(rows: usize, send: &str) -> CampaignDir {
        let toml = campaign_toml(send).replace("[ledger]\npath = \"ledger.db\"\n", "");
        Self::with_toml(rows, &format!("ledger = false\n{toml}"))
    }

    fn with_toml(rows: usize, toml: &str) -> CampaignDir {
        let dir = tempfile::Builder::new()
            .prefix("convers8-bench-")
            .tempdir()
            .expect("tempdir");
        std::fs::write(dir.path().join("campaign.toml"), toml).expect("toml");
        write_recipients(&dir.path().join("recipients.csv"), rows);
        CampaignDir { dir }
    }

    /// The campaign's own ledger (see [`CampaignDir::new`]).
    pub fn ledger(&self) -> PathBuf {
        self.dir.path().join("ledger.db")
    }

    pub fn toml(&self) -> PathBuf {
        self.dir.path().join("campaign.toml")
    }

    pub fn csv(&self) -> PathBuf {
        self.dir.path().join("recipients.csv")
    }

    pub fn state(&self) -> PathBuf {
        self.dir.path().join("campaign.state.db")
    }
}

/// Opt-outs and another campaign's messages, as a busy account's ledger holds.
pub fn fill_ledger(path: &Path) {
    use convers8_campaign::ledger::{FileLedger, LedgerEntry, LedgerState};
    use convers8_campaign::phone::E164;
    let mut ledger = FileLedger::open(path).expect("the bench ledger opens");
    let phone = |i: usize| format!("+2547{:08}", 30_000_000 + i);
    let opted: Vec<E164> = (0..10_000)
        .map(|i| E164::parse(&phone(i), None).expect("a valid phone"))
        .collect();
    ledger.add_opt_outs(&opted, "bench").expect("opt-outs");
    let at = chrono::Utc::now() - chrono::Duration::hours(1);
    let messages: Vec<LedgerEntry> = (0..100_000)
        .map(|i| LedgerEntry {
            phone: phone(i),
            campaign: "another campaign".into(),
            state_file: "/elsewhere/another.state.db".into(),
            row: i as u64 + 1,
            at,
            state: LedgerState::Sent,
            message_id: Some(format!("m{i}")),
        })
        .collect();
    ledger.record(&messages).expect("messages");
}

/// `convers8-campaign ARGS` aimed at `sandbox` (or at nothing), quiet.
pub fn command(sandbox: Option<&SandboxProcess>, args: &[&str]) -> Command {
    let mut cmd = Command::new(bin());
    cmd.args(args)
        .env_remove("RUST_LOG")
        .env_remove("CONVERS8_API_KEY")
        .env_remove("CONVERS8_BASE_URL")
        // Campaigns name their own ledger (see `CampaignDir`); this only
        // keeps anything else a bench runs out of the user's own ledger.
        .env(
            "CONVERS8_LEDGER",
            std::env::temp_dir().join(format!("convers8-bench-{}.ledger.db", std::process::id())),
        )
        .stdin(Stdio::null());
    if let Some(sandbox) = sandbox {
        cmd.env("CONVERS8_API_KEY", KEY)
            .env("CONVERS8_BASE_URL", &sandbox.url);
    }
    cmd
}

/// Runs a command to completion within `limit`, timing it; panics with its
/// output if it fails or overruns (the child is killed first).
pub fn run_timed(cmd: &mut Command, limit: Duration) -> (Duration, Output) {
    let started = Instant::now();
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary starts");
    // Drain the pipes on threads, so a chatty child cannot block on a full pipe.
    let mut out_pipe = child.stdout.take().expect("stdout piped");
    let mut err_pipe = child.stderr.take().expect("stderr piped");
    let out_thread = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out_pipe.read_to_end(&mut v);
        v
    });
    let err_thread = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err_pipe.read_to_end(&mut v);
        v
    });
    let status = loop {
        if let Some(status) = child.try_wait().expect("poll the child") {
            break status;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} ran longer than {limit:?}; killed");
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    let elapsed = started.elapsed();
    let output = Output {
        status,
        stdout: out_thread.join().unwrap_or_default(),
        stderr: err_thread.join().unwrap_or_default(),
    };
    assert!(
        output.status.success(),
        "{cmd:?} failed ({:?})\nstdout:\n{}\nstderr:\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (elapsed, output)
}

/// Plans the campaign with `run --dry-run`; returns how long it took.
pub fn plan(dir: &CampaignDir) -> Duration {
    let toml = dir.toml();
    let toml = toml.to_str().expect("utf-8 temp path");
    run_timed(
        &mut command(None, &["run", toml, "--dry-run"]),
        Duration::from_secs(600),
    )
    .0
}

/// The figures one benchmark prints: a title, then rows of
/// figure | value | target | verdict, as a Markdown table.
pub struct Table {
    title: String,
    rows: Vec<[String; 4]>,
}

impl Table {
    pub fn new(title: impl Into<String>) -> Table {
        Table {
            title: title.into(),
            rows: Vec::new(),
        }
    }

    /// A figure without a target.
    pub fn info(&mut self, figure: &str, value: impl Into<String>) {
        self.rows
            .push([figure.into(), value.into(), String::new(), String::new()]);
    }

    /// A figure checked against a target.
    pub fn check(&mut self, figure: &str, value: impl Into<String>, target: &str, met: bool) {
        self.rows.push([
            figure.into(),
            value.into(),
            target.into(),
            if met { "met" } else { "MISSED" }.into(),
        ]);
    }

    pub fn print(&self) {
        let headers = ["figure", "value", "target", "verdict"];
        let mut widths = headers.map(str::len);
        for row in &self.rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let line = |cells: [&str; 4]| {
            let mut s = String::from("|");
            for (cell, w) in cells.iter().zip(widths) {
                s.push_str(&format!(" {cell:<w$} |"));
            }
            s
        };
        println!();
        println!("{}", self.title);
        println!();
        println!("{}", line(headers));
        let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
        println!("{}", line([&rule[0], &rule[1], &rule[2], &rule[3]]));
        for row in &self.rows {
            println!("{}", line([&row[0], &row[1], &row[2], &row[3]]));
        }
        println!();
    }
}

/// `nproc` and the CPU model, for the table's title.
pub fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    format!("{cores} cores, {model}")
}

/// A rate with a sensible number of digits.
pub fn per_second(n: f64, elapsed: Duration) -> f64 {
    n / elapsed.as_secs_f64().max(1e-9)
}
