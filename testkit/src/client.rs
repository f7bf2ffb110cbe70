//! The test client: courier's JSON protocol over [`WsConnection`], with assertions on
//! the shape of what comes back. Every receive is bounded by [`WAIT`] and fails the
//! test with what it was waiting for.

use serde_json::{Value, json};

use crate::WAIT;
use crate::ws::{ConnectError, ConnectOptions, Frame, WsConnection};

/// A WebSocket client speaking the JSON protocol.
pub struct WsClient {
    ws: WsConnection,
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
        let mut options = ConnectOptions::default();
        if !header.is_empty() {
            options = options.header(header, value);
        }
        Self::connect_with(url, &options).await
    }

    /// Connects to `url` with these options; a refused upgrade is a [`Refusal`], any
    /// other failure fails the test.
    pub async fn connect_with(url: &str, options: &ConnectOptions) -> Result<Self, Refusal> {
        match tokio::time::timeout(WAIT, WsConnection::connect(url, options)).await {
            Err(_) => panic!("connect to {url} timed out"),
            Ok(Ok(ws)) => Ok(Self { ws }),
            Ok(Err(ConnectError::Refused { status, body })) => Err(Refusal {
                status,
                body: serde_json::from_slice(&body).unwrap_or(Value::Null),
            }),
            Ok(Err(e)) => panic!("connect to {url}: {e}"),
        }
    }

    /// Sends a raw text frame.
    pub async fn send_text(&mut self, text: &str) {
        self.ws.send_text(text).await.expect("send frame");
    }

    /// Sends a ping (a control frame the server must count but not answer in JSON).
    pub async fn send_ping(&mut self) {
        self.ws.send_ping().await.expect("send ping");
    }

    /// Sends a text frame whose payload is arbitrary bytes (even invalid UTF-8).
    pub async fn send_raw_text_frame(&mut self, payload: Vec<u8>) {
        self.ws
            .send_raw_text_frame(payload)
            .await
            .expect("send raw frame");
    }

    /// Sends a binary frame.
    pub async fn send_binary(&mut self, bytes: Vec<u8>) {
        self.ws.send_binary(bytes).await.expect("send frame");
    }

    /// Sends a JSON frame.
    pub async fn send_json(&mut self, value: Value) {
        self.send_text(&value.to_string()).await;
    }

    /// Sends a batch of `(chat_id, text)` from `sender` with this time key.
    pub async fn send_batch(&mut self, time_key: i64, sender: u64, messages: &[(u64, &str)]) {
        let messages: Vec<Value> = messages
            .iter()
            .map(|(chat, text)| json!({"sender_id": sender, "chat_id": chat, "content_text": text}))
            .collect();
        self.send_json(json!({"type": "messages", "time_key": time_key, "messages": messages}))
            .await;
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
        loop {
            let frame = tokio::time::timeout(WAIT, self.ws.next_frame())
                .await
                .expect("timed out waiting for a frame")
                .expect("connection ended while waiting for a frame")
                .expect("websocket error while waiting for a frame");
            match frame {
                Frame::Text(text) => {
                    return serde_json::from_str(text.as_str()).expect("server sent JSON");
                }
                Frame::Ping | Frame::Pong => continue,
                other => panic!("expected a text frame, got {other:?}"),
            }
        }
    }

    /// The next delivery batch; asserts its shape (type, integer time key, non-empty).
    pub async fn recv_batch(&mut self) -> Delivery {
        let frame = self.recv_json().await;
        assert_eq!(
            frame["type"], "messages",
            "expected a delivery batch, got {frame}"
        );
        let time_key = frame["time_key"]
            .as_u64()
            .expect("time_key is a non-negative integer");
        assert!(time_key < (1 << 53), "time_key below 2^53");
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
        self.send_json(json!({"type": "ack", "time_key": time_key}))
            .await;
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

    /// Waits for the server to close; returns the close code.
    pub async fn expect_close(&mut self) -> Option<u16> {
        loop {
            let next = tokio::time::timeout(WAIT, self.ws.next_frame())
                .await
                .expect("timed out waiting for close");
            match next {
                Some(Ok(Frame::Close(frame))) => return frame.map(|(code, _)| code),
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return None,
            }
        }
    }

    /// Reads (and drops) whatever arrives until the connection ends; true if it
    /// ended within [`WAIT`].
    pub async fn read_until_end(&mut self) -> bool {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next_frame()).await {
                Err(_) => return false,
                Ok(None) | Ok(Some(Err(_))) | Ok(Some(Ok(Frame::Close(_)))) => return true,
                Ok(Some(Ok(_))) => continue,
            }
        }
    }

    /// Closes normally (1000) and waits for the server's side of the handshake.
    pub async fn close(mut self) {
        let _ = self.ws.close().await;
        while let Ok(Some(Ok(_))) = tokio::time::timeout(WAIT, self.ws.next_frame()).await {}
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
