//! The test client: courier's JSON protocol over `courier-client`'s [`Connection`]
//! (the one WebSocket transport and frame codec of the repository), with assertions
//! on the shape of what comes back. Every receive is bounded by [`WAIT`] and fails the
//! test with what it was waiting for.
//!
//! Replies are returned as [`serde_json::Value`]s, not typed frames: a test asserts
//! on exactly what courier wrote, extra fields included.

use courier_client::protocol::{MAX_SAFE_TIME_KEY, OutgoingMessage};
use courier_client::{ClientFrame, CloseCode, ConnectError, ConnectOptions, Connection};
use courier_client::{ServerFrame, TimeKey};
use serde_json::{Value, json};

use crate::WAIT;

/// A WebSocket client speaking the JSON protocol.
pub struct WsClient {
    conn: Connection,
}

/// What came back when the server refused the upgrade.
#[derive(Debug)]
pub struct Refusal {
    pub status: u16,
    pub body: Value,
}

/// A received delivery batch.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub time_key: u64,
    pub messages: Vec<Value>,
}

impl WsClient {
    /// Connects to `url` with one extra request header (or none if `header` is empty).
    pub async fn connect_with_header(
        url: &str,
        header: &str,
        value: &str,
    ) -> Result<Self, Refusal> {
        let mut options = ConnectOptions::new(url);
        if !header.is_empty() {
            options = options.header(header, value);
        }
        Self::connect_with(options).await
    }

    /// Connects with these options (the URL is in them, used as given); a refused
    /// upgrade is a [`Refusal`], any other failure (within [`WAIT`]) fails the test.
    pub async fn connect_with(options: ConnectOptions) -> Result<Self, Refusal> {
        match options.connect_timeout(WAIT).connect().await {
            Ok(conn) => Ok(Self { conn }),
            Err(ConnectError::Refused(refusal)) => Err(Refusal {
                status: refusal.status,
                body: refusal.json(),
            }),
            Err(e) => panic!("connect: {e}"),
        }
    }

    /// Sends a raw text frame.
    pub async fn send_text(&mut self, text: &str) {
        self.conn.send_text(text).await.expect("send frame");
    }

    /// Sends a ping (a control frame the server must count but not answer in JSON).
    pub async fn send_ping(&mut self) {
        self.conn.send_ping(Vec::new()).await.expect("send ping");
    }

    /// Sends a text frame whose payload is arbitrary bytes (even invalid UTF-8).
    pub async fn send_raw_text_frame(&mut self, payload: Vec<u8>) {
        self.conn
            .send_raw_text_frame(payload)
            .await
            .expect("send raw frame");
    }

    /// Sends a binary frame.
    pub async fn send_binary(&mut self, bytes: Vec<u8>) {
        self.conn.send_binary(bytes).await.expect("send frame");
    }

    /// Sends a JSON frame.
    pub async fn send_json(&mut self, value: Value) {
        self.send_text(&value.to_string()).await;
    }

    /// Sends a batch of `(chat_id, text)` from `sender` with this time key.
    pub async fn send_batch(&mut self, time_key: i64, sender: u64, messages: &[(u64, &str)]) {
        let messages = messages
            .iter()
            .map(|&(chat_id, text)| OutgoingMessage {
                sender_id: sender,
                chat_id,
                content_text: text.to_string(),
            })
            .collect();
        let frame = ClientFrame::Messages {
            time_key: TimeKey::from(time_key),
            messages,
        };
        self.conn.send(&frame).await.expect("send batch");
    }

    /// Sends a batch and asserts it is acked.
    pub async fn send_acked(&mut self, time_key: i64, sender: u64, messages: &[(u64, &str)]) {
        self.send_batch(time_key, sender, messages).await;
        let frame = self.recv_json().await;
        assert_eq!(
            frame,
            json!({"type": "ack", "time_key": time_key}),
            "ack of batch {time_key}"
        );
    }

