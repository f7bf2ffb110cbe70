//! The WebSocket transport of the kit and of the load generator: connect (with
//! request headers, from a chosen source address), send and receive frames, close.
//! Everything above it ([`crate::WsClient`], loadgen's simulated clients) speaks the
//! protocol through this one module, so replacing it with `courier-client`'s
//! `Connection` changes one file.

use std::net::{IpAddr, SocketAddr};

use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderName, HeaderValue};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::protocol::frame::Frame as RawFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How to connect.
#[derive(Debug, Clone, Default)]
pub struct ConnectOptions {
    /// Extra request headers (`token`, `Origin`, ...).
    pub headers: Vec<(String, String)>,
    /// The local address to bind the socket to (127.0.0.x: each has its own ephemeral
    /// ports, beyond the ~28k of one address).
    pub source: Option<IpAddr>,
    /// Small buffers (4 KiB read, no write buffering): what a load generator holding
    /// 20,000 connections needs; the default keeps tungstenite's.
    pub lean: bool,
}

impl ConnectOptions {
    /// With one more request header.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }
}

/// Why a connection was not opened.
#[derive(Debug)]
pub enum ConnectError {
    /// The server answered the upgrade request with this HTTP status and body.
    Refused { status: u16, body: Vec<u8> },
    /// Anything else: the TCP connect, the URL, the handshake.
    Failed(String),
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Refused { status, .. } => write!(f, "refused with HTTP {status}"),
            Self::Failed(reason) => f.write_str(reason),
        }
    }
}

/// A received text frame (its UTF-8 bytes, not copied).
#[derive(Debug, Clone)]
pub struct Text(Utf8Bytes);

impl Text {
    /// The frame's text.
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }
}

/// A received frame.
#[derive(Debug, Clone)]
pub enum Frame {
    Text(Text),
    Binary(Vec<u8>),
    Ping,
    Pong,
    /// The peer's close frame: its code and reason, if it gave them.
    Close(Option<(u16, String)>),
}

/// An open WebSocket connection.
pub struct WsConnection {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl WsConnection {
    /// Opens `url` (`ws://host:port/path?query`).
    pub async fn connect(url: &str, options: &ConnectOptions) -> Result<Self, ConnectError> {
        let failed =
            |what: &str, e: &dyn std::fmt::Display| ConnectError::Failed(format!("{what}: {e}"));
        let mut request = url
            .into_client_request()
            .map_err(|e| failed("request", &e))?;
        for (name, value) in &options.headers {
            let name = HeaderName::from_bytes(name.as_bytes()).map_err(|e| failed("header", &e))?;
            let value = HeaderValue::from_str(value).map_err(|e| failed("header", &e))?;
            request.headers_mut().insert(name, value);
        }
        let host = request.uri().host().unwrap_or("127.0.0.1").to_string();
        let port = request.uri().port_u16().unwrap_or(80);
        let server = tokio::net::lookup_host((host.as_str(), port))
            .await
            .map_err(|e| failed("resolve", &e))?
            .find(|addr| options.source.is_none_or(|s| s.is_ipv4() == addr.is_ipv4()))
            .ok_or_else(|| ConnectError::Failed(format!("{host} has no usable address")))?;
        let stream = connect_tcp(server, options.source)
            .await
            .map_err(|e| failed("connect", &e))?;
        let _ = stream.set_nodelay(true);
        let config = options.lean.then(|| {
            WebSocketConfig::default()
                .read_buffer_size(4096)
                .write_buffer_size(0)
        });
        match tokio_tungstenite::client_async_with_config(
            request,
            MaybeTlsStream::Plain(stream),
            config,
        )
        .await
        {
            Ok((ws, _)) => Ok(Self { ws }),
            Err(WsError::Http(response)) => Err(ConnectError::Refused {
                status: response.status().as_u16(),
                body: response.body().clone().unwrap_or_default(),
            }),
            Err(e) => Err(failed("handshake", &e)),
        }
    }

    /// Sends a text frame.
    pub async fn send_text(&mut self, text: impl Into<String>) -> Result<(), String> {
        self.send(Message::text(text.into())).await
    }

    /// Sends a binary frame.
    pub async fn send_binary(&mut self, bytes: Vec<u8>) -> Result<(), String> {
        self.send(Message::binary(bytes)).await
    }

    /// Sends a ping.
    pub async fn send_ping(&mut self) -> Result<(), String> {
        self.send(Message::Ping(Default::default())).await
    }

    /// Sends a text frame whose payload is arbitrary bytes (even invalid UTF-8).
    pub async fn send_raw_text_frame(&mut self, payload: Vec<u8>) -> Result<(), String> {
        let frame = RawFrame::message(payload, OpCode::Data(Data::Text), true);
        self.send(Message::Frame(frame)).await
    }

    async fn send(&mut self, message: Message) -> Result<(), String> {
        self.ws.send(message).await.map_err(|e| e.to_string())
    }

    /// The next frame; `None` once the connection has ended.
    pub async fn next_frame(&mut self) -> Option<Result<Frame, String>> {
        let message = match self.ws.next().await? {
            Ok(message) => message,
            Err(e) => return Some(Err(e.to_string())),
        };
        Some(Ok(match message {
            Message::Text(text) => Frame::Text(Text(text)),
            Message::Binary(bytes) => Frame::Binary(bytes.to_vec()),
            Message::Ping(_) => Frame::Ping,
            Message::Pong(_) => Frame::Pong,
            Message::Close(frame) => {
                Frame::Close(frame.map(|f| (u16::from(f.code), f.reason.to_string())))
            }
            Message::Frame(_) => return Some(Err("an unexpected raw frame".into())),
        }))
    }

    /// Starts the closing handshake (code 1000); read on with [`Self::next_frame`]
    /// for the server's side of it.
    pub async fn close(&mut self) -> Result<(), String> {
        self.ws.close(None).await.map_err(|e| e.to_string())
    }
}

async fn connect_tcp(server: SocketAddr, source: Option<IpAddr>) -> std::io::Result<TcpStream> {
    let Some(source) = source else {
        return TcpStream::connect(server).await;
    };
    let socket = if source.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.bind(SocketAddr::new(source, 0))?;
    socket.connect(server).await
}
