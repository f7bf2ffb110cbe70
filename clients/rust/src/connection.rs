//! One WebSocket connection to courier, frame by frame: the layer a test harness or a
//! load generator drives directly, and the one the [`Client`](crate::Client) is built
//! on.
//!
//! It does what the wire allows and nothing more: it connects with a token placed
//! where asked (DESIGN §1 accepts three places), reports a refused upgrade with its
//! HTTP status and JSON body, sends typed frames or arbitrary bytes (malformed frames
//! included, on purpose), and receives frames with a timeout, skipping pings and pongs
//! (tungstenite answers pings by itself). It keeps no protocol state: no time keys, no
//! acks, no retries.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderName, HeaderValue};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message as WsMessage};

use crate::protocol::{ClientFrame, CloseCode, CloseInfo, DecodeError, ServerFrame};

/// Where the token goes in the upgrade request (DESIGN §1 reads them in this order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TokenPlacement {
    /// The request header `token: <jwt>`. The default: what native clients send.
    #[default]
    Header,
    /// `Authorization: Bearer <jwt>`.
    Bearer,
    /// The query parameter `?token=<jwt>`: what browsers must use (they cannot set
    /// headers on a WebSocket); it can end up in access logs.
    Query,
}

/// How to open a [`Connection`]. Reusable: [`connect`](Self::connect) can be called
/// again with the same options.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    url: String,
    token: Option<String>,
    placement: TokenPlacement,
    device: Option<String>,
    headers: Vec<(String, String)>,
    connect_timeout: Duration,
    local_addr: Option<IpAddr>,
    websocket: WebSocketConfig,
}

/// Default time for the TCP connect and the upgrade together.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

