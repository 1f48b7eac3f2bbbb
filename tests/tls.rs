//! TLS trust: the client trusts the system certificate store (which
//! `SSL_CERT_FILE` replaces) plus the webpki roots, so an operator behind a
//! TLS-inspecting proxy, or with a private CA, can add that CA and send.
//!
//! Each test makes a fresh CA and a certificate for `localhost` signed by it,
//! and puts a TLS-terminating proxy on 127.0.0.1 in front of a sandbox (which
//! speaks plain HTTP). The real binary is pointed at `https://localhost:PORT`
//! with `SSL_CERT_FILE` naming that CA, another CA, an empty file, or nothing.
//! The sandbox's record says what arrived; the proxy counts handshakes, so a
//! failure is shown to be the certificate and not a refused connection.
//! Nothing here leaves the machine: the proxy and the sandbox listen on
//! 127.0.0.1, and `localhost` is the only name the binary is given.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{CampaignDir, KEY, TestSandbox, bare_bin, kenyan_csv, stderr, stdout, text_campaign};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

const PHONE: &str = "+254799000111";

/// A certificate authority made for one test: its PEM, and what signs with it.
struct TestCa {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl TestCa {
    fn new(name: &str) -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().expect("CA key");
        let cert = params.self_signed(&key).expect("CA certificate");
        TestCa {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A server certificate for `localhost` signed by this CA, and its key.
    fn localhost(&self) -> (CertificateDer<'static>, PrivateKeyDer<'static>) {
        let params = CertificateParams::new(vec!["localhost".to_owned()]).expect("leaf params");
        let key = KeyPair::generate().expect("leaf key");
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("leaf certificate");
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        (cert.der().clone(), key)
    }

    /// Writes the CA's PEM into `dir`, for `SSL_CERT_FILE`.
    fn write_pem(&self, dir: &Path, file: &str) -> PathBuf {
        let path = dir.join(file);
        std::fs::write(&path, &self.pem).expect("write CA PEM");
        path
    }
}

/// A TLS-terminating proxy on 127.0.0.1 that forwards each connection's
/// plain bytes to a sandbox on 127.0.0.1. Its runtime, and so every task of
/// it, stops when it is dropped: at the end of a test, or while a failed
/// test unwinds.
struct TlsProxy {
    runtime: Option<tokio::runtime::Runtime>,
    addr: SocketAddr,
    handshakes_ok: Arc<AtomicUsize>,
    handshakes_failed: Arc<AtomicUsize>,
}

impl TlsProxy {
    fn start(
        cert: CertificateDer<'static>,
        key: PrivateKeyDer<'static>,
        upstream: SocketAddr,
    ) -> TlsProxy {
        assert!(
            upstream.ip().is_loopback(),
            "the proxy forwards to loopback only"
        );
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("proxy runtime");
        let config = ServerConfig::builder_with_provider(Arc::new(
            tokio_rustls::rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .expect("server certificate");
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let listener = runtime
            .block_on(TcpListener::bind("127.0.0.1:0"))
            .expect("proxy listens");
        let addr = listener.local_addr().expect("proxy address");
        let handshakes_ok = Arc::new(AtomicUsize::new(0));
        let handshakes_failed = Arc::new(AtomicUsize::new(0));
        let (ok, failed) = (handshakes_ok.clone(), handshakes_failed.clone());
        runtime.spawn(async move {
            while let Ok((tcp, _peer)) = listener.accept().await {
                let (acceptor, ok, failed) = (acceptor.clone(), ok.clone(), failed.clone());
                tokio::spawn(async move {
                    let mut tls = match acceptor.accept(tcp).await {
                        Ok(tls) => {
                            ok.fetch_add(1, Ordering::SeqCst);
                            tls
                        }
                        Err(_) => {
                            failed.fetch_add(1, Ordering::SeqCst);
                            return;
                        }
                    };
                    let Ok(mut plain) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
                });
            }
        });
        TlsProxy {
            runtime: Some(runtime),
            addr,
            handshakes_ok,
            handshakes_failed,
        }
    }

    /// `https://localhost:PORT`: the name the certificate is for.
    fn base_url(&self) -> String {
        format!("https://localhost:{}", self.addr.port())
    }

    /// Handshakes completed and refused so far.
    fn handshakes(&self) -> (usize, usize) {
        (
            self.handshakes_ok.load(Ordering::SeqCst),
            self.handshakes_failed.load(Ordering::SeqCst),
        )
    }

    /// Handshakes once at least `refused` were refused, or after 5 s: the
    /// proxy counts a refusal when it reads the client's alert, which may be
    /// a moment after the client has exited.
    fn handshakes_once_refused(&self, refused: usize) -> (usize, usize) {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while self.handshakes().1 < refused && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        self.handshakes()
    }
}

impl Drop for TlsProxy {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_timeout(Duration::from_secs(5));
        }
    }
}

/// The sandbox's address, from its `http://127.0.0.1:PORT` URL.
fn sandbox_addr(sandbox: &TestSandbox) -> SocketAddr {
    let url = sandbox.base_url();
    let addr: SocketAddr = url
        .strip_prefix("http://")
        .expect("the sandbox speaks http")
        .trim_end_matches('/')
        .parse()
        .expect("the sandbox URL is an address");
    assert!(addr.ip().is_loopback(), "{url}");
    addr
}

/// A sandbox behind a TLS proxy whose certificate `ca` signed.
fn start(ca: &TestCa) -> (TestSandbox, TlsProxy) {
    let sandbox = TestSandbox::unlimited();
    let (cert, key) = ca.localhost();
    let proxy = TlsProxy::start(cert, key, sandbox_addr(&sandbox));
    (sandbox, proxy)
}

/// How the binary finds roots, set for one run.
enum Roots<'a> {
    /// `SSL_CERT_FILE` names this PEM file.
    File(&'a Path),
    /// Neither `SSL_CERT_FILE` nor `SSL_CERT_DIR`: the system store.
    System,
}

/// The real binary aimed at `base_url` with the test key and the given roots.
fn bin_with(base_url: &str, roots: Roots<'_>) -> Command {
    let mut cmd = bare_bin();
    cmd.env("CONVERS8_API_KEY", KEY)
        .env("CONVERS8_BASE_URL", base_url)
        .env_remove("SSL_CERT_DIR");
    match roots {
        Roots::File(path) => cmd.env("SSL_CERT_FILE", path),
        Roots::System => cmd.env_remove("SSL_CERT_FILE"),
    };
    cmd
}

fn send_test(base_url: &str, roots: Roots<'_>, dir: &CampaignDir) -> Output {
    bin_with(base_url, roots)
        .arg("send-test")
        .arg(dir.toml())
        .args(["--to", PHONE])
        .output()
        .expect("binary runs")
}

fn campaign(rows: usize) -> CampaignDir {
    CampaignDir::new(
        &text_campaign("concurrency = 2", "Hi {{name}}"),
        &kenyan_csv(rows),
    )
}

#[test]
fn send_test_trusts_the_ca_that_ssl_cert_file_names() {
    let ca = TestCa::new("convers8-campaign test CA");
    let (sandbox, proxy) = start(&ca);
    let dir = campaign(1);
    let ca_file = ca.write_pem(dir.dir.path(), "ca.pem");

    let out = send_test(&proxy.base_url(), Roots::File(&ca_file), &dir);
    assert!(
        out.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        stdout(&out),
        stderr(&out)
    );
    assert!(
        stdout(&out).starts_with(&format!(
            "sent a test of row 1 to {PHONE}: message_id wamid."
        )),
        "{}",
        stdout(&out)
    );
    let messages = sandbox.messages();
    assert_eq!(messages.len(), 1, "{messages:?}");
    assert_eq!(messages[0].to, PHONE);
    assert_eq!(messages[0].body["content"]["text"], "Hi Person 0");
    // It went through the proxy's TLS, not around it.
    let (ok, failed) = proxy.handshakes();
    assert!(
        ok >= 1 && failed == 0,
        "handshakes: {ok} ok, {failed} failed"
    );
}

#[test]
fn run_sends_a_campaign_through_a_proxy_signed_by_the_ca_that_ssl_cert_file_names() {
    let ca = TestCa::new("convers8-campaign test CA");
    let (sandbox, proxy) = start(&ca);
    let dir = campaign(5);
    let ca_file = ca.write_pem(dir.dir.path(), "ca.pem");

    let out = bin_with(&proxy.base_url(), Roots::File(&ca_file))
        .arg("run")
        .arg(dir.toml())
        .output()
        .expect("binary runs");
    assert!(
        out.status.success(),
        "exit {:?}\nstderr: {}",
        out.status.code(),
        stderr(&out)
    );
    let counts = dir.counts();
    assert_eq!((counts.sent, counts.total()), (5, 5), "{counts:?}");
    assert_eq!(sandbox.messages().len(), 5);
    let (ok, failed) = proxy.handshakes();
    assert!(
        ok >= 1 && failed == 0,
        "handshakes: {ok} ok, {failed} failed"
    );
}

/// The `error:` line of a failed command, checked to be its only one and its last.
fn error_line(out: &Output) -> String {
    let err = stderr(out);
    assert!(!err.contains("panicked"), "{err}");
    let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "one error line: {err}");
    assert_eq!(
        err.lines().last(),
        Some(errors[0]),
        "the error comes last: {err}"
    );
    errors[0].to_owned()
}

#[test]
fn an_untrusted_certificate_fails_in_one_line_that_says_what_to_do() {
    let ca = TestCa::new("convers8-campaign test CA");
    let (sandbox, proxy) = start(&ca);
    let dir = campaign(1);
    let other = TestCa::new("some other CA").write_pem(dir.dir.path(), "other-ca.pem");
    let empty = dir.dir.path().join("empty.pem");
    std::fs::write(&empty, "").expect("write empty PEM");
    let host = format!("localhost:{}", proxy.addr.port());

    for (what, roots) in [
        ("another CA", Roots::File(&other)),
        ("an empty file", Roots::File(&empty)),
        ("the system store", Roots::System),
    ] {
        let (ok_before, failed_before) = proxy.handshakes();
        let out = send_test(&proxy.base_url(), roots, &dir);
        assert_eq!(out.status.code(), Some(1), "{what}: {}", stderr(&out));
        assert!(out.stdout.is_empty(), "{what}: {}", stdout(&out));
        let line = error_line(&out);
        assert!(
            line.contains(&format!("the certificate of {host} is not trusted"))
                && line.contains("add that CA to the system certificate store")
                && line.contains("SSL_CERT_FILE"),
            "{what}: {line}"
        );
        // Every other line is a note that the send is being tried again.
        let err = stderr(&out);
        for note in err.lines().filter(|l| !l.starts_with("error:")) {
            assert!(note.contains("trying again in"), "{what}: {err}");
        }
        // The client reached the proxy and refused its certificate: the
        // failure is the trust, not the connection.
        let (ok, failed) = proxy.handshakes_once_refused(failed_before + 1);
        assert_eq!(ok, ok_before, "{what}: no handshake completed");
        assert!(failed > failed_before, "{what}: the handshake was refused");
    }
    assert!(sandbox.messages().is_empty());
    assert_eq!(
        sandbox.stats(),
        Default::default(),
        "nothing reached the sandbox"
    );
    assert!(!dir.state().exists());
}

#[test]
fn a_trusted_certificate_for_another_name_is_rejected_without_the_ca_advice() {
    let ca = TestCa::new("convers8-campaign test CA");
    let (sandbox, proxy) = start(&ca);
    let dir = campaign(1);
    let ca_file = ca.write_pem(dir.dir.path(), "ca.pem");
    // The certificate is for localhost; the URL names the address.
    let url = format!("https://127.0.0.1:{}", proxy.addr.port());

    let out = send_test(&url, Roots::File(&ca_file), &dir);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let line = error_line(&out);
    assert!(
        line.contains(&format!(
            "the certificate of 127.0.0.1:{} was rejected",
            proxy.addr.port()
        )) && line.contains("not valid for name"),
        "{line}"
    );
    assert!(!line.contains("SSL_CERT_FILE"), "{line}");
    assert!(sandbox.messages().is_empty());
}

#[test]
fn run_with_an_untrusted_certificate_stops_at_once_and_every_row_stays_pending() {
    let ca = TestCa::new("convers8-campaign test CA");
    let (sandbox, proxy) = start(&ca);
    let dir = campaign(40);
    let other = TestCa::new("some other CA").write_pem(dir.dir.path(), "other-ca.pem");

    // Every request to that server would be refused the same way: the run
    // stops at the first refusal instead of failing the list row by row,
    // and no row is marked failed (nothing was sent).
    let out = bin_with(&proxy.base_url(), Roots::File(&other))
        .arg("run")
        .arg(dir.toml())
        .args(["--concurrency", "1", "--json"])
        .output()
        .expect("binary runs");
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(!stderr(&out).contains("panicked"), "{}", stderr(&out));
    let summary: serde_json::Value =
        serde_json::from_str(stdout(&out).trim()).expect("one JSON summary");
    assert_eq!(summary["end"], "tls_rejected", "{summary}");
    let host = format!("localhost:{}", proxy.addr.port());
    let message = summary["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(&format!("the certificate of {host} is not trusted"))
            && message.contains("SSL_CERT_FILE"),
        "{message}"
    );
    let counts = dir.counts();
    assert_eq!(
        (counts.sent, counts.failed, counts.uncertain, counts.pending),
        (0, 0, 0, 40),
        "{counts:?}"
    );
    assert!(sandbox.messages().is_empty());
    assert_eq!(sandbox.stats(), Default::default());
    // One refused handshake stopped it: not one per row, nor retries of it.
    let (ok, failed) = proxy.handshakes_once_refused(1);
    assert!(
        ok == 0 && failed <= 2,
        "handshakes: {ok} ok, {failed} failed"
    );
}
