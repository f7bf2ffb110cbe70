//! Test harness: real `redis-server` processes and real courier processes on free
//! loopback ports, and a WebSocket client. Every process is killed and reaped on drop.
//!
//! Waits are on events (a port answering, a frame arriving), each with a timeout
//! and a message saying what did not happen.

#![allow(dead_code)]

pub mod backend;
pub mod cluster;
pub mod node;

#[allow(unused_imports)]
pub use backend::{RedisServer, cluster_mode};
#[allow(unused_imports)]
pub use cluster::RedisCluster;
#[allow(unused_imports)]
pub use node::RedisNode;

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// The secret every test courier is started with.
pub const SECRET: &str = "test-secret";

/// How long any single awaited event may take.
pub const WAIT: Duration = Duration::from_secs(10);

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("local addr").port()
}

/// How many free ports a server is tried on before the harness gives up.
const START_ATTEMPTS: usize = 5;

/// Waits until the Redis server `child` answers as itself (`process_id` reads the
/// `process_id` of whatever answers on its port). False if it exited first: its port
/// was taken between [`free_port`] and its bind (by another test's server, or by an
/// outgoing socket's ephemeral port), and it must be started on another one.
fn wait_for_own_redis(child: &mut Child, mut process_id: impl FnMut() -> Option<u32>) -> bool {
    let deadline = Instant::now() + WAIT;
    loop {
        if !matches!(child.try_wait(), Ok(None)) {
            return false;
        }
        if process_id() == Some(child.id()) {
            return true;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for redis-server to start"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The `process_id` field of `INFO server`.
fn process_id_in(info: &str) -> Option<u32> {
    info.lines()
        .find_map(|line| line.strip_prefix("process_id:"))
        .and_then(|pid| pid.trim().parse().ok())
}

/// A command from its words: `command(&["XLEN", "inbox:{user:2}"])`.
pub fn command(args: &[&str]) -> redis::Cmd {
    let mut cmd = redis::cmd(args[0]);
    for arg in &args[1..] {
        cmd.arg(*arg);
    }
    cmd
}

/// Creates `chat:<id>` with these members, replacing any earlier list.
pub fn create_chat_in(conn: &mut impl redis::ConnectionLike, chat: u64, members: &[u64]) {
    let key = format!("chat:{chat}");
    let _: () = redis::cmd("DEL").arg(&key).query(conn).expect("DEL chat");
    let _: () = redis::cmd("RPUSH")
        .arg(&key)
        .arg(members)
        .query(conn)
        .expect("RPUSH chat");
}

/// Number of entries pending in a user's device group (`XPENDING` summary).
pub fn pending_in(conn: &mut impl redis::ConnectionLike, user: u64, device: &str) -> u64 {
    let reply: redis::Value = redis::cmd("XPENDING")
        .arg(format!("inbox:{{user:{user}}}"))
        .arg(device)
        .query(conn)
        .expect("XPENDING");
    match reply {
        redis::Value::Array(items) => match items.first() {
            Some(redis::Value::Int(n)) => *n as u64,
            _ => 0,
        },
        _ => 0,
    }
}

/// A courier process on a free port.
pub struct Courier {
    pub addr: SocketAddr,
    child: Child,
    pub log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Courier {
    /// Starts courier against `redis_url` with test defaults and extra settings,
    /// on another free port if the first one turns out to be taken.
    pub fn start(redis_url: &str, env: &[(&str, &str)]) -> Self {
        for _ in 0..START_ATTEMPTS {
            if let Some(courier) = Self::try_start(redis_url, env) {
                return courier;
            }
        }
        panic!("courier did not start on {START_ATTEMPTS} free ports");
    }

    /// Starts courier on a free port and waits until it answers `/healthz` (an
    /// answer from the port alone could be a socket connected to itself); `None` if
    /// it exited first because the port was taken. Any other early exit fails the
    /// test with courier's log.
    fn try_start(redis_url: &str, env: &[(&str, &str)]) -> Option<Self> {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = dir.path().join("courier.log");
        let port = free_port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
        let mut command = Command::new(env!("CARGO_BIN_EXE_courier"));
        command
            .env_clear()
            .env("COURIER_LISTEN", addr.to_string())
            .env("COURIER_REDIS_URL", redis_url)
            .env("COURIER_JWT_SECRET", SECRET)
            .env("RUST_LOG", "courier=debug")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"));
        for (name, value) in env {
            command.env(name, value);
        }
        let mut child = command.spawn().expect("spawn courier");
        let deadline = Instant::now() + WAIT;
        while !answers_healthz(addr) {
            if !matches!(child.try_wait(), Ok(None)) {
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                assert!(
                    text.contains("Address already in use"),
                    "courier exited at start:\n{text}"
                );
                return None;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for courier to listen"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        Some(Self {
            addr,
            child,
            log,
            _dir: dir,
        })
    }

    /// `ws://addr/ws`.
    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    /// `http://addr<path>`.
    pub fn http_url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Connects user `id` with the default device.
    pub async fn connect(&self, id: u64) -> WsClient {
        self.connect_device(id, "default").await
    }

    /// Connects user `id` as `device`.
    pub async fn connect_device(&self, id: u64, device: &str) -> WsClient {
        let url = format!("{}?device={device}", self.ws_url());
        WsClient::connect_with_header(&url, "token", &token(id))
            .await
            .expect("websocket connect")
    }

    /// Sends a signal to the process.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status();
        assert!(status.is_ok_and(|s| s.success()), "kill -{signal} courier");
    }

    /// Waits for the process to exit and returns its exit code.
    pub fn wait_exit(&mut self) -> Option<i32> {
        let deadline = Instant::now() + WAIT * 3;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            assert!(Instant::now() < deadline, "courier did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The process's log so far (for failure messages).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Courier {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            // The test failed: what courier said last is the first clue.
            let log = self.log_text();
            let lines: Vec<&str> = log.lines().collect();
            let tail = lines[lines.len().saturating_sub(40)..].join("\n");
            eprintln!("--- last lines of courier {} ---\n{tail}", self.addr);
        }
    }
}

/// Whether an HTTP server at `addr` answers `GET /healthz` with 200.
fn answers_healthz(addr: SocketAddr) -> bool {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(addr) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    let mut reply = [0u8; 12];
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .and_then(|()| stream.read_exact(&mut reply))
        .is_ok_and(|()| reply.starts_with(b"HTTP/1.1 200"))
}

/// A token for user `id` (username `user<id>`), valid for an hour.
pub fn token(id: u64) -> String {
    let exp = jsonwebtoken::get_current_timestamp() + 3600;
    token_with(json!({ "id": id, "username": format!("user{id}"), "exp": exp }))
}

/// An HS256 token with arbitrary claims, signed with [`SECRET`].
pub fn token_with(claims: Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("encode token")
}

/// A WebSocket client speaking the JSON protocol.
pub struct WsClient {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

/// What came back when the server refused the upgrade.
#[derive(Debug)]
pub struct Refusal {
    pub status: u16,
    pub body: Value,
}

impl WsClient {
    /// Connects to `url` with one extra request header (or none if `header` is empty).
    pub async fn connect_with_header(
        url: &str,
        header: &str,
        value: &str,
    ) -> Result<Self, Refusal> {
        let mut request = url.into_client_request().expect("request");
        if !header.is_empty() {
            request.headers_mut().insert(
                tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(header.as_bytes())
                    .expect("name"),
                HeaderValue::from_str(value).expect("header value"),
            );
        }
        match tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(request)).await {
            Err(_) => panic!("connect to {url} timed out"),
            Ok(Ok((ws, _))) => Ok(Self { ws }),
            Ok(Err(WsError::Http(response))) => {
                let status = response.status().as_u16();
                let body = response
                    .body()
                    .as_deref()
                    .and_then(|b| serde_json::from_slice(b).ok())
                    .unwrap_or(Value::Null);
                Err(Refusal { status, body })
            }
            Ok(Err(e)) => panic!("connect to {url}: {e}"),
        }
    }

    /// Sends a raw text frame.
    pub async fn send_text(&mut self, text: &str) {
        self.ws.send(Message::text(text)).await.expect("send frame");
    }

    /// Sends a ping (a control frame the server must count but not answer in JSON).
    pub async fn send_ping(&mut self) {
        self.ws
            .send(Message::Ping(Default::default()))
            .await
            .expect("send ping");
    }

    /// Sends a text frame whose payload is arbitrary bytes (even invalid UTF-8).
    pub async fn send_raw_text_frame(&mut self, payload: Vec<u8>) {
        use tokio_tungstenite::tungstenite::protocol::frame::Frame;
        use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
        let frame = Frame::message(payload, OpCode::Data(Data::Text), true);
        self.ws
            .send(Message::Frame(frame))
            .await
            .expect("send raw frame");
    }

    /// Sends a binary frame.
    pub async fn send_binary(&mut self, bytes: Vec<u8>) {
        self.ws
            .send(Message::binary(bytes))
            .await
            .expect("send frame");
    }

    /// Sends a JSON frame.
    pub async fn send_json(&mut self, value: Value) {
        self.send_text(&value.to_string()).await;
    }

    /// Sends a batch of `(chat_id, text)` from `sender` and returns its time key.
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
            let message = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("timed out waiting for a frame")
                .expect("connection ended while waiting for a frame")
                .expect("websocket error while waiting for a frame");
            match message {
                Message::Text(text) => {
                    return serde_json::from_str(text.as_str()).expect("server sent JSON");
                }
                Message::Ping(_) | Message::Pong(_) => continue,
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
            let next = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("timed out waiting for close");
            match next {
                Some(Ok(Message::Close(frame))) => {
                    return frame.map(|f: CloseFrame| u16::from(f.code));
                }
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
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => return false,
                Ok(None) | Ok(Some(Err(_))) | Ok(Some(Ok(Message::Close(_)))) => return true,
                Ok(Some(Ok(_))) => continue,
            }
        }
    }

    /// Closes normally (1000) and waits for the server's side of the handshake.
    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
        while let Ok(Some(Ok(_))) = tokio::time::timeout(WAIT, self.ws.next()).await {}
    }
}

/// A received delivery batch.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub time_key: u64,
    pub messages: Vec<Value>,
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

/// A plain HTTP/1.1 GET; returns the status code and the body.
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    http_request(addr, "GET", path, &[], "").await
}

