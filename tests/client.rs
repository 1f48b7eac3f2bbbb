//! The client against the in-process sandbox over real HTTP on loopback:
//! every endpoint round-trips, every error class is provoked and classified,
//! and no formatting of anything ever shows the key. Answers the sandbox
//! never gives (a proxy's page, an endless body) come from bare sockets.

use std::time::Duration;

use convers8_campaign::api::client::MAX_RESPONSE_BYTES;
use convers8_campaign::api::model::{
    ButtonReply, InteractiveAction, InteractiveContent, ListRow, ListSection, LocationContent,
    MediaContent, MediaLink, NewContact, ReplyButton, TemplateComponent, TemplateContent,
    TemplateLanguage, TemplateParameter, TextContent, TextObject,
};
use convers8_campaign::api::{ApiError, ApiKey, Client, ClientConfig, Disposition};
use convers8_campaign::sandbox::{Sandbox, SandboxConfig};

const KEY: &str = "sk_test_DO_NOT_LEAK_42";

async fn sandbox(config: SandboxConfig) -> Sandbox {
    Sandbox::start(
        SandboxConfig {
            api_key: KEY.into(),
            ..config
        },
        "127.0.0.1:0".parse().expect("addr"),
    )
    .await
    .expect("sandbox starts")
}

fn client_for(base_url: &str, key: &str, timeout: Duration) -> Client {
    let mut config = ClientConfig::new(base_url, ApiKey::new(key, "test").expect("key"));
    config.timeout = timeout;
    Client::new(config).expect("client")
}

fn client(sandbox: &Sandbox) -> Client {
    client_for(&sandbox.base_url(), KEY, Duration::from_secs(5))
}

fn text(s: &str) -> TextContent {
    TextContent { text: s.into() }
}

/// Neither the error's message nor its debug form may carry the key.
fn assert_no_key(error: &ApiError) {
    for shown in [error.to_string(), format!("{error:?}"), error.details()] {
        assert!(!shown.contains(KEY), "key leaked: {shown}");
    }
}

#[tokio::test]
async fn every_send_endpoint_round_trips() {
    let sb = sandbox(SandboxConfig {
        rate: 0.0,
        ..SandboxConfig::default()
    })
    .await;
    let c = client(&sb);
    let to = "+254712345678";
    let r = c
        .send_text(to, Some("Amina"), text("Habari & <3"))
        .await
        .expect("text");
    assert!(r.message_id.starts_with("wamid."));
    c.send_media(
        to,
        Some("Amina"),
        MediaContent {
            media_type: "image".into(),
            url: "https://cdn.example.com/a.png".into(),
            caption: Some("Look".into()),
        },
    )
    .await
    .expect("media");
    let buttons = InteractiveContent {
        interactive_type: "button".into(),
        header: None,
        body: TextObject {
            text: "Coming?".into(),
        },
        footer: None,
        action: InteractiveAction {
            buttons: Some(vec![ReplyButton {
                button_type: "reply".into(),
                reply: ButtonReply {
                    id: "yes".into(),
                    title: "Yes".into(),
                },
            }]),
            sections: None,
        },
    };
    c.send_interactive(to, None, buttons)
        .await
        .expect("buttons");
    let list = InteractiveContent {
        interactive_type: "list".into(),
        header: None,
        body: TextObject {
            text: "Pick".into(),
        },
        footer: None,
        action: InteractiveAction {
            buttons: None,
            sections: Some(vec![ListSection {
                title: Some("Mains".into()),
                rows: vec![ListRow {
                    id: "a".into(),
                    title: "Pilau".into(),
                    description: None,
                }],
            }]),
        },
    };
    c.send_interactive(to, None, list).await.expect("list");
    let template = TemplateContent {
        template_name: "order_update".into(),
        language: TemplateLanguage { code: "en".into() },
        components: Some(vec![TemplateComponent {
            component_type: "header".into(),
            parameters: Some(vec![TemplateParameter {
                parameter_type: "document".into(),
                text: None,
                image: None,
                document: Some(MediaLink {
                    link: "https://cdn.example.com/i.pdf".into(),
                }),
                video: None,
            }]),
        }]),
    };
    c.send_template(to, None, template).await.expect("template");
    c.send_location(
        to,
        Some("Amina"),
        LocationContent {
            latitude: "-1.2921".into(),
            longitude: "36.8219".into(),
            name: Some("Shop".into()),
            address: None,
        },
    )
    .await
    .expect("location");

    let got = sb.messages();
    let kinds: Vec<&str> = got.iter().map(|m| m.kind.as_str()).collect();
    assert_eq!(
        kinds,
        [
            "text",
            "media",
            "interactive",
            "interactive",
            "template",
            "location"
        ]
    );
    assert_eq!(got[0].body["content"]["text"], "Habari & <3");
    // The location endpoint names the recipient `contact`.
    assert_eq!(got[5].body["contact"], "Amina");
    assert!(got[5].body.get("name").is_none());
    sb.shutdown().await;
}

