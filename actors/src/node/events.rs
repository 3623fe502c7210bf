//! Event delivery: the bounded [`EventStream`] a subscriber reads, and the bus actors
//! publish to.
//!
//! Data events (messages, streams) are published with [`EventBus::publish`], which waits
//! for room in every subscriber's buffer: a subscriber that stops reading stops the
//! connection actor, whose connection stops reading the socket, so the remote sender
//! waits. Nothing is dropped and nothing grows without bound. Control events from the
//! supervisor use [`EventBus::publish_later`], which never blocks the supervisor.

use std::sync::{Arc, RwLock};

use tokio::sync::mpsc;

use crate::api::Event;

/// The receiving end of a subscription.
#[derive(Debug)]
pub struct EventStream {
    rx: mpsc::Receiver<Event>,
}

impl EventStream {
    /// The next event; `None` once the node has stopped. Cancel safe.
    pub async fn recv(&mut self) -> Option<Event> {
        self.rx.recv().await
    }

    /// The next event if one is buffered.
    pub fn try_recv(&mut self) -> Option<Event> {
        self.rx.try_recv().ok()
    }
}

/// Fan-out of events to every subscriber. Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct EventBus {
    subs: Arc<RwLock<Vec<mpsc::Sender<Event>>>>,
}

impl EventBus {
    /// Adds a subscriber with a buffer of `capacity` events.
    pub fn subscribe(&self, capacity: usize) -> EventStream {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        self.subs.write().unwrap_or_else(|e| e.into_inner()).push(tx);
        EventStream { rx }
    }

    fn senders(&self) -> Vec<mpsc::Sender<Event>> {
        let mut subs = self.subs.write().unwrap_or_else(|e| e.into_inner());
        subs.retain(|s| !s.is_closed());
        subs.clone()
    }

    /// Delivers `ev` to every subscriber, waiting for room (backpressure).
    pub async fn publish(&self, ev: Event) {
        let subs = self.senders();
        if let Some((last, rest)) = subs.split_last() {
            for s in rest {
                let _ = s.send(ev.clone()).await;
            }
            let _ = last.send(ev).await;
        }
    }

    /// Delivers `ev` without blocking the caller: immediately where there is room,
    /// otherwise from a spawned task that waits for room (order relative to later
    /// control events is then not guaranteed).
    pub fn publish_later(&self, ev: Event) {
        for s in self.senders() {
            match s.try_send(ev.clone()) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(ev)) => {
                    tokio::spawn(async move {
                        let _ = s.send(ev).await;
                    });
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {}
            }
        }
    }

    /// Number of live subscribers.
    pub fn subscribers(&self) -> usize {
        self.senders().len()
    }
}