/// A plain HTTP/1.1 request with extra headers and a body (`Content-Length` is
/// added); returns the status code and the body.
pub async fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::time::timeout(WAIT, TcpStream::connect(addr))
        .await
        .expect("connect timed out")
        .expect("connect");
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: courier\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    request.push_str(body);
    // The server may answer (413) and close before reading a large body: a failed
    // write or a reset still leaves its answer to read.
    let _ = stream.write_all(request.as_bytes()).await;
    let mut response = Vec::new();
    let _ = tokio::time::timeout(WAIT, stream.read_to_end(&mut response))
        .await
        .expect("response timed out");
    let response = String::from_utf8_lossy(&response);
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("status line in {response:?}"));
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// Path of a test fixture file.
pub fn fixture(name: &str) -> String {
    format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// Polls a condition that no frame announces (an XACK landing, a log line), every
/// 10 ms, failing with `what` after [`WAIT`].
pub async fn wait_for(mut condition: impl FnMut() -> bool, what: &str) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until `expected` entries are pending in a user's device group.
pub async fn wait_for_pending(redis: &RedisServer, user: u64, device: &str, expected: u64) {
    let what = format!("{expected} pending for user {user} device {device}");
    wait_for(|| redis.pending(user, device) == expected, &what).await;
}

/// Number of consumers in a user's device group.
pub fn consumers(redis: &RedisServer, user: u64, group: &str) -> usize {
    let reply: redis::Value = redis::cmd("XINFO")
        .arg("CONSUMERS")
        .arg(format!("inbox:{{user:{user}}}"))
        .arg(group)
        .query(&mut redis.conn())
        .expect("XINFO CONSUMERS");
    match reply {
        redis::Value::Array(items) => items.len(),
        _ => 0,
    }
}

/// Writes a CA (`ca.crt`, `ca.key`) and a server certificate signed by it for
/// `localhost` and 127.0.0.1 (`server.crt`, `server.key`) into `dir` (openssl).
pub fn make_tls_certificates(dir: &std::path::Path) {
    let run = |args: &[&str]| {
        let status = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("openssl");
        assert!(status.success(), "openssl {args:?}");
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "2",
        "-subj",
        "/CN=courier-test-ca",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=localhost",
    ]);
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1",
    )
    .expect("ext");
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.crt",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
    ]);
}