impl ConnectOptions {
    /// Options for courier's `/ws` endpoint at `url` (`ws://host:port/ws`), without a
    /// token (courier answers 401 until one is set).
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            token: None,
            placement: TokenPlacement::default(),
            device: None,
            headers: Vec::new(),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            local_addr: None,
            websocket: WebSocketConfig::default(),
        }
    }

    /// The JWT to authenticate with.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// Where the token goes. Defaults to [`TokenPlacement::Header`].
    pub fn token_placement(mut self, placement: TokenPlacement) -> Self {
        self.placement = placement;
        self
    }

    /// The `?device=` parameter, sent as given (not validated, so that a test can send
    /// an invalid one). Defaults to none, which courier reads as `default`.
    pub fn device(mut self, device: impl Into<String>) -> Self {
        self.device = Some(device.into());
        self
    }

    /// An extra request header, such as `Origin` or `traceparent`.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Time allowed for the TCP connect and the upgrade. Defaults to
    /// [`DEFAULT_CONNECT_TIMEOUT`].
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// The local address to connect from (a load generator spreads its sockets over
    /// 127.0.0.x to get more ephemeral ports). Defaults to the system's choice.
    pub fn local_addr(mut self, addr: IpAddr) -> Self {
        self.local_addr = Some(addr);
        self
    }

    /// tungstenite's settings (buffer sizes, frame limits). Defaults to tungstenite's.
    pub fn websocket_config(mut self, config: WebSocketConfig) -> Self {
        self.websocket = config;
        self
    }

    /// The URL the upgrade request goes to: the base URL with `device` and, with
    /// [`TokenPlacement::Query`], `token` added to its query.
    pub fn request_url(&self) -> String {
        let mut query = form_urlencoded::Serializer::new(String::new());
        if let Some(device) = &self.device {
            query.append_pair("device", device);
        }
        if let (TokenPlacement::Query, Some(token)) = (self.placement, &self.token) {
            query.append_pair("token", token);
        }
        let query = query.finish();
        if query.is_empty() {
            self.url.clone()
        } else if self.url.contains('?') {
            format!("{}&{query}", self.url)
        } else {
            format!("{}?{query}", self.url)
        }
    }

    /// Opens the connection: TCP connect (from [`local_addr`](Self::local_addr) when
    /// set), then the WebSocket upgrade, within the connect timeout.
    pub async fn connect(&self) -> Result<Connection, ConnectError> {
        match tokio::time::timeout(self.connect_timeout, self.connect_now()).await {
            Ok(result) => result,
            Err(_) => Err(ConnectError::Timeout(self.connect_timeout)),
        }
    }

    async fn connect_now(&self) -> Result<Connection, ConnectError> {
        let invalid = |e: &dyn std::fmt::Display| ConnectError::InvalidRequest(e.to_string());
        let mut request = self
            .request_url()
            .into_client_request()
            .map_err(|e| invalid(&e))?;
        let headers = request.headers_mut();
        if let Some(token) = &self.token {
            match self.placement {
                TokenPlacement::Header => {
                    headers.insert(
                        "token",
                        HeaderValue::from_str(token).map_err(|e| invalid(&e))?,
                    );
                }
                TokenPlacement::Bearer => {
                    let value = HeaderValue::from_str(&format!("Bearer {token}"))
                        .map_err(|e| invalid(&e))?;
                    headers.insert("authorization", value);
                }
                TokenPlacement::Query => {}
            }
        }
        for (name, value) in &self.headers {
            headers.append(
                HeaderName::from_bytes(name.as_bytes()).map_err(|e| invalid(&e))?,
                HeaderValue::from_str(value).map_err(|e| invalid(&e))?,
            );
        }
        let uri = request.uri();
        if uri.scheme_str() != Some("ws") {
            return Err(ConnectError::InvalidRequest(format!(
                "{}: only ws:// URLs are supported (put TLS in front of courier and in a proxy)",
                self.url
            )));
        }
        let host = uri.host().unwrap_or_default().trim_matches(['[', ']']);
        let port = uri.port_u16().unwrap_or(80);
        let stream = self.tcp_connect(host, port).await?;
        match tokio_tungstenite::client_async_with_config(request, stream, Some(self.websocket))
            .await
        {
            Ok((ws, _)) => Ok(Connection { ws }),
            Err(tungstenite::Error::Http(response)) => {
                let body = response.body().as_deref().unwrap_or_default();
                Err(ConnectError::Refused(Refusal::new(
                    response.status().as_u16(),
                    String::from_utf8_lossy(body).into_owned(),
                )))
            }
            Err(e) => Err(ConnectError::Network(e.to_string())),
        }
    }

    /// Connects to the first address of `host` that accepts.
    async fn tcp_connect(&self, host: &str, port: u16) -> Result<TcpStream, ConnectError> {
        let addrs = tokio::net::lookup_host((host, port))
            .await
            .map_err(|e| ConnectError::Network(format!("resolve {host}: {e}")))?;
        let mut last_error = format!("{host} has no address");
        for addr in addrs {
            match self.tcp_connect_to(addr).await {
                Ok(stream) => {
                    // Frames are small and latency matters more than packet count.
                    let _ = stream.set_nodelay(true);
                    return Ok(stream);
                }
                Err(e) => last_error = format!("connect {addr}: {e}"),
            }
        }
        Err(ConnectError::Network(last_error))
    }

    async fn tcp_connect_to(&self, addr: SocketAddr) -> std::io::Result<TcpStream> {
        let Some(local) = self.local_addr else {
            return TcpStream::connect(addr).await;
        };
        let socket = match addr {
            SocketAddr::V4(_) => TcpSocket::new_v4()?,
            SocketAddr::V6(_) => TcpSocket::new_v6()?,
        };
        socket.bind(SocketAddr::new(local, 0))?;
        socket.connect(addr).await
    }
}

/// Why a connection could not be opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectError {
    /// courier answered the upgrade request with an HTTP error.
    #[error("courier refused the connection: {0}")]
    Refused(Refusal),
    /// The URL, a header or the token cannot be put in a request.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// No answer within the connect timeout.
    #[error("no connection within {0:?}")]
    Timeout(Duration),
    /// The TCP connection or the handshake failed.
    #[error("cannot connect: {0}")]
    Network(String),
}

/// A refused upgrade: the HTTP status and courier's JSON body
/// `{"error": ..., "message": ...}` (README "Protocol summary": 401 `invalid_token`,
/// 400 `invalid_device`/`not_websocket`, 403 `origin_not_allowed`, 429 too many
/// connections, 503 `unavailable`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The HTTP status code.
    pub status: u16,
    /// The body's `error` field, when the body is courier's JSON.
    pub error: Option<String>,
    /// The body's `message` field, when the body is courier's JSON.
    pub message: Option<String>,
    /// The body as received.
    pub body: String,
}

