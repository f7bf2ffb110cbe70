//! The WebSocket connections each user holds on this instance, capped at
//! `COURIER_MAX_CONNECTIONS_PER_USER`: a slot is taken before the upgrade and given
//! back when the connection's session ends (or the upgrade fails).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

/// Open connections per user on this instance.
#[derive(Debug)]
pub struct UserConnections {
    counts: Mutex<HashMap<u64, u32>>,
    max: u32,
}

/// One open connection of a user; dropping it frees the slot.
#[derive(Debug)]
pub struct ConnectionSlot {
    user: u64,
    registry: Arc<UserConnections>,
}

impl UserConnections {
    /// No connection yet; at most `max` per user.
    pub fn new(max: u32) -> Self {
        Self {
            counts: Mutex::default(),
            max,
        }
    }

    /// The most connections one user may hold here.
    pub fn max(&self) -> u32 {
        self.max
    }

    /// A slot for `user`, unless it already holds the maximum here.
    pub fn try_acquire(self: &Arc<Self>, user: u64) -> Option<ConnectionSlot> {
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        let count = counts.entry(user).or_default();
        if *count >= self.max {
            return None;
        }
        *count += 1;
        Some(ConnectionSlot {
            user,
            registry: self.clone(),
        })
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut counts = self
            .registry
            .counts
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = counts.get_mut(&self.user) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.user);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_per_user_are_capped_and_freed_on_drop() {
        let registry = Arc::new(UserConnections::new(2));
        let first = registry.try_acquire(1).expect("first");
        let _second = registry.try_acquire(1).expect("second");
        assert!(registry.try_acquire(1).is_none());
        assert!(registry.try_acquire(2).is_some(), "per user");
        drop(first);
        assert!(registry.try_acquire(1).is_some());
    }
}