/// A `redis-server` speaking only TLS, with its own CA, on a free port.
pub struct TlsRedis {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Child,
}

impl TlsRedis {
    /// Makes a CA and a server certificate for 127.0.0.1 (openssl), then starts.
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        make_tls_certificates(dir.path());
        for _ in 0..START_ATTEMPTS {
            let port = free_port();
            let mut child = Command::new("redis-server")
                .args(["--port", "0", "--tls-port", &port.to_string()])
                .args(["--bind", "127.0.0.1"])
                .args([
                    "--tls-cert-file",
                    "server.crt",
                    "--tls-key-file",
                    "server.key",
                ])
                .args(["--tls-ca-cert-file", "ca.crt", "--tls-auth-clients", "no"])
                .args(["--save", "", "--appendonly", "no", "--dir", "."])
                .current_dir(dir.path())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn redis-server with TLS");
            let ours = wait_for_own_redis(&mut child, || {
                process_id_in(&tls_cli(dir.path(), port, &["INFO", "server"]))
            });
            if ours {
                return Self { port, dir, child };
            }
        }
        panic!("the TLS redis-server did not start on {START_ATTEMPTS} free ports");
    }

    /// `rediss://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("rediss://127.0.0.1:{}", self.port)
    }

    /// Path of the CA certificate that signed the server's.
    pub fn ca_file(&self) -> String {
        self.dir
            .path()
            .join("ca.crt")
            .to_string_lossy()
            .into_owned()
    }

    /// Runs redis-cli over TLS and returns its output.
    pub fn cli(&self, args: &[&str]) -> String {
        tls_cli(self.dir.path(), self.port, args)
    }

    /// Creates `chat:<id>` with these members.
    pub fn create_chat(&self, chat: u64, members: &[u64]) {
        let key = format!("chat:{chat}");
        let mut args = vec!["RPUSH".to_string(), key];
        args.extend(members.iter().map(u64::to_string));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.cli(&args);
    }
}

/// `redis-cli --tls` against the TLS server on `port` whose CA is in `dir`; its
/// output (empty if it could not connect).
fn tls_cli(dir: &std::path::Path, port: u16, args: &[&str]) -> String {
    let ca = dir.join("ca.crt");
    let output = Command::new("redis-cli")
        .arg("--tls")
        .arg("--cacert")
        .arg(&ca)
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .expect("redis-cli");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
