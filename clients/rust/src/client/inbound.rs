//! The receiving half of exactly-once into the app (pure, no I/O): which messages of
//! a delivery batch the app has not had yet, and which of courier's batches may be
//! acked because the app has every message in them.
//!
//! A message id is in one of three states: *unseen*, *held* (handed to the app in a
//! [`Delivery`](super::Delivery) it has not acked yet) or *seen* (the app acked it). A
//! courier batch is acked once all its ids are seen, never before: if the app drops a
//! delivery without acking, the ids go back to unseen and courier's redelivery hands
//! them over again. A redelivery of held or seen ids is not handed over twice.

use std::collections::{HashMap, HashSet, VecDeque};

use crate::protocol::{DeliveryBatch, Message};

/// The ids the app has acked, bounded: the newest `capacity` are kept.
#[derive(Debug, Clone)]
pub struct SeenIds {
    capacity: usize,
    order: VecDeque<u64>,
    set: HashSet<u64>,
}

impl SeenIds {
    /// An empty set keeping at most `capacity` ids (at least one).
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            order: VecDeque::new(),
            set: HashSet::new(),
        }
    }

    /// Whether the app has acked `id` (among the newest `capacity`).
    pub fn contains(&self, id: u64) -> bool {
        self.set.contains(&id)
    }

    /// Records `id`, forgetting the oldest id beyond the capacity.
    pub fn insert(&mut self, id: u64) {
        if !self.set.insert(id) {
            return;
        }
        self.order.push_back(id);
        if self.order.len() > self.capacity
            && let Some(oldest) = self.order.pop_front()
        {
            self.set.remove(&oldest);
        }
    }

    /// The ids, oldest first (what a persistent outbox stores).
    pub fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        self.order.iter().copied()
    }
}

/// A delivery batch of the current connection, not acked yet.
#[derive(Debug)]
struct ServerBatch {
    time_key: u64,
    ids: Vec<u64>,
}

/// What a delivery batch comes to.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Arrival {
    /// Messages the app has not had: hand them over as delivery `seq`.
    pub hand_over: Option<(u64, Vec<Message>)>,
    /// Ids the app has already (seen or held): not handed over again.
    pub duplicates: Vec<u64>,
}

/// The receive-side state of a client.
#[derive(Debug)]
pub struct Inbound {
    seen: SeenIds,
    /// Held ids → the delivery that holds them.
    held: HashMap<u64, u64>,
    /// Delivery → its ids, while the app holds it.
    deliveries: HashMap<u64, Vec<u64>>,
    /// This connection's unacked delivery batches, oldest first.
    batches: Vec<ServerBatch>,
    next_delivery: u64,
}

impl Inbound {
    /// Starts with the ids the app already has (from a persistent outbox).
    pub fn new(seen: SeenIds) -> Self {
        Self {
            seen,
            held: HashMap::new(),
            deliveries: HashMap::new(),
            batches: Vec::new(),
            next_delivery: 0,
        }
    }

    /// The seen ids.
    pub fn seen(&self) -> &SeenIds {
        &self.seen
    }

    /// Records a delivery batch and sorts its messages into new and already had.
    pub fn on_batch(&mut self, batch: DeliveryBatch) -> Arrival {
        let ids: Vec<u64> = batch.messages.iter().map(|m| m.id).collect();
        // courier retires a batch when it redelivers one of its entries: the entries
        // come back in newer batches, and the retired batch need not be acked.
        self.batches
            .retain(|old| !old.ids.iter().any(|id| ids.contains(id)));
        let mut arrival = Arrival::default();
        let mut new = Vec::new();
        let mut in_batch = HashSet::new();
        for message in batch.messages {
            let id = message.id;
            if !in_batch.insert(id) || self.seen.contains(id) || self.held.contains_key(&id) {
                arrival.duplicates.push(id);
            } else {
                new.push(message);
            }
        }
        self.batches.push(ServerBatch {
            time_key: batch.time_key,
            ids,
        });
        if !new.is_empty() {
            let seq = self.next_delivery;
            self.next_delivery += 1;
            let ids: Vec<u64> = new.iter().map(|m| m.id).collect();
            for &id in &ids {
                self.held.insert(id, seq);
            }
            self.deliveries.insert(seq, ids);
            arrival.hand_over = Some((seq, new));
        }
        arrival
    }

    /// The app acked delivery `seq`: its ids are seen. Returns them (to persist).
    pub fn on_app_ack(&mut self, seq: u64) -> Vec<u64> {
        let ids = self.release(seq);
        for &id in &ids {
            self.seen.insert(id);
        }
        ids
    }

    /// The app dropped delivery `seq` without acking it: its ids are unseen again, so
    /// courier's redelivery hands them over again. Returns them.
    pub fn on_app_drop(&mut self, seq: u64) -> Vec<u64> {
        self.release(seq)
    }

    fn release(&mut self, seq: u64) -> Vec<u64> {
        let ids = self.deliveries.remove(&seq).unwrap_or_default();
        for id in &ids {
            self.held.remove(id);
        }
        ids
    }

