//! The contacts guide's three curl commands, verbatim but for host and key,
//! against the real binary's `sandbox` command: what the documents promise an
//! operator with nothing but curl is what the sandbox serves.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

const KEY: &str = "guide-key";

/// Kills the sandbox however the test ends, so a failed assertion leaves no
/// server behind.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn curl_available() -> bool {
    Command::new("curl")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Starts `convers8-campaign sandbox` on a free port and reads the URL from
/// its one start-up line.
fn start_sandbox() -> (Running, String) {
    let binary = assert_cmd::cargo::cargo_bin("convers8-campaign");
    let mut child = Command::new(binary)
        .args(["sandbox", "--addr", "127.0.0.1:0", "--api-key", KEY])
        .env_remove("CONVERS8_API_KEY")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("the binary starts");
    let stdout = child.stdout.take().expect("stdout is piped");
    let running = Running(child);
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("the start-up line is readable");
    assert!(
        line.starts_with("sandbox listening on http://127.0.0.1:"),
        "start-up line: {line:?}"
    );
    assert!(!line.contains(KEY), "the key is never printed: {line:?}");
    assert!(line.contains("from --api-key"), "{line:?}");
    let url = line
        .split_whitespace()
        .find(|word| word.starts_with("http://"))
        .expect("the line names the URL")
        .to_owned();
    (running, url)
}

fn curl(args: &[&str]) -> Value {
    let output = Command::new("curl")
        .args(["--silent", "--show-error", "--max-time", "10"])
        .args(args)
        .output()
        .expect("curl runs");
    assert!(
        output.status.success(),
        "curl {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap_or_else(|err| {
        panic!(
            "curl {args:?} did not get JSON ({err}): {}",
            String::from_utf8_lossy(&output.stdout)
        )
    })
}

fn assert_contact(contact: &Value) {
    for field in ["id", "name", "phone_number", "created_at", "updated_at"] {
        assert!(
            contact[field].as_str().is_some_and(|v| !v.is_empty()),
            "{field} in {contact}"
        );
    }
    for stamp in ["created_at", "updated_at"] {
        let value = contact[stamp].as_str().unwrap_or_default();
        assert!(
            chrono::DateTime::parse_from_rfc3339(value).is_ok() && value.ends_with('Z'),
            "{stamp}: {value}"
        );
    }
}

#[test]
fn the_guides_curl_commands_work_against_the_sandbox() {
    if !curl_available() {
        eprintln!("note: curl is not installed; skipping the contacts guide test");
        return;
    }
    let (_sandbox, base) = start_sandbox();
    let auth = format!("Authorization: Bearer {KEY}");

    // List Contacts
    let list = curl(&[
        "--request",
        "GET",
        "--url",
        &format!("{base}/contacts"),
        "--header",
        &auth,
    ]);
    assert_eq!(list["success"], true);
    let contacts = list["data"]["contacts"].as_array().expect("contacts array");
    assert_eq!(contacts.len(), 2);
    contacts.iter().for_each(assert_contact);
    assert_eq!(contacts[0]["id"], "contact_20250411ABC");
    assert_eq!(contacts[1]["id"], "contact_20250411XYZ");
    let pagination = &list["data"]["pagination"];
    for (field, expected) in [
        ("total", 2),
        ("page", 1),
        ("per_page", 10),
        ("total_pages", 1),
    ] {
        assert_eq!(pagination[field], expected, "pagination.{field}");
    }

    // Get Contact
    let one = curl(&[
        "--request",
        "GET",
        "--url",
        &format!("{base}/contacts/contact_20250411ABC"),
        "--header",
        &auth,
    ]);
    assert_eq!(one["success"], true);
    let contact = &one["data"]["contact"];
    assert_contact(contact);
    assert_eq!(contact["name"], "John Doe");
    assert_eq!(contact["phone_number"], "1234567890");
    assert_eq!(contact["created_at"], "2025-04-11T10:30:00Z");

    // Create Contact
    let created = curl(&[
        "--request",
        "POST",
        "--url",
        &format!("{base}/contacts"),
        "--header",
        &auth,
        "--header",
        "Content-Type: application/json",
        "--data",
        r#"{
       "name": "New Contact",
       "phone_number": "1234567890"
     }"#,
    ]);
    assert_eq!(created["success"], true);
    assert_eq!(created["message"], "Contact created successfully");
    let contact = &created["data"]["contact"];
    assert_contact(contact);
    assert_eq!(contact["name"], "New Contact");
    assert_eq!(contact["phone_number"], "1234567890");
    let id = contact["id"].as_str().unwrap_or_default();
    assert!(
        id.starts_with("contact_") && id.len() == "contact_20250411DEF".len(),
        "{id}"
    );

    // The new contact is listed after the guide's two.
    let list = curl(&["--url", &format!("{base}/contacts"), "--header", &auth]);
    assert_eq!(list["data"]["pagination"]["total"], 3);
    assert_eq!(list["data"]["contacts"][2]["id"], id);
}

#[test]
fn the_sandbox_stops_cleanly_on_sigterm() {
    let (mut sandbox, base) = start_sandbox();
    assert!(base.starts_with("http://127.0.0.1:"));
    #[cfg(unix)]
    {
        let pid = sandbox.0.id().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status();
        assert!(sent.is_ok_and(|s| s.success()), "kill -TERM {pid}");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Some(status) = sandbox.0.try_wait().expect("wait works") {
                break status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "still running after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        assert_eq!(status.code(), Some(0), "graceful exit");
    }
}

#[test]
fn an_address_in_use_is_named_in_the_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a port");
    let addr = taken.local_addr().expect("local addr").to_string();
    let binary = assert_cmd::cargo::cargo_bin("convers8-campaign");
    let output = Command::new(binary)
        .args(["sandbox", "--addr", &addr])
        .output()
        .expect("the binary runs");
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains(&addr), "{stderr}");
    assert!(output.stdout.is_empty(), "no start-up line on failure");
}