#[tokio::test]
async fn contacts_create_get_and_page_through() {
    let sb = sandbox(SandboxConfig {
        seed_contacts: false,
        ..SandboxConfig::default()
    })
    .await;
    let c = client(&sb);
    let mut ids = Vec::new();
    for i in 0..23 {
        let created = c
            .create_contact(&NewContact {
                name: format!("Person {i}"),
                phone_number: format!("+2547000000{i:02}"),
            })
            .await
            .expect("create");
        ids.push(created.id);
    }
    let fetched = c.get_contact(&ids[7]).await.expect("get");
    assert_eq!(fetched.name, "Person 7");
    let page = c.list_contacts_page(3, 10).await.expect("page 3");
    let p = page.pagination.expect("pagination");
    assert_eq!((p.total, p.page, p.per_page, p.total_pages), (23, 3, 10, 3));
    assert_eq!(page.contacts.len(), 3);
    let all = c.list_contacts().await.expect("all pages");
    assert_eq!(all.len(), 23);
    let mut seen: Vec<_> = all.iter().map(|c| c.id.clone()).collect();
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 23, "no contact twice across pages");
    sb.shutdown().await;
}

#[tokio::test]
async fn every_error_class_is_provoked_and_classified() {
    // Rate limited, with Retry-After.
    let sb = sandbox(SandboxConfig {
        rate: 1.0,
        burst: 1,
        ..SandboxConfig::default()
    })
    .await;
    let c = client(&sb);
    c.send_text("+254712345678", None, text("one"))
        .await
        .expect("first fits the bucket");
    let e = c
        .send_text("+254712345678", None, text("two"))
        .await
        .expect_err("429");
    assert!(
        matches!(e, ApiError::RateLimited { retry_after: Some(d), .. } if d >= Duration::from_secs(1)),
        "{e:?}"
    );
    assert_eq!(e.disposition(), Disposition::RateLimited);
    assert_no_key(&e);

    // Unauthorized: a wrong key, whose text must not show up either.
    let wrong = client_for(&sb.base_url(), "sk_wrong_SECRET", Duration::from_secs(5));
    let e = wrong.list_contacts_page(1, 10).await.expect_err("401");
    assert!(matches!(e, ApiError::Unauthorized { .. }), "{e:?}");
    assert!(!format!("{e} {e:?}").contains("sk_wrong_SECRET"));

    sb.shutdown().await;

    // Validation, naming the field; not found. (The bucket is checked before
    // the body, so this needs a sandbox without a rate limit.)
    let sb = sandbox(SandboxConfig {
        rate: 0.0,
        ..SandboxConfig::default()
    })
    .await;
    let c = client(&sb);
    let e = c.send_text("0712", None, text("x")).await.expect_err("400");
    match &e {
        ApiError::Validation {
            details: Some(d), ..
        } => assert!(d.contains("to"), "{d}"),
        other => panic!("expected validation, got {other:?}"),
    }
    assert_eq!(e.disposition(), Disposition::Permanent);
    let e = c.get_contact("contact_nope").await.expect_err("404");
    assert!(matches!(e, ApiError::NotFound { .. }), "{e:?}");
    assert_no_key(&e);
    sb.shutdown().await;

    // Server error.
    let sb = sandbox(SandboxConfig {
        rate: 0.0,
        fail_rate: 1.0,
        ..SandboxConfig::default()
    })
    .await;
    let e = client(&sb)
        .send_text("+254712345678", None, text("x"))
        .await
        .expect_err("500");
    assert!(matches!(e, ApiError::Server { status: 500, .. }), "{e:?}");
    assert_eq!(e.disposition(), Disposition::Retry);
    assert_no_key(&e);
    sb.shutdown().await;

    // Maybe delivered: the connection closes after the request was written.
    let sb = sandbox(SandboxConfig {
        rate: 0.0,
        drop_rate: 1.0,
        ..SandboxConfig::default()
    })
    .await;
    let e = client(&sb)
        .send_text("+254712345678", None, text("x"))
        .await
        .expect_err("drop");
    assert!(matches!(e, ApiError::MaybeDelivered { .. }), "{e:?}");
    assert_eq!(e.disposition(), Disposition::Uncertain);
    sb.shutdown().await;

    // Maybe delivered: accepted, but the answer comes after the client gave up.
    let sb = sandbox(SandboxConfig {
        rate: 0.0,
        slow_rate: 1.0,
        slow: Duration::from_secs(2),
        ..SandboxConfig::default()
    })
    .await;
    let impatient = client_for(&sb.base_url(), KEY, Duration::from_millis(300));
    let e = impatient
        .send_text("+254712345678", None, text("x"))
        .await
        .expect_err("timeout");
    assert!(matches!(e, ApiError::MaybeDelivered { .. }), "{e:?}");
    assert_eq!(sb.messages().len(), 1, "the sandbox did accept it");
    assert_no_key(&e);
    sb.shutdown().await;

    // Never sent: nothing listens on the port.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let e = client_for(
        &format!("http://127.0.0.1:{port}"),
        KEY,
        Duration::from_secs(2),
    )
    .send_text("+254712345678", None, text("x"))
    .await
    .expect_err("refused");
    assert!(matches!(e, ApiError::NeverSent { .. }), "{e:?}");
    assert_eq!(e.disposition(), Disposition::Retry);
    assert_no_key(&e);
}