    /// The `time_key`s of this connection's batches whose every message the app has:
    /// ack them now. They are forgotten.
    pub fn ready_acks(&mut self) -> Vec<u64> {
        let seen = &self.seen;
        let mut ready = Vec::new();
        self.batches.retain(|batch| {
            let done = batch.ids.iter().all(|&id| seen.contains(id));
            if done {
                ready.push(batch.time_key);
            }
            !done
        });
        ready
    }

    /// The connection ended: its batches cannot be acked any more (courier delivers
    /// their entries again on the next connection). Deliveries the app holds stay held.
    pub fn on_disconnect(&mut self) {
        self.batches.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(time_key: u64, ids: &[u64]) -> DeliveryBatch {
        DeliveryBatch {
            time_key,
            messages: ids
                .iter()
                .map(|&id| Message {
                    id,
                    sender_id: 1,
                    chat_id: 10,
                    content_text: format!("m{id}"),
                })
                .collect(),
        }
    }

    fn handed(arrival: &Arrival) -> Vec<u64> {
        arrival
            .hand_over
            .as_ref()
            .map(|(_, messages)| messages.iter().map(|m| m.id).collect())
            .unwrap_or_default()
    }

    #[test]
    fn the_seen_set_keeps_only_the_newest_ids() {
        let mut seen = SeenIds::new(3);
        for id in [1, 2, 3, 2, 4] {
            seen.insert(id);
        }
        assert_eq!(seen.iter().count(), 3);
        assert!(!seen.contains(1), "the oldest is forgotten");
        assert!(seen.contains(2) && seen.contains(3) && seen.contains(4));
        assert_eq!(seen.iter().collect::<Vec<_>>(), [2, 3, 4]);
        let mut big = SeenIds::new(10_000);
        for id in 0..25_000 {
            big.insert(id);
        }
        assert_eq!(big.iter().count(), 10_000);
        assert!(big.contains(24_999) && big.contains(15_000) && !big.contains(14_999));
    }

    #[test]
    fn a_batch_is_acked_only_after_the_app_acks_its_delivery() {
        let mut inbound = Inbound::new(SeenIds::new(100));
        let arrival = inbound.on_batch(batch(7, &[1, 2]));
        assert_eq!(handed(&arrival), [1, 2]);
        assert!(inbound.ready_acks().is_empty(), "not before the app acks");
        let (seq, _) = arrival.hand_over.expect("handed over");
        assert_eq!(inbound.on_app_ack(seq), [1, 2]);
        assert_eq!(inbound.ready_acks(), [7]);
        assert!(inbound.ready_acks().is_empty(), "acked once");
    }

    #[test]
    fn a_redelivery_of_seen_ids_is_acked_at_once_without_the_app() {
        let mut inbound = Inbound::new(SeenIds::new(100));
        let (seq, _) = inbound.on_batch(batch(7, &[1, 2])).hand_over.expect("new");
        inbound.on_app_ack(seq);
        inbound.on_disconnect();
        let again = inbound.on_batch(batch(3, &[1, 2, 3]));
        assert_eq!(handed(&again), [3], "only the new message is handed over");
        assert_eq!(again.duplicates, [1, 2]);
        assert!(inbound.ready_acks().is_empty(), "3 is still with the app");
        let all_seen = inbound.on_batch(batch(4, &[1]));
        assert_eq!(all_seen.hand_over, None);
        assert_eq!(inbound.ready_acks(), [4]);
    }

    #[test]
    fn a_redelivery_of_held_ids_waits_for_the_app() {
        let mut inbound = Inbound::new(SeenIds::new(100));
        let (seq, _) = inbound.on_batch(batch(7, &[1, 2])).hand_over.expect("new");
        // courier's ack timeout: the same entries in a new batch, the old one retired.
        let again = inbound.on_batch(batch(8, &[1, 2]));
        assert_eq!(again.hand_over, None, "the app holds them already");
        assert!(inbound.ready_acks().is_empty());
        inbound.on_app_ack(seq);
        assert_eq!(
            inbound.ready_acks(),
            [8],
            "the retired batch 7 is not acked"
        );
    }

    #[test]
    fn a_dropped_delivery_is_handed_over_again_on_redelivery() {
        let mut inbound = Inbound::new(SeenIds::new(100));
        let (seq, _) = inbound.on_batch(batch(7, &[1])).hand_over.expect("new");
        assert_eq!(inbound.on_app_drop(seq), [1]);
        assert!(
            inbound.ready_acks().is_empty(),
            "a dropped delivery is not acked"
        );
        let again = inbound.on_batch(batch(9, &[1]));
        assert_eq!(handed(&again), [1]);
    }

    #[test]
    fn an_id_twice_in_one_batch_is_handed_over_once() {
        let mut inbound = Inbound::new(SeenIds::new(100));
        let arrival = inbound.on_batch(batch(7, &[5, 5]));
        assert_eq!(handed(&arrival), [5]);
        assert_eq!(arrival.duplicates, [5]);
    }
}
