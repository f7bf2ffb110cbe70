//! An interactive terminal chat on courier's Rust SDK: `scripts/client` runs it with
//! a fresh token. Run `cargo run -p courier-client --example chat -- --help`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use courier_client::{
    ClientFrame, ConnectOptions, ConnectionState, Incoming, ServerFrame, TimeKey,
    protocol::{DeliveryBatch, OutgoingMessage},
};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::task::JoinSet;

const HELP: &str = "\
chat: an interactive courier client

usage: chat [--url WS_URL] [--device ID] [--outbox FILE] [--raw]
  with the user's JWT in COURIER_TOKEN (scripts/client <user_id> [device] mints one)

Type `<chat_id> <text>` and Enter to send. Each message shows `queued`, then
`acked` once courier has written it for every member of the chat, or why it was
rejected. Delivered messages are printed and acked. Ctrl-D waits for the unacked
messages, then quits; Ctrl-C quits at once.

options:
  --url WS_URL    courier's WebSocket URL (default $COURIER_WS_URL, else ws://127.0.0.1:8080/ws)
  --device ID     the device id, [A-Za-z0-9_-]{1,64} (default: default)
  --outbox FILE   keep unacked messages in FILE: a message typed while courier is down,
                  or before a Ctrl-C, is sent when chat starts again with the same FILE
  --raw           frame level: print every frame as received, send a line starting
                  with `{` as is (to try the protocol's errors), ack deliveries at once
  -h, --help      this text";

struct Args {
    url: String,
    device: String,
    outbox: Option<PathBuf>,
    raw: bool,
}

fn parse_args() -> Result<Option<Args>, String> {
    let mut args = Args {
        url: std::env::var("COURIER_WS_URL").unwrap_or_else(|_| "ws://127.0.0.1:8080/ws".into()),
        device: "default".into(),
        outbox: None,
        raw: false,
    };
    let mut words = std::env::args().skip(1);
    while let Some(word) = words.next() {
        let mut value = |name: &str| words.next().ok_or(format!("{name} needs a value"));
        match word.as_str() {
            "-h" | "--help" => return Ok(None),
            "--url" => args.url = value("--url")?,
            "--device" => args.device = value("--device")?,
            "--outbox" => args.outbox = Some(value("--outbox")?.into()),
            "--raw" => args.raw = true,
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(Some(args))
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(Some(args)) => args,
        Ok(None) => {
            println!("{HELP}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("chat: {e}\n\n{HELP}");
            return ExitCode::from(2);
        }
    };
    let Ok(token) = std::env::var("COURIER_TOKEN") else {
        eprintln!("chat: set COURIER_TOKEN to the user's JWT\n\n{HELP}");
        return ExitCode::from(2);
    };
    let result = if args.raw {
        raw(&args, token).await
    } else {
        chat(&args, token).await
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("chat: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `<chat_id> <text>` → `(chat_id, text)`.
fn parse_line(line: &str) -> Option<(u64, &str)> {
    let (chat, text) = line.trim().split_once(char::is_whitespace)?;
    Some((chat.parse().ok()?, text.trim()))
}

/// The SDK: sends resolve on ack, deliveries are printed once and acked.
async fn chat(args: &Args, token: String) -> Result<(), Box<dyn std::error::Error>> {
    let mut builder = courier_client::Client::builder(&args.url)
        .token(token)
        .device(&args.device);
    if let Some(outbox) = &args.outbox {
        builder = builder.outbox_file(outbox);
    }
    let (client, mut deliveries) = builder.connect()?;
    println!("type `<chat_id> <text>`; Ctrl-D quits");
    let mut state = client.state();
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut unacked = JoinSet::new();
    let mut count = 0;
    loop {
        tokio::select! {
            line = lines.next_line() => {
                let Some(line) = line? else { break };
                let Some((chat_id, text)) = parse_line(&line) else {
                    if !line.trim().is_empty() {
                        println!("? type `<chat_id> <text>`");
                    }
                    continue;
                };
                count += 1;
                let number = count;
                let sent = client.send(chat_id, text);
                println!("  #{number} queued");
                unacked.spawn(async move {
                    match sent.await {
                        Ok(acked) => println!("  #{number} acked (batch {})", acked.time_key),
                        Err(e) => println!("  #{number} not sent: {e}"),
                    }
                });
            }
            delivery = deliveries.recv() => {
                let Some(delivery) = delivery else { break };
                for m in &delivery.messages {
                    println!("[chat {}] user {}: {}   (id {})", m.chat_id, m.sender_id, m.content_text, m.id);
                }
                delivery.ack();
            }
            changed = state.changed() => {
                if changed.is_err() {
                    break;
                }
                match &*state.borrow_and_update() {
                    ConnectionState::Connecting => println!("(connecting to {})", args.url),
                    ConnectionState::Open => println!("(connected)"),
                    ConnectionState::Reconnecting { delay, reason } => {
                        println!("({reason}; reconnecting in {} ms)", delay.as_millis());
                    }
                    ConnectionState::Closed { reason } => {
                        println!("(closed: {reason})");
                        break;
                    }
                }
            }
            Some(_) = unacked.join_next() => {}
        }
    }
    if !unacked.is_empty() {
        println!(
            "(waiting for {} unacked messages; Ctrl-C quits)",
            unacked.len()
        );
        while unacked.join_next().await.is_some() {}
    }
    client.close().await;
    Ok(())
}

/// Frame level: what arrives is printed as received, deliveries are acked at once.
async fn raw(args: &Args, token: String) -> Result<(), Box<dyn std::error::Error>> {
    let options = ConnectOptions::new(&args.url).device(&args.device);
    let sender_id = courier_client::client::user_id(&token)?;
    let options = options.token(token);
    let mut conn = options.connect().await?;
    println!("connected (raw); type `<chat_id> <text>` or a JSON frame; Ctrl-D quits");
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut time_key = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64);
    loop {
        tokio::select! {
            line = lines.next_line() => {
                let Some(line) = line? else { break };
                let line = line.trim();
                if line.starts_with('{') {
                    conn.send_text(line).await?;
                } else if let Some((chat_id, text)) = parse_line(line) {
                    time_key += 1;
                    let frame = ClientFrame::Messages {
                        time_key: TimeKey::from(time_key),
                        messages: vec![OutgoingMessage { sender_id, chat_id, content_text: text.into() }],
                    };
                    conn.send(&frame).await?;
                } else if !line.is_empty() {
                    println!("? type `<chat_id> <text>`, or a JSON frame");
                }
            }
            incoming = conn.next() => match incoming? {
                Incoming::Text(text) => {
                    println!("<< {text}");
                    if let Ok(ServerFrame::Messages(DeliveryBatch { time_key, .. })) = ServerFrame::decode(&text) {
                        conn.send(&ClientFrame::Ack { time_key: TimeKey::from(time_key) }).await?;
                    }
                }
                Incoming::Binary(bytes) => println!("<< ({} binary bytes)", bytes.len()),
                Incoming::Closed(close) => {
                    println!("closed by courier: {}", close.map_or("no close frame".into(), |c| c.to_string()));
                    return Ok(());
                }
            }
        }
    }
    conn.close(
        courier_client::CloseCode::Normal,
        std::time::Duration::from_secs(2),
    )
    .await?;
    Ok(())
}
