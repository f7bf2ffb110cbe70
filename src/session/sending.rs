//! The send half of a session: a client batch is validated whole, written in one
//! atomic step ([`crate::publish`]), then acked — or answered with one error frame
//! and nothing written.

use super::{Ending, Session, store_error};
use crate::protocol::{self, SendBatch, ServerFrame};
use crate::publish::{not_a_member, publish};
use crate::store::send::SendError;

impl Session {
    /// A client batch; its trace links to the connection's span.
    pub(super) async fn on_send(&mut self, batch: SendBatch) -> Result<(), Ending> {
        let limits = self.state.session.limits;
        if let Err(error) = protocol::validate_batch(&batch, self.claims.id, limits) {
            return self.reply_error(&error);
        }
        let time_key = batch.time_key;
        match publish(&self.state, self.claims.id, batch, Some(&self.span)).await {
            Ok(_) => self.send_frame(&ServerFrame::Ack { time_key }),
            Err(SendError::NotAMember {
                user,
                chat_id,
                index,
            }) => self.reply_error(&not_a_member(user, chat_id, index, time_key)),
            Err(SendError::Store(e)) => self.reply_error(&store_error(e).with_time_key(time_key)),
        }
    }
}
