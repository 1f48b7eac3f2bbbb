//! Send one text message with the library's client.
//!
//! With `CONVERS8_API_KEY` set this talks to the real API (or to
//! `CONVERS8_BASE_URL`); without it, it starts a local sandbox first, so it
//! runs anywhere:
//!
//! ```sh
//! cargo run --example send_one -- +254712345678 "Habari from Rust"
//! ```

use convers8_campaign::api::model::TextContent;
use convers8_campaign::api::{ApiKey, Client, ClientConfig};
use convers8_campaign::sandbox::{Sandbox, SandboxConfig};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let to = args.next().unwrap_or_else(|| "+254712345678".to_owned());
    let text = args.next().unwrap_or_else(|| "Habari from Rust".to_owned());

    // A real key means a real send; otherwise rehearse against a sandbox.
    let (config, sandbox) = match ApiKey::from_env()? {
        Some(key) => {
            let base = std::env::var("CONVERS8_BASE_URL")
                .unwrap_or_else(|_| convers8_campaign::api::client::DEFAULT_BASE_URL.to_owned());
            (ClientConfig::new(base, key), None)
        }
        None => {
            let sandbox = Sandbox::start(SandboxConfig::default(), "127.0.0.1:0".parse()?).await?;
            let key = ApiKey::new(SandboxConfig::default().api_key, "the sandbox")?;
            println!(
                "no CONVERS8_API_KEY: using a local sandbox at {}",
                sandbox.base_url()
            );
            (ClientConfig::new(sandbox.base_url(), key), Some(sandbox))
        }
    };

    let client = Client::new(config)?;
    let sent = client
        .send_text(&to, Some("Friend"), TextContent { text })
        .await?;
    println!("sent to {to}: message_id {}", sent.message_id);

    if let Some(sandbox) = sandbox {
        sandbox.shutdown().await;
    }
    Ok(())
}
