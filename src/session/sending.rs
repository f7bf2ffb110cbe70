//! The send half of a session: a client batch goes to the node's
//! [`Publisher`](crate::publish::Publisher), which validates it whole and writes it
//! in one atomic step; the client gets the ack — or one error frame, and nothing is
//! written.

use super::{Ending, Session, store_error};
use crate::protocol::{SendBatch, ServerFrame};
use crate::publish::PublishError;

impl Session {
    /// A client batch; its trace links to the connection's span.
    pub(super) async fn on_send(&mut self, batch: SendBatch) -> Result<(), Ending> {
        let time_key = batch.time_key;
        let published = self
            .node
            .publisher
            .publish(self.claims.id, batch, Some(&self.span))
            .await;
        match published {
            Ok(_) => self.send_frame(&ServerFrame::Ack { time_key }),
            Err(PublishError::Refused(error)) => self.reply_error(&error),
            Err(PublishError::Store(e)) => {
                self.reply_error(&store_error(e).with_time_key(time_key))
            }
        }
    }
}