#[tokio::test]
async fn an_undocumented_answer_is_unexpected_with_an_excerpt() {
    // A proxy in the way answers HTML: not the sandbox, a bare socket.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        if let Ok((mut sock, _)) = listener.accept().await {
            let mut buf = vec![0u8; 4096];
            let _ = sock.read(&mut buf).await;
            let body = "<html>I'm a teapot</html>";
            let answer = format!(
                "HTTP/1.1 418 I'm a teapot\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = sock.write_all(answer.as_bytes()).await;
        }
    });
    let e = client_for(&format!("http://{addr}"), KEY, Duration::from_secs(2))
        .send_text("+254712345678", None, text("x"))
        .await
        .expect_err("418");
    match &e {
        ApiError::Unexpected {
            status: 418,
            excerpt,
        } => assert!(excerpt.contains("teapot")),
        other => panic!("{other:?}"),
    }
    assert_eq!(e.disposition(), Disposition::Permanent);
    assert_no_key(&e);
}

#[test]
fn the_client_and_its_key_never_show_the_key() {
    let key = ApiKey::new(KEY, "test").expect("key");
    let config = ClientConfig::new("http://127.0.0.1:9", key.clone());
    let client = Client::new(config.clone()).expect("client");
    for shown in [
        format!("{key:?}"),
        format!("{config:?}"),
        format!("{client:?}"),
    ] {
        assert!(!shown.contains(KEY), "{shown}");
    }
}

/// Reads one whole HTTP request (its head, then a body of its
/// `Content-Length`), so an answer goes to a client that has finished sending.
async fn read_request(sock: &mut tokio::net::TcpStream) {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            if got.len() >= end + 4 + length {
                return;
            }
        }
        match sock.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// How much a hostile test server writes at most: a thousand times the client's
/// limit, so a client that reads it all is caught; but bounded and then cut
/// off mid-body, so such a client fails at once instead of filling memory
/// until its timeout.
const HOSTILE_BYTES: u64 = 64 * 1024 * 1024;

/// A server that answers one request with `head` and then body bytes until
/// [`HOSTILE_BYTES`] or until the client hangs up; `chunked` frames them as
/// HTTP chunks. Yields how many bytes the client let it write.
async fn hostile_server(
    head: &'static str,
    chunked: bool,
) -> (String, tokio::task::JoinHandle<u64>) {
    use tokio::io::AsyncWriteExt;
    // A small, fixed send buffer (inherited by the accepted socket), so what
    // the server manages to write measures what the client read, not how
    // large the kernel's buffers are tuned on this machine.
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .set_send_buffer_size(256 * 1024)
        .expect("send buffer size");
    socket
        .bind("127.0.0.1:0".parse().expect("addr"))
        .expect("bind");
    let listener = socket.listen(4).expect("listen");
    let addr = listener.local_addr().expect("addr");
    let server = tokio::spawn(async move {
        let Ok((mut sock, _)) = listener.accept().await else {
            return 0;
        };
        read_request(&mut sock).await;
        if sock.write_all(head.as_bytes()).await.is_err() {
            return 0;
        }
        let data = vec![b'x'; 16 * 1024];
        let mut frame = Vec::new();
        if chunked {
            frame.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
            frame.extend_from_slice(&data);
            frame.extend_from_slice(b"\r\n");
        } else {
            frame = data;
        }
        let mut written = 0u64;
        while written < HOSTILE_BYTES {
            if sock.write_all(&frame).await.is_err() {
                break;
            }
            written += frame.len() as u64;
        }
        written
    });
    (format!("http://{addr}"), server)
}

