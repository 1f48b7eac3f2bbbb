//! The sandbox over real HTTP on loopback: every endpoint's documented shape,
//! every refusal in the error envelope, the rate limit, and the injected
//! faults (replayable from a seed, drops that close without an answer, slow
//! answers recorded first).

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use convers8_campaign::sandbox::{RecordedMessage, Sandbox, SandboxConfig, SandboxStats};
use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use serde_json::{Value, json};

const KEY: &str = "test-key";
const TO: &str = "+254712345678";

fn config() -> SandboxConfig {
    SandboxConfig {
        api_key: KEY.into(),
        rate: 0.0,
        ..SandboxConfig::default()
    }
}

fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

async fn start(config: SandboxConfig) -> Sandbox {
    Sandbox::start(config, loopback())
        .await
        .expect("sandbox starts on a free loopback port")
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Value,
}

async fn send_raw(
    client: &reqwest::Client,
    sandbox: &Sandbox,
    path: &str,
    key: Option<&str>,
    body: String,
) -> reqwest::Result<Answer> {
    let mut request = client
        .post(format!("{}{path}", sandbox.base_url()))
        .header("content-type", "application/json")
        .body(body);
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    let response = request.send().await?;
    let status = response.status();
    let headers = response.headers().clone();
    let text = response.text().await?;
    let body = serde_json::from_str(&text)
        .unwrap_or_else(|err| panic!("answer to {path} is not JSON ({err}): {text:?}"));
    Ok(Answer {
        status,
        headers,
        body,
    })
}

async fn send(sandbox: &Sandbox, path: &str, body: Value) -> Answer {
    send_raw(
        &reqwest::Client::new(),
        sandbox,
        path,
        Some(KEY),
        body.to_string(),
    )
    .await
    .expect("request answered")
}

async fn get(sandbox: &Sandbox, path: &str, key: Option<&str>) -> Answer {
    let mut request = reqwest::Client::new().get(format!("{}{path}", sandbox.base_url()));
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    let response = request.send().await.expect("request answered");
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.json().await.expect("answer is JSON");
    Answer {
        status,
        headers,
        body,
    }
}

async fn stats(sandbox: &Sandbox) -> SandboxStats {
    let answer = get(sandbox, "/_sandbox/stats", None).await;
    assert_eq!(answer.status, StatusCode::OK);
    serde_json::from_value(answer.body).expect("stats shape")
}

async fn recorded(sandbox: &Sandbox, query: &str) -> Vec<RecordedMessage> {
    let answer = get(sandbox, &format!("/_sandbox/messages{query}"), None).await;
    assert_eq!(answer.status, StatusCode::OK);
    serde_json::from_value(answer.body).expect("messages shape")
}