    /// The next text frame, parsed (pings and pongs are skipped).
    pub async fn recv_json(&mut self) -> Value {
        let text = self.recv_text().await;
        serde_json::from_str(&text).expect("server sent JSON")
    }

    /// The next text frame as received.
    async fn recv_text(&mut self) -> String {
        self.conn
            .recv_text(WAIT)
            .await
            .unwrap_or_else(|e| panic!("expected a text frame: {e}"))
    }

    /// The next delivery batch; asserts its shape (a courier delivery frame, integer
    /// time key below 2^53, non-empty).
    pub async fn recv_batch(&mut self) -> Delivery {
        let text = self.recv_text().await;
        let time_key = match ServerFrame::decode(&text) {
            Ok(ServerFrame::Messages(batch)) => batch.time_key,
            other => panic!("expected a delivery batch, got {text} ({other:?})"),
        };
        assert!(time_key <= MAX_SAFE_TIME_KEY, "time_key below 2^53");
        let frame: Value = serde_json::from_str(&text).expect("server sent JSON");
        let messages = frame["messages"]
            .as_array()
            .expect("messages array")
            .clone();
        assert!(!messages.is_empty(), "a delivery batch is never empty");
        Delivery { time_key, messages }
    }

    /// Receives batches (acking none) until `count` messages arrived.
    pub async fn recv_messages(&mut self, count: usize) -> (Vec<Value>, Vec<u64>) {
        let mut messages = Vec::new();
        let mut time_keys = Vec::new();
        while messages.len() < count {
            let batch = self.recv_batch().await;
            time_keys.push(batch.time_key);
            messages.extend(batch.messages);
        }
        assert_eq!(messages.len(), count, "exactly {count} messages");
        (messages, time_keys)
    }

    /// Receives and acks batches until `count` messages arrived; returns them.
    pub async fn recv_and_ack(&mut self, count: usize) -> Vec<Value> {
        let mut messages = Vec::new();
        while messages.len() < count {
            let batch = self.recv_batch().await;
            self.ack(batch.time_key).await;
            messages.extend(batch.messages);
        }
        assert_eq!(messages.len(), count, "exactly {count} messages");
        messages
    }

    /// Acks a delivery batch.
    pub async fn ack(&mut self, time_key: u64) {
        let frame = ClientFrame::Ack {
            time_key: TimeKey::from(time_key),
        };
        self.conn.send(&frame).await.expect("send ack");
    }

    /// The next frame, expected to be an error with this code; returns it.
    pub async fn expect_error(&mut self, code: &str) -> Value {
        let frame = self.recv_json().await;
        assert_eq!(
            frame["type"], "error",
            "expected an error frame, got {frame}"
        );
        assert_eq!(frame["code"], code, "error code in {frame}");
        assert!(
            frame["message"].as_str().is_some_and(|m| !m.is_empty()),
            "error has a message: {frame}"
        );
        frame
    }

    /// Waits for the server to close (dropping what arrives meanwhile); returns the
    /// close code, `None` if the connection ended without a close frame.
    pub async fn expect_close(&mut self) -> Option<u16> {
        let close = self
            .conn
            .closed(WAIT)
            .await
            .expect("timed out waiting for close");
        close.map(|c| c.code.as_u16())
    }

    /// Reads (and drops) whatever arrives until the connection ends; true if it
    /// ended within [`WAIT`].
    pub async fn read_until_end(&mut self) -> bool {
        self.conn.closed(WAIT).await.is_ok()
    }

    /// Closes normally (1000) and waits for the server's side of the handshake.
    pub async fn close(mut self) {
        let _ = self.conn.close(CloseCode::Normal, WAIT).await;
    }
}

/// The `content_text`s of delivered messages, in order.
pub fn texts(messages: &[Value]) -> Vec<String> {
    messages
        .iter()
        .map(|m| m["content_text"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// The global `id`s of delivered messages, in order.
pub fn ids(messages: &[Value]) -> Vec<u64> {
    messages
        .iter()
        .map(|m| m["id"].as_u64().expect("id is an integer"))
        .collect()
}