/// Sends one message to a hostile server and checks the client stopped
/// reading at its limit: an `unexpected_response` that may have delivered,
/// having let the server write only a bounded amount.
async fn assert_hung_up_on(head: &'static str, chunked: bool) {
    let (url, server) = hostile_server(head, chunked).await;
    // The timeout is only a safety net: the answer must be refused long before.
    let client = client_for(&url, KEY, Duration::from_secs(60));
    let e = client
        .send_text("+254712345678", None, text("x"))
        .await
        .expect_err("an endless answer is an error");
    assert!(
        matches!(&e, ApiError::Oversized { status: 200, limit, .. } if *limit == MAX_RESPONSE_BYTES),
        "{e:?}"
    );
    assert_eq!(e.code(), "unexpected_response");
    assert_eq!(e.disposition(), Disposition::Uncertain);
    assert!(
        e.to_string()
            .contains(&format!("larger than the {MAX_RESPONSE_BYTES}-byte limit")),
        "{e}"
    );
    assert_no_key(&e);
    // The client is still alive: the server stops because the connection was
    // closed, not because the client went away.
    let written = tokio::time::timeout(Duration::from_secs(60), server)
        .await
        .expect("the server is stopped by the client hanging up")
        .expect("server task");
    assert!(
        written < 8 * 1024 * 1024,
        "the client let the server write {written} bytes"
    );
    drop(client);
}

#[tokio::test]
async fn an_endless_chunked_answer_is_cut_off_at_the_limit() {
    assert_hung_up_on(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n",
        true,
    )
    .await;
}

#[tokio::test]
async fn a_huge_declared_length_is_refused_before_reading() {
    assert_hung_up_on(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 400000000\r\n\r\n",
        false,
    )
    .await;
}

/// Answers one request with a chunked 200 whose body is a valid send answer
/// padded with spaces to exactly `size` bytes.
async fn padded_answer_server(size: usize) -> String {
    use tokio::io::AsyncWriteExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let json = r#"{"message_id":"wamid.padded","type":"text"}"#;
    let mut body = json.as_bytes().to_vec();
    body.resize(size, b' ');
    tokio::spawn(async move {
        if let Ok((mut sock, _)) = listener.accept().await {
            read_request(&mut sock).await;
            let mut answer = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n".to_vec();
            for piece in body.chunks(10_000) {
                answer.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
                answer.extend_from_slice(piece);
                answer.extend_from_slice(b"\r\n");
            }
            answer.extend_from_slice(b"0\r\n\r\n");
            let _ = sock.write_all(&answer).await;
        }
    });
    format!("http://{addr}")
}

#[tokio::test]
async fn an_answer_of_exactly_the_limit_is_read_and_one_byte_more_is_not() {
    let url = padded_answer_server(MAX_RESPONSE_BYTES).await;
    let sent = client_for(&url, KEY, Duration::from_secs(30))
        .send_text("+254712345678", None, text("x"))
        .await
        .expect("an answer of exactly the limit is read");
    assert_eq!(sent.message_id, "wamid.padded");

    let url = padded_answer_server(MAX_RESPONSE_BYTES + 1).await;
    let e = client_for(&url, KEY, Duration::from_secs(30))
        .send_text("+254712345678", None, text("x"))
        .await
        .expect_err("one byte over the limit");
    assert!(
        matches!(e, ApiError::Oversized { status: 200, .. }),
        "{e:?}"
    );
    assert_eq!(e.disposition(), Disposition::Uncertain);
}

#[tokio::test]
async fn a_proxys_502_page_may_have_delivered_and_is_not_resent() {
    // nginx's page when the API behind it failed mid-request: no envelope.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        if let Ok((mut sock, _)) = listener.accept().await {
            read_request(&mut sock).await;
            let body = "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n";
            let answer = format!(
                "HTTP/1.1 502 Bad Gateway\r\ncontent-type: text/html\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = sock.write_all(answer.as_bytes()).await;
        }
    });
    let e = client_for(&format!("http://{addr}"), KEY, Duration::from_secs(30))
        .send_text("+254712345678", None, text("x"))
        .await
        .expect_err("502");
    match &e {
        ApiError::Gateway {
            status: 502,
            excerpt,
        } => assert!(excerpt.contains("502 Bad Gateway"), "{excerpt}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(e.code(), "gateway_error");
    assert_eq!(e.disposition(), Disposition::Uncertain);
    assert!(e.details().starts_with("HTTP 502: "), "{}", e.details());
    assert!(!e.to_string().contains('\n'), "{e}");
    assert_no_key(&e);
}

#[test]
fn plain_http_to_another_host_is_refused_unless_allowed() {
    let key = ApiKey::new(KEY, "test").expect("key");
    // Never contacted: the refusal comes before any connection.
    let config = ClientConfig::new("http://192.0.2.7:8080", key);
    let err = Client::new(config.clone()).expect_err("plain http to another host");
    let shown = err.to_string();
    assert!(shown.contains("http://192.0.2.7:8080/"), "{shown}");
    assert!(shown.contains("--allow-insecure-http"), "{shown}");
    assert!(!shown.contains(KEY), "{shown}");
    let allowed = ClientConfig {
        allow_insecure_http: true,
        ..config
    };
    assert!(Client::new(allowed).is_ok());
}
