//! A tiny interactive courier client, for trying courier by hand (`scripts/client`
//! runs it with a fresh token).
//!
//! `cargo run --example client -- <user_id> [device] [ws_url]`, with the user's JWT in
//! `COURIER_TOKEN`. Prints what arrives and acks every delivery batch at once; sends
//! each stdin line `<chat_id> <text>` as a batch of one message from `<user_id>`, and a
//! line starting with `{` as a raw frame (to try the protocol's errors).

use std::error::Error;
use std::time::{SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{self, Message};

const USAGE: &str = "usage: client <user_id> [device] [ws_url], with the token in COURIER_TOKEN";

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let mut args = std::env::args().skip(1);
    let user: u64 = args.next().and_then(|a| a.parse().ok()).ok_or(USAGE)?;
    let device = args.next().unwrap_or_else(|| "default".into());
    let url = args
        .next()
        .unwrap_or_else(|| "ws://127.0.0.1:8080/ws".into());
    let token = std::env::var("COURIER_TOKEN").map_err(|_| USAGE)?;

    let mut request = format!("{url}?device={device}").into_client_request()?;
    request.headers_mut().insert("token", token.parse()?);
    let ws = match tokio_tungstenite::connect_async(request).await {
        Ok((ws, _)) => ws,
        Err(tungstenite::Error::Http(response)) => {
            let body = response.body().as_deref().unwrap_or_default();
            let body = String::from_utf8_lossy(body);
            return Err(format!("refused: {} {body}", response.status()).into());
        }
        Err(e) => return Err(format!("cannot connect to {url}: {e}").into()),
    };
    println!("connected as user {user}, device {device}; type `<chat_id> <text>`, Ctrl-D to quit");

    let (mut sink, mut stream) = ws.split();
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut time_key = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    loop {
        tokio::select! {
            line = lines.next_line() => {
                let Some(line) = line? else { break };
                time_key += 1;
                match outgoing(user, &line, time_key) {
                    Some(frame) => sink.send(Message::text(frame)).await?,
                    None if line.trim().is_empty() => {}
                    None => println!("? type `<chat_id> <text>`, or a JSON frame"),
                }
            }
            frame = stream.next() => match frame {
                None => { println!("connection ended"); break }
                Some(Err(e)) => return Err(e.into()),
                Some(Ok(Message::Text(text))) => {
                    if let Some(ack) = show(text.as_str()) {
                        sink.send(Message::text(ack)).await?;
                    }
                }
                Some(Ok(Message::Close(frame))) => {
                    println!("closed by courier: {frame:?}");
                    break;
                }
                Some(Ok(_)) => {}
            }
        }
    }
    // The socket may already be gone; there is nothing left to do either way.
    let _ = sink.close().await;
    Ok(())
}

/// The frame for a typed line: `<chat_id> <text>` as a batch of one, `{...}` as is.
fn outgoing(user: u64, line: &str, time_key: i64) -> Option<String> {
    let line = line.trim();
    if line.starts_with('{') {
        return Some(line.to_string());
    }
    let (chat, text) = line.split_once(char::is_whitespace)?;
    let chat: u64 = chat.parse().ok()?;
    let message = json!({"sender_id": user, "chat_id": chat, "content_text": text.trim()});
    Some(json!({"type": "messages", "time_key": time_key, "messages": [message]}).to_string())
}

/// Prints a frame from courier; returns the ack to send for a delivery batch.
fn show(text: &str) -> Option<String> {
    let Ok(frame) = serde_json::from_str::<Value>(text) else {
        println!("<< {text}");
        return None;
    };
    match frame["type"].as_str() {
        Some("messages") => {
            for m in frame["messages"].as_array().into_iter().flatten() {
                println!(
                    "[chat {}] user {}: {}   (id {})",
                    m["chat_id"],
                    m["sender_id"],
                    m["content_text"].as_str().unwrap_or_default(),
                    m["id"]
                );
            }
            Some(json!({"type": "ack", "time_key": frame["time_key"]}).to_string())
        }
        Some("ack") => {
            println!("(sent, time_key {})", frame["time_key"]);
            None
        }
        Some("error") => {
            println!(
                "error {}: {}",
                frame["code"].as_str().unwrap_or_default(),
                frame["message"].as_str().unwrap_or_default()
            );
            None
        }
        _ => {
            println!("<< {text}");
            None
        }
    }
}
