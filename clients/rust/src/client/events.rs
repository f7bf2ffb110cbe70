//! What a client tells the app besides messages: its connection state, the events
//! worth logging, and the errors of a send.

use std::time::Duration;

use crate::connection::Refusal;
use crate::protocol::{CloseInfo, ErrorCode, ErrorFrame};

/// Why the client is not connected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Disconnect {
    /// courier closed the connection: 1001 (shutting down), 1008 (policy: too many
    /// errors), 1009 (frame too big), 1011, 1013 (too slow), 4001 (token expired; the
    /// token is fetched again), ...
    #[error("courier closed the connection: {0}")]
    Closed(CloseInfo),
    /// The connection failed or ended without a close frame (courier killed, network
    /// down), or could not be opened.
    #[error("connection lost: {0}")]
    Lost(String),
    /// courier refused the upgrade (README "Protocol summary" lists the statuses).
    #[error("courier refused the connection: {0}")]
    Refused(Refusal),
    /// Nothing arrived for two ping intervals: the connection is taken for dead.
    #[error("no answer from courier for two ping intervals")]
    Silent,
    /// The token provider failed, or gave a token without an integer `id` claim.
    #[error("no token: {0}")]
    Token(String),
    /// The URL or a header cannot be put in a request.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// The persistent outbox could not be written: the client stopped, since it can
    /// no longer keep its promise.
    #[error("outbox: {0}")]
    Outbox(String),
    /// The app called [`Client::close`](super::Client::close) or dropped every
    /// [`Client`](super::Client) handle.
    #[error("closed by the app")]
    ClosedByApp,
}

/// The connection state (SDK-SPEC "Connecting").
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectionState {
    /// Fetching a token or opening a connection.
    Connecting,
    /// Connected: batches flow.
    Open,
    /// Waiting `delay` before the next attempt, because of `reason`.
    Reconnecting {
        /// The backoff delay.
        delay: Duration,
        /// Why the last connection ended or the last attempt failed.
        reason: Disconnect,
    },
    /// For good: no more attempts. Sends fail with [`SendError::Closed`].
    Closed {
        /// Why: [`Disconnect::ClosedByApp`], or a refusal that retrying cannot fix
        /// (403 origin, 400 invalid device, 401 with a fixed token), or an outbox
        /// failure.
        reason: Disconnect,
    },
}

/// Something worth logging; [`Client::events`](super::Client::events) broadcasts
/// them (a receiver that lags loses the oldest).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The connection state changed.
    State(ConnectionState),
    /// courier sent an error frame (every one is reported here, whatever the client
    /// did with it: `unknown_time_key` has no other effect).
    ServerError(ErrorFrame),
    /// courier refused a batch for good; its sends failed with
    /// [`SendError::Rejected`] (a batch restored from the outbox has no sender left
    /// to tell: this is where its refusal shows).
    BatchRejected {
        /// The batch's `time_key`.
        time_key: u64,
        /// How many messages it held.
        messages: usize,
        /// courier's error.
        error: ErrorFrame,
    },
    /// A delivery repeated messages the app already has (held or acked): they were
    /// not handed over again.
    DuplicatesDropped {
        /// The message ids.
        ids: Vec<u64>,
    },
    /// The app dropped a [`Delivery`](super::Delivery) without acking it: its messages
    /// are not acked and come back (after courier's ack timeout, or on the next
    /// connection).
    DeliveryNotAcked {
        /// The message ids.
        ids: Vec<u64>,
    },
    /// courier sent a frame this client cannot read (ignored).
    UnreadableFrame(String),
}

/// courier's answer to a send: the batch carrying the message is durably written
/// for every recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Acked {
    /// The `time_key` of the batch that carried the message.
    pub time_key: u64,
}

/// Why a send failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// The text is over the limit: refused locally, nothing was sent.
    #[error("the text is {bytes} bytes, the limit is {max}")]
    TextTooLong {
        /// The text's UTF-8 length.
        bytes: usize,
        /// The limit.
        max: usize,
    },
    /// courier refused the batch for good (`not_a_member`, `sender_mismatch`,
    /// `invalid_frame`, `invalid_json`, `deprecated_format`, or a code this client
    /// does not know): nothing of it was written, and it left the outbox.
    #[error("courier rejected the message: {code}: {message}")]
    Rejected {
        /// The error code.
        code: ErrorCode,
        /// courier's explanation.
        message: String,
    },
    /// The client stopped before courier acked the message. With a persistent outbox
    /// a message the client took before it stopped stays stored, and is sent when a
    /// client opens the outbox again.
    #[error("the client stopped before the ack: {0}")]
    Closed(Disconnect),
}

/// What the client does with an error code about one of its frames (SDK-SPEC
/// "Sending"), in one table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// The batch cannot succeed: its sends fail, it leaves the outbox.
    Reject,
    /// Send the same frame again (same `time_key`) after a backoff delay.
    Retry,
    /// Report it; nothing else to do.
    Report,
}

impl Disposition {
    /// The disposition of `code`.
    pub fn of(code: &ErrorCode) -> Self {
        match code {
            ErrorCode::Unavailable | ErrorCode::RateLimited | ErrorCode::Internal => Self::Retry,
            ErrorCode::UnknownTimeKey => Self::Report,
            ErrorCode::NotAMember
            | ErrorCode::SenderMismatch
            | ErrorCode::InvalidFrame
            | ErrorCode::InvalidJson
            | ErrorCode::DeprecatedFormat
            // A code from a newer courier: retrying blindly could loop for ever.
            | ErrorCode::Unknown(_) => Self::Reject,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_code_has_the_disposition_of_the_spec() {
        let expected = [
            ("invalid_json", Disposition::Reject),
            ("invalid_frame", Disposition::Reject),
            ("deprecated_format", Disposition::Reject),
            ("sender_mismatch", Disposition::Reject),
            ("not_a_member", Disposition::Reject),
            ("unknown_time_key", Disposition::Report),
            ("rate_limited", Disposition::Retry),
            ("unavailable", Disposition::Retry),
            ("internal", Disposition::Retry),
            ("something_new", Disposition::Reject),
        ];
        for (code, disposition) in expected {
            assert_eq!(
                Disposition::of(&ErrorCode::from(code)),
                disposition,
                "{code}"
            );
        }
        assert_eq!(
            ErrorCode::KNOWN.len() + 1,
            expected.len(),
            "every code listed"
        );
    }
}