impl Refusal {
    /// A refusal from a status and a body, reading `error` and `message` from the body
    /// when it is JSON.
    pub fn new(status: u16, body: String) -> Self {
        let json: Option<serde_json::Value> = serde_json::from_str(&body).ok();
        let field = |name: &str| {
            json.as_ref()
                .and_then(|j| j.get(name))
                .and_then(|v| v.as_str())
                .map(str::to_string)
        };
        Self {
            status,
            error: field("error"),
            message: field("message"),
            body,
        }
    }

    /// The body parsed as JSON (`Null` when it is not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HTTP {}", self.status)?;
        match (&self.error, &self.message) {
            (Some(error), Some(message)) => write!(f, " {error}: {message}"),
            (Some(error), None) => write!(f, " {error}"),
            _ if !self.body.is_empty() => write!(f, " {}", self.body),
            _ => Ok(()),
        }
    }
}

/// What arrives on a connection, pings and pongs aside.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    /// A text frame.
    Text(String),
    /// A binary frame (courier sends none).
    Binary(Vec<u8>),
    /// The connection ended: with courier's close frame, or without one (`None`: the
    /// socket closed or was reset).
    Closed(Option<CloseInfo>),
}

/// Why no frame was received.
#[derive(Debug, thiserror::Error)]
pub enum RecvError {
    /// Nothing arrived within the timeout.
    #[error("no frame within {0:?}")]
    Timeout(Duration),
    /// The connection ended (with courier's close frame when it sent one).
    #[error("the connection ended ({})", match .0 { Some(c) => c.to_string(), None => "no close frame".into() })]
    Closed(Option<CloseInfo>),
    /// A text frame that is not a courier frame.
    #[error("{error}: {text}")]
    Decode {
        /// The frame's text.
        text: String,
        /// What is wrong with it.
        error: DecodeError,
    },
    /// A binary frame.
    #[error("unexpected binary frame of {} bytes", .0.len())]
    Binary(Vec<u8>),
    /// The socket failed.
    #[error(transparent)]
    Socket(#[from] SocketError),
}

/// A WebSocket failure (reading or writing).
#[derive(Debug, thiserror::Error)]
#[error("websocket: {0}")]
pub struct SocketError(#[source] pub tungstenite::Error);

/// An open WebSocket connection to courier.
pub struct Connection {
    ws: WebSocketStream<TcpStream>,
}

impl Connection {
    /// Sends a typed frame.
    pub async fn send(&mut self, frame: &ClientFrame) -> Result<(), SocketError> {
        self.send_text(frame.encode()).await
    }

    /// Sends a text frame as given (it need not be JSON).
    pub async fn send_text(&mut self, text: impl Into<String>) -> Result<(), SocketError> {
        self.send_message(WsMessage::text(text.into())).await
    }

    /// Sends a binary frame (courier answers `invalid_frame`).
    pub async fn send_binary(&mut self, bytes: Vec<u8>) -> Result<(), SocketError> {
        self.send_message(WsMessage::binary(bytes)).await
    }

    /// Sends a text frame whose payload is arbitrary bytes, even invalid UTF-8
    /// (courier closes with 1007).
    pub async fn send_raw_text_frame(&mut self, payload: Vec<u8>) -> Result<(), SocketError> {
        let frame = Frame::message(payload, OpCode::Data(Data::Text), true);
        self.send_message(WsMessage::Frame(frame)).await
    }

    /// Sends a ping (courier answers with a pong, which [`next`](Self::next) skips).
    pub async fn send_ping(&mut self, payload: Vec<u8>) -> Result<(), SocketError> {
        self.send_message(WsMessage::Ping(payload.into())).await
    }

    async fn send_message(&mut self, message: WsMessage) -> Result<(), SocketError> {
        self.ws.send(message).await.map_err(SocketError)
    }

    /// The next text or binary frame, or the end of the connection. Pings and pongs
    /// are skipped. Cancel-safe: a frame is never lost by dropping the future, so it
    /// can sit in a `select!`.
    pub async fn next(&mut self) -> Result<Incoming, SocketError> {
        loop {
            match self.ws.next().await {
                None => return Ok(Incoming::Closed(None)),
                Some(Err(
                    tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed,
                )) => {
                    return Ok(Incoming::Closed(None));
                }
                Some(Err(e)) => return Err(SocketError(e)),
                Some(Ok(WsMessage::Text(text))) => return Ok(Incoming::Text(text.to_string())),
                Some(Ok(WsMessage::Binary(bytes))) => return Ok(Incoming::Binary(bytes.to_vec())),
                Some(Ok(WsMessage::Close(frame))) => {
                    return Ok(Incoming::Closed(frame.map(close_info)));
                }
                Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_) | WsMessage::Frame(_))) => {}
            }
        }
    }

    /// The next text frame as received, within `timeout`.
    pub async fn recv_text(&mut self, timeout: Duration) -> Result<String, RecvError> {
        match tokio::time::timeout(timeout, self.next()).await {
            Err(_) => Err(RecvError::Timeout(timeout)),
            Ok(Err(e)) => Err(e.into()),
            Ok(Ok(Incoming::Text(text))) => Ok(text),
            Ok(Ok(Incoming::Binary(bytes))) => Err(RecvError::Binary(bytes)),
            Ok(Ok(Incoming::Closed(close))) => Err(RecvError::Closed(close)),
        }
    }

    /// The next frame, decoded, within `timeout`.
    pub async fn recv(&mut self, timeout: Duration) -> Result<ServerFrame, RecvError> {
        let text = self.recv_text(timeout).await?;
        ServerFrame::decode(&text).map_err(|error| RecvError::Decode { text, error })
    }

    /// Reads and drops frames until the connection ends, within `timeout`; returns
    /// courier's close frame (`None` when the connection ended without one).
    pub async fn closed(&mut self, timeout: Duration) -> Result<Option<CloseInfo>, RecvError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.next()).await {
                Err(_) => return Err(RecvError::Timeout(timeout)),
                Ok(Err(_)) => return Ok(None),
                Ok(Ok(Incoming::Closed(close))) => return Ok(close),
                Ok(Ok(_)) => {}
            }
        }
    }

    /// Closes with `code` and waits (up to `timeout`) for courier's side of the
    /// closing handshake, dropping what still arrives.
    pub async fn close(&mut self, code: CloseCode, timeout: Duration) -> Result<(), SocketError> {
        let frame = CloseFrame {
            code: code.as_u16().into(),
            reason: "".into(),
        };
        match self.ws.close(Some(frame)).await {
            Ok(())
            | Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {}
            Err(e) => return Err(SocketError(e)),
        }
        let _ = self.closed(timeout).await;
        Ok(())
    }
}