/// Asserts the documented error envelope and returns its details.
fn assert_error(answer: &Answer, status: StatusCode, code: &str) -> String {
    assert_eq!(answer.status, status, "body: {}", answer.body);
    assert_eq!(answer.body["success"], json!(false), "{}", answer.body);
    assert!(
        answer.body["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty())
    );
    assert_eq!(answer.body["error"]["code"], json!(code), "{}", answer.body);
    answer.body["error"]["details"]
        .as_str()
        .expect("details is a string")
        .to_owned()
}

fn text_body(to: &str, text: &str) -> Value {
    json!({"to": to, "name": "Ann", "content": {"text": text}})
}

fn buttons(n: usize) -> Value {
    let buttons: Vec<Value> = (0..n)
        .map(|i| json!({"type": "reply", "reply": {"id": format!("b{i}"), "title": format!("Choice {i}")}}))
        .collect();
    json!({"to": TO, "name": "Ann", "content": {
        "type": "button", "body": {"text": "Pick one"}, "action": {"buttons": buttons}}})
}

fn list(rows: usize) -> Value {
    let rows: Vec<Value> = (0..rows)
        .map(|i| json!({"id": format!("r{i}"), "title": format!("Row {i}"), "description": "d"}))
        .collect();
    json!({"to": TO, "name": "Ann", "content": {
        "type": "list", "header": {"type": "text", "text": "Menu"}, "body": {"text": "Pick one"},
        "footer": {"text": "Thanks"}, "action": {"sections": [{"title": "All", "rows": rows}]}}})
}

fn is_message_id(id: &str) -> bool {
    id.strip_prefix("wamid.").is_some_and(|hex| {
        hex.len() == 24
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

#[tokio::test]
async fn every_send_endpoint_answers_the_documented_shape() {
    let sandbox = start(config()).await;
    let cases = [
        (
            "/whatsapp/message/text",
            text_body(TO, "Hello Ann"),
            "text",
            "Hello Ann",
        ),
        (
            "/whatsapp/message/media",
            json!({"to": TO, "name": "Ann", "content": {"type": "image", "url": "https://example.com/a.png", "caption": "Look"}}),
            "media",
            "Look",
        ),
        (
            "/whatsapp/message/interactive",
            buttons(3),
            "interactive",
            "Pick one",
        ),
        (
            "/whatsapp/message/template",
            json!({"to": TO, "name": "Ann", "content": {"template_name": "order_update", "language": {"code": "en"},
                "components": [{"type": "body", "parameters": [{"type": "text", "text": "Ann"}]}]}}),
            "template",
            "order_update",
        ),
        (
            "/whatsapp/message/location",
            json!({"to": TO, "contact": "Ann", "content": {"latitude": "-1.2921", "longitude": "36.8219", "name": "Office", "address": "Nairobi"}}),
            "location",
            "Office",
        ),
    ];
    let mut ids = Vec::new();
    for (path, body, kind, echoed) in &cases {
        let answer = send(&sandbox, path, body.clone()).await;
        assert_eq!(answer.status, StatusCode::OK, "{path}: {}", answer.body);
        let id = answer.body["message_id"].as_str().expect("message_id");
        assert!(is_message_id(id), "{id}");
        ids.push(id.to_owned());
        assert_eq!(answer.body["type"], json!(kind));
        assert_eq!(answer.body["body"], json!(echoed));
        assert_eq!(answer.body["metadata"], json!({}));
        let timestamp = answer.body["timestamp"].as_str().expect("timestamp");
        assert!(
            chrono::DateTime::parse_from_rfc3339(timestamp).is_ok(),
            "{timestamp}"
        );
        if *kind == "media" {
            assert_eq!(answer.body["media_url"], json!("https://example.com/a.png"));
        } else {
            assert!(answer.body.get("media_url").is_none(), "{}", answer.body);
        }
    }
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 5, "message ids are unique");

    let messages = recorded(&sandbox, "").await;
    assert_eq!(messages.len(), 5);
    for (i, (message, (_, body, kind, _))) in messages.iter().zip(&cases).enumerate() {
        assert_eq!(message.seq, i as u64 + 1);
        assert_eq!(message.kind.as_str(), *kind);
        assert_eq!(message.to, TO);
        assert_eq!(&message.body, body, "the body is recorded as sent");
        assert!(chrono::DateTime::parse_from_rfc3339(&message.received_at).is_ok());
    }
    assert_eq!(sandbox.messages().len(), 5);
    assert_eq!(stats(&sandbox).await.accepted, 5);
    sandbox.shutdown().await;
}

#[tokio::test]
async fn missing_or_wrong_key_is_unauthorized() {
    let sandbox = start(config()).await;
    let client = reqwest::Client::new();
    let body = text_body(TO, "hi").to_string();
    let missing = send_raw(
        &client,
        &sandbox,
        "/whatsapp/message/text",
        None,
        body.clone(),
    )
    .await
    .unwrap();
    let details = assert_error(&missing, StatusCode::UNAUTHORIZED, "unauthorized");
    assert!(details.contains("Authorization"), "{details}");
    assert_eq!(missing.headers["www-authenticate"], "Bearer");

    let wrong = send_raw(
        &client,
        &sandbox,
        "/whatsapp/message/text",
        Some("nope"),
        body,
    )
    .await
    .unwrap();
    let details = assert_error(&wrong, StatusCode::UNAUTHORIZED, "unauthorized");
    assert!(
        !details.contains("nope"),
        "the key is never echoed: {details}"
    );

    let contacts = get(&sandbox, "/contacts", Some("nope")).await;
    assert_error(&contacts, StatusCode::UNAUTHORIZED, "unauthorized");

    assert!(recorded(&sandbox, "").await.is_empty());
    let stats = stats(&sandbox).await;
    assert_eq!((stats.unauthorized, stats.accepted), (3, 0));
    sandbox.shutdown().await;
}

#[tokio::test]
async fn invalid_requests_are_validation_errors_naming_the_field() {
    let sandbox = start(config()).await;
    let client = reqwest::Client::new();
    let long_title = {
        let mut body = buttons(2);
        body["content"]["action"]["buttons"][1]["reply"]["title"] = json!("x".repeat(21));
        body
    };
    let long_row = {
        let mut body = list(2);
        body["content"]["action"]["sections"][0]["rows"][0]["title"] = json!("y".repeat(25));
        body
    };
    let cases: Vec<(&str, String, &str)> = vec![
        ("text", "{\"to\": ".into(), "body: malformed JSON"),
        ("text", json!({"to": TO}).to_string(), "content: missing"),
        (
            "text",
            json!({"to": TO, "content": {}}).to_string(),
            "content: missing field `text`",
        ),
        (
            "text",
            json!({"to": TO, "content": {"text": "hi", "emoji": "x"}}).to_string(),
            "content.emoji: unknown field `emoji`",
        ),
        (
            "text",
            text_body(TO, "").to_string(),
            "content.text: must not be empty",
        ),
        (
            "interactive",
            buttons(4).to_string(),
            "content.action.buttons: 4 buttons, 1 to 3 allowed",
        ),
        (
            "interactive",
            list(11).to_string(),
            "content.action.sections: 11 rows in total, 1 to 10 allowed",
        ),
        (
            "interactive",
            long_title.to_string(),
            "content.action.buttons[1].reply.title: 21 characters, at most 20",
        ),
        (
            "interactive",
            long_row.to_string(),
            "content.action.sections[0].rows[0].title: 25 characters, at most 24",
        ),
        (
            "text",
            text_body("0712345678", "hi").to_string(),
            "to: '0712345678' is not an E.164 phone number",
        ),
        (
            "location",
            json!({"to": TO, "contact": "Ann", "content": {"latitude": "91", "longitude": "0"}})
                .to_string(),
            "content.latitude: '91' is not a decimal number from -90 to 90",
        ),
    ];
    for (kind, body, expected) in &cases {
        let path = format!("/whatsapp/message/{kind}");
        let answer = send_raw(&client, &sandbox, &path, Some(KEY), body.clone())
            .await
            .unwrap();
        let details = assert_error(&answer, StatusCode::BAD_REQUEST, "validation_error");
        assert!(
            details.starts_with(expected),
            "{body}\n  got: {details}\n  want: {expected}"
        );
    }

    // A wrong Content-Type is refused in the envelope too, not by axum's plain text.
    let response = client
        .post(format!("{}/whatsapp/message/text", sandbox.base_url()))
        .bearer_auth(KEY)
        .header("content-type", "text/plain")
        .body(text_body(TO, "hi").to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "validation_error");

    assert!(sandbox.messages().is_empty());
    assert_eq!(
        stats(&sandbox).await.validation_errors,
        cases.len() as u64 + 1
    );
    sandbox.shutdown().await;
}

#[tokio::test]
async fn an_empty_bucket_answers_429_with_retry_after() {
    let sandbox = start(SandboxConfig {
        rate: 1.0,
        burst: 1,
        ..config()
    })
    .await;
    let first = send(&sandbox, "/whatsapp/message/text", text_body(TO, "one")).await;
    assert_eq!(first.status, StatusCode::OK);
    let second = send(&sandbox, "/whatsapp/message/text", text_body(TO, "two")).await;
    assert_error(
        &second,
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limit_exceeded",
    );
    let retry_after: u64 = second.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .expect("Retry-After is whole seconds");
    assert_eq!(retry_after, 1);

    // Contacts do not share the message bucket.
    assert_eq!(
        get(&sandbox, "/contacts", Some(KEY)).await.status,
        StatusCode::OK
    );

    // The bucket refills at the rate.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let third = send(&sandbox, "/whatsapp/message/text", text_body(TO, "three")).await;
    assert_eq!(third.status, StatusCode::OK);

    let stats = stats(&sandbox).await;
    assert_eq!((stats.accepted, stats.rate_limited), (2, 1));
    sandbox.shutdown().await;
}

#[tokio::test]
async fn a_throttle_storm_refuses_every_send_until_it_passes() {
    let sandbox = start(SandboxConfig {
        throttle_every: Some(Duration::from_secs(60)),
        throttle_for: Duration::from_millis(1500),
        ..config()
    })
    .await;
    let stormy = send(&sandbox, "/whatsapp/message/text", text_body(TO, "hi")).await;
    assert_error(
        &stormy,
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limit_exceeded",
    );
    let retry_after: u64 = stormy.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&retry_after), "{retry_after}");
    tokio::time::sleep(Duration::from_millis(1600)).await;
    let calm = send(&sandbox, "/whatsapp/message/text", text_body(TO, "hi")).await;
    assert_eq!(calm.status, StatusCode::OK);
    sandbox.shutdown().await;
}

/// The outcome of one send as a client sees it.
#[derive(Debug, PartialEq, Eq, Clone)]
enum Seen {
    Ok(String),
    Status(u16),
    NoAnswer,
}

async fn run_faulty(seed: u64) -> (Vec<Seen>, SandboxStats) {
    let sandbox = start(SandboxConfig {
        fail_rate: 0.25,
        drop_rate: 0.2,
        slow_rate: 0.2,
        slow: Duration::from_millis(30),
        jitter: Duration::from_millis(5),
        seed: Some(seed),
        ..config()
    })
    .await;
    let client = reqwest::Client::new();
    let mut seen = Vec::new();
    for i in 0..40 {
        let body = text_body(TO, &format!("message {i}")).to_string();
        let outcome =
            match send_raw(&client, &sandbox, "/whatsapp/message/text", Some(KEY), body).await {
                Ok(answer) if answer.status == StatusCode::OK => {
                    Seen::Ok(answer.body["message_id"].as_str().unwrap().to_owned())
                }
                Ok(answer) => Seen::Status(answer.status.as_u16()),
                Err(err) => {
                    assert!(!err.is_connect(), "a drop happens after connecting: {err}");
                    Seen::NoAnswer
                }
            };
        seen.push(outcome);
    }
    let stats = sandbox.stats();
    sandbox.shutdown().await;
    (seen, stats)
}

#[tokio::test]
async fn the_same_seed_replays_the_same_faults() {
    let (first, stats) = run_faulty(42).await;
    let (second, _) = run_faulty(42).await;
    assert_eq!(first, second, "same seed, same outcomes and message ids");
    let count = |f: fn(&Seen) -> bool| first.iter().filter(|s| f(s)).count() as u64;
    let delivered = count(|s| matches!(s, Seen::Ok(_)));
    let failed = count(|s| *s == Seen::Status(500));
    let dropped = count(|s| *s == Seen::NoAnswer);
    assert!(delivered > 0 && failed > 0 && dropped > 0, "{first:?}");
    assert_eq!(delivered + failed + dropped, 40);
    assert_eq!(stats.accepted, delivered);
    assert_eq!(stats.server_errors, failed);
    assert_eq!(stats.dropped, dropped);
    assert!(stats.slow > 0 && stats.slow <= delivered);

    let (other, _) = run_faulty(43).await;
    assert_ne!(first, other, "another seed, another run");
}

#[tokio::test]
async fn a_drop_closes_the_connection_without_an_answer() {
    let sandbox = start(SandboxConfig {
        drop_rate: 1.0,
        ..config()
    })
    .await;

    let err = send_raw(
        &reqwest::Client::new(),
        &sandbox,
        "/whatsapp/message/text",
        Some(KEY),
        text_body(TO, "hi").to_string(),
    )
    .await
    .err()
    .expect("no answer");
    assert!(!err.is_connect(), "the request was sent: {err:?}");
    assert!(!err.is_timeout(), "{err:?}");

    // On the wire: the request goes out, and the socket ends with zero bytes back.
    let addr = sandbox.addr();
    let raw = tokio::task::spawn_blocking(move || {
        let mut stream = std::net::TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let body = text_body(TO, "raw").to_string();
        let request = format!(
            "POST /whatsapp/message/text HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {KEY}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes()).unwrap();
        let mut answer = Vec::new();
        // EOF or a reset both mean "closed"; what matters is that no byte came back.
        let _ = stream.read_to_end(&mut answer);
        answer
    })
    .await
    .unwrap();
    assert!(raw.is_empty(), "got {:?}", String::from_utf8_lossy(&raw));

    assert!(
        sandbox.messages().is_empty(),
        "a dropped message is not recorded"
    );
    assert_eq!(sandbox.stats().dropped, 2);
    sandbox.shutdown().await;
}

#[tokio::test]
async fn a_slow_answer_is_recorded_before_the_client_gives_up() {
    let sandbox = start(SandboxConfig {
        slow_rate: 1.0,
        slow: Duration::from_secs(3),
        ..config()
    })
    .await;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let err = send_raw(
        &client,
        &sandbox,
        "/whatsapp/message/text",
        Some(KEY),
        text_body(TO, "late").to_string(),
    )
    .await
    .err()
    .expect("the client times out");
    assert!(err.is_timeout(), "{err:?}");
    let messages = recorded(&sandbox, "").await;
    assert_eq!(
        messages.len(),
        1,
        "delivered although the client saw no answer"
    );
    assert_eq!(messages[0].body["content"]["text"], "late");
    assert_eq!(stats(&sandbox).await.slow, 1);
    sandbox.shutdown().await;
}

#[tokio::test]
async fn latency_delays_every_answer() {
    let sandbox = start(SandboxConfig {
        latency: Duration::from_millis(150),
        ..config()
    })
    .await;
    let started = Instant::now();
    let answer = send(&sandbox, "/whatsapp/message/text", text_body(TO, "hi")).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert!(started.elapsed() >= Duration::from_millis(150));
    sandbox.shutdown().await;
}

#[tokio::test]
async fn contacts_paginate_and_create() {
    let sandbox = start(config()).await;
    let first = get(&sandbox, "/contacts", Some(KEY)).await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(first.body["success"], json!(true));
    assert_eq!(
        first.body["data"]["pagination"],
        json!({"total": 2, "page": 1, "per_page": 10, "total_pages": 1})
    );
    assert_eq!(
        first.body["data"]["contacts"][0]["id"],
        "contact_20250411ABC"
    );
    assert_eq!(first.body["data"]["contacts"][1]["name"], "Jane Smith");

    let client = reqwest::Client::new();
    for i in 0..23 {
        let response = client
            .post(format!("{}/contacts", sandbox.base_url()))
            .bearer_auth(KEY)
            .json(&json!({"name": format!("Person {i}"), "phone_number": format!("+2547000000{i:02}")}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::CREATED);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["success"], json!(true));
        assert_eq!(body["message"], "Contact created successfully");
        let contact = &body["data"]["contact"];
        assert_eq!(contact["name"], format!("Person {i}").as_str());
        assert!(contact["id"].as_str().unwrap().starts_with("contact_"));
        assert_eq!(contact["created_at"], contact["updated_at"]);
    }

    let mut ids = Vec::new();
    for (page, expected) in [(1, 10), (2, 10), (3, 5), (4, 0)] {
        let answer = get(
            &sandbox,
            &format!("/contacts?page={page}&per_page=10"),
            Some(KEY),
        )
        .await;
        assert_eq!(answer.status, StatusCode::OK);
        let contacts = answer.body["data"]["contacts"].as_array().unwrap();
        assert_eq!(contacts.len(), expected, "page {page}");
        assert_eq!(
            answer.body["data"]["pagination"],
            json!({"total": 25, "page": page, "per_page": 10, "total_pages": 3})
        );
        ids.extend(
            contacts
                .iter()
                .map(|c| c["id"].as_str().unwrap().to_owned()),
        );
    }
    let count = ids.len();
    ids.sort();
    ids.dedup();
    assert_eq!(
        (count, ids.len()),
        (25, 25),
        "every contact once, ids unique"
    );

    for bad in ["per_page=101", "per_page=0", "page=0", "page=abc"] {
        let answer = get(&sandbox, &format!("/contacts?{bad}"), Some(KEY)).await;
        let details = assert_error(&answer, StatusCode::BAD_REQUEST, "validation_error");
        let field = bad.split('=').next().unwrap();
        assert!(details.starts_with(field), "{bad}: {details}");
    }

    for (body, field) in [
        (json!({"name": " ", "phone_number": "1234567890"}), "name"),
        (
            json!({"name": "A", "phone_number": "12-34"}),
            "phone_number",
        ),
        (json!({"name": "A"}), "body: missing field `phone_number`"),
        (
            json!({"name": "A", "phone_number": "1234567", "x": 1}),
            "x: unknown field `x`",
        ),
    ] {
        let answer = send_raw(&client, &sandbox, "/contacts", Some(KEY), body.to_string())
            .await
            .unwrap();
        let details = assert_error(&answer, StatusCode::BAD_REQUEST, "validation_error");
        assert!(details.starts_with(field), "{body}: {details}");
    }
    sandbox.shutdown().await;
}

#[tokio::test]
async fn contact_by_id_and_not_found() {
    let sandbox = start(config()).await;
    let found = get(&sandbox, "/contacts/contact_20250411XYZ", Some(KEY)).await;
    assert_eq!(found.status, StatusCode::OK);
    assert_eq!(
        found.body,
        json!({"success": true, "data": {"contact": {
            "id": "contact_20250411XYZ", "name": "Jane Smith", "phone_number": "9876543210",
            "created_at": "2025-04-11T11:45:00Z", "updated_at": "2025-04-11T11:45:00Z"}}})
    );
    let missing = get(&sandbox, "/contacts/contact_nope", Some(KEY)).await;
    let details = assert_error(&missing, StatusCode::NOT_FOUND, "not_found");
    assert!(details.contains("contact_nope"), "{details}");

    let route = get(&sandbox, "/whatsapp/message/video", Some(KEY)).await;
    assert_error(&route, StatusCode::NOT_FOUND, "not_found");
    let method = get(&sandbox, "/whatsapp/message/text", Some(KEY)).await;
    assert_error(
        &method,
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
    );
    assert_eq!(method.headers["allow"], "POST");

    assert_eq!(stats(&sandbox).await.not_found, 2);
    let empty = start(SandboxConfig {
        seed_contacts: false,
        ..config()
    })
    .await;
    let page = get(&empty, "/contacts", Some(KEY)).await;
    assert_eq!(page.body["data"]["contacts"], json!([]));
    assert_eq!(page.body["data"]["pagination"]["total"], 0);
    empty.shutdown().await;
    sandbox.shutdown().await;
}

#[tokio::test]
async fn inspection_endpoints_filter_and_count() {
    let sandbox = start(config()).await;
    for (to, text) in [(TO, "a"), ("+15551234567", "b"), (TO, "c")] {
        let answer = send(&sandbox, "/whatsapp/message/text", text_body(to, text)).await;
        assert_eq!(answer.status, StatusCode::OK);
    }
    let bad = send(&sandbox, "/whatsapp/message/text", text_body(TO, "")).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);

    let mine = recorded(&sandbox, "?to=%2B254712345678").await;
    let texts: Vec<&str> = mine
        .iter()
        .map(|m| m.body["content"]["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts, ["a", "c"]);
    assert_eq!(
        mine[1].seq, 3,
        "seq is the global order, not the filtered one"
    );
    // An unencoded `+` arrives as a space; the filter still finds the number.
    assert_eq!(recorded(&sandbox, "?to=+15551234567").await.len(), 1);
    assert_eq!(
        stats(&sandbox).await,
        SandboxStats {
            accepted: 3,
            validation_errors: 1,
            ..SandboxStats::default()
        }
    );
    sandbox.shutdown().await;
}

#[tokio::test]
async fn the_log_shows_each_message_while_the_server_runs() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sent.jsonl");
    let sandbox = start(SandboxConfig {
        log: Some(path.clone()),
        ..config()
    })
    .await;
    for text in ["one", "two"] {
        let answer = send(&sandbox, "/whatsapp/message/text", text_body(TO, text)).await;
        assert_eq!(answer.status, StatusCode::OK);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    let lines = loop {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let lines: Vec<String> = text.lines().map(str::to_owned).collect();
        if lines.len() == 2 || Instant::now() > deadline {
            break lines;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(lines.len(), 2, "{lines:?}");
    let logged: Vec<RecordedMessage> = lines
        .iter()
        .map(|l| serde_json::from_str(l).expect("each line is a RecordedMessage"))
        .collect();
    let mut logged_seq: Vec<u64> = logged.iter().map(|m| m.seq).collect();
    logged_seq.sort();
    assert_eq!(logged_seq, [1, 2]);
    assert_eq!(logged, sandbox.messages(), "the log and memory agree");
    sandbox.shutdown().await;
}

#[tokio::test]
async fn openapi_describes_every_endpoint() {
    let sandbox = start(config()).await;
    let doc = get(&sandbox, "/openapi.json", None).await;
    assert_eq!(doc.status, StatusCode::OK);
    assert!(doc.body["openapi"].as_str().unwrap().starts_with("3.0"));
    for path in [
        "/whatsapp/message/text",
        "/whatsapp/message/media",
        "/whatsapp/message/interactive",
        "/whatsapp/message/template",
        "/whatsapp/message/location",
        "/contacts",
        "/contacts/{contact_id}",
    ] {
        assert!(doc.body["paths"].get(path).is_some(), "{path}");
    }
    assert_eq!(
        doc.body["components"]["securitySchemes"]["bearerAuth"]["scheme"],
        "bearer"
    );
    sandbox.shutdown().await;
}

#[tokio::test]
async fn the_router_also_serves_in_process() {
    use convers8_campaign::sandbox::{SandboxState, app};
    // Through axum's own server a drop cannot hang up, so it is answered 500 instead.
    let state = SandboxState::new(SandboxConfig {
        drop_rate: 1.0,
        ..config()
    })
    .unwrap();
    let listener = tokio::net::TcpListener::bind(loopback()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move { axum::serve(listener, app(state)).await });
    let response = reqwest::Client::new()
        .post(format!("http://{addr}/whatsapp/message/text"))
        .bearer_auth(KEY)
        .json(&text_body(TO, "hi"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "internal_error");
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_sends_get_unique_sequence_numbers_and_ids() {
    let sandbox = start(config()).await;
    let client = reqwest::Client::new();
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..64 {
        let client = client.clone();
        let url = format!("{}/whatsapp/message/text", sandbox.base_url());
        tasks.spawn(async move {
            let mut ids = Vec::new();
            for i in 0..20 {
                let response = client
                    .post(&url)
                    .bearer_auth(KEY)
                    .json(&text_body(TO, &format!("w{worker} m{i}")))
                    .send()
                    .await
                    .expect("answered");
                assert_eq!(response.status(), StatusCode::OK);
                let body: Value = response.json().await.expect("JSON");
                ids.push(body["message_id"].as_str().unwrap().to_owned());
            }
            ids
        });
    }
    let mut ids = Vec::new();
    while let Some(batch) = tasks.join_next().await {
        ids.extend(batch.expect("worker finished"));
    }
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 64 * 20, "every message id unique");
    let messages = sandbox.messages();
    let seqs: Vec<u64> = messages.iter().map(|m| m.seq).collect();
    assert_eq!(seqs, (1..=64 * 20).collect::<Vec<u64>>());
    assert_eq!(sandbox.stats().accepted, 64 * 20);
    sandbox.shutdown().await;
}
