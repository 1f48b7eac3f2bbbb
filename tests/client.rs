//! The client against the in-process sandbox over real HTTP on loopback:
//! every endpoint round-trips, every error class is provoked and classified,
//! and no formatting of anything ever shows the key.

use std::time::Duration;

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