fn close_info(frame: CloseFrame) -> CloseInfo {
    CloseInfo {
        code: CloseCode::from(u16::from(frame.code)),
        reason: frame.reason.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_and_query_token_are_added_to_the_url() {
        let options = ConnectOptions::new("ws://h:1/ws").device("phone");
        assert_eq!(options.request_url(), "ws://h:1/ws?device=phone");
        let options = options
            .token("a.b+c")
            .token_placement(TokenPlacement::Query);
        assert_eq!(
            options.request_url(),
            "ws://h:1/ws?device=phone&token=a.b%2Bc"
        );
        let options = ConnectOptions::new("ws://h:1/ws?x=1").token("t");
        assert_eq!(options.request_url(), "ws://h:1/ws?x=1", "header token");
        let options = ConnectOptions::new("ws://h:1/ws?x=1")
            .token("t")
            .token_placement(TokenPlacement::Query);
        assert_eq!(options.request_url(), "ws://h:1/ws?x=1&token=t");
    }

    #[test]
    fn a_refusal_reads_courier_json_body() {
        let refusal = Refusal::new(
            401,
            r#"{"error":"invalid_token","message":"expired"}"#.into(),
        );
        assert_eq!(refusal.error.as_deref(), Some("invalid_token"));
        assert_eq!(refusal.message.as_deref(), Some("expired"));
        assert_eq!(refusal.to_string(), "HTTP 401 invalid_token: expired");
        let plain = Refusal::new(502, "bad gateway".into());
        assert_eq!(plain.error, None);
        assert_eq!(plain.json(), serde_json::Value::Null);
        assert_eq!(plain.to_string(), "HTTP 502 bad gateway");
    }
}
