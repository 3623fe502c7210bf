//! Event delivery: the bounded [`EventStream`] a subscriber reads, and the bus actors
//! publish to.
//!
//! Data events (messages, streams) are published with [`EventBus::publish`], which waits
//! for room in every subscriber's buffer: a subscriber that stops reading stops the
//! connection actor, whose connection stops reading the socket, so the remote sender
//! waits. Nothing is dropped and nothing grows without bound.
//!
//! Control events (peer connected, path changed, ...) use [`EventBus::publish_later`],
//! which never blocks its caller (a supervisor must not wait for a slow application):
//! where a subscriber's buffer is full the event joins that subscriber's backlog, in
//! order, drained by one task per subscriber at most. The backlog is bounded
//! ([`MAX_BACKLOG`]); beyond it the oldest control event is dropped and counted
//! ([`EventStream::dropped`]) — every queue and every task count stays bounded.

use std::{
    collections::VecDeque,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex, RwLock,
    },
};

use tokio::sync::mpsc;

use crate::api::Event;

/// Control events one subscriber's backlog holds while its buffer is full. 1024: control
/// events come a few per connection change, so a subscriber this far behind is not reading
/// at all; what it misses is counted.
pub const MAX_BACKLOG: usize = 1024;

/// The receiving end of a subscription.
#[derive(Debug)]
pub struct EventStream {
    rx: mpsc::Receiver<Event>,
    dropped: Arc<AtomicU64>,
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

    /// Control events dropped because this subscriber's backlog was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

#[derive(Debug)]
struct Sub {
    tx: mpsc::Sender<Event>,
    backlog: Mutex<VecDeque<Event>>,
    pumping: AtomicBool,
    dropped: Arc<AtomicU64>,
}

/// Fan-out of events to every subscriber. Cheap to clone.
#[derive(Clone, Debug)]
pub struct EventBus {
    /// The subscribers, as a snapshot replaced whenever one comes or goes: publishing
    /// takes a read lock and one reference count, not a copy of the list.
    subs: Arc<RwLock<Arc<[Arc<Sub>]>>>,
}

impl Default for EventBus {
    fn default() -> Self {
        Self { subs: Arc::new(RwLock::new(Arc::from(Vec::new()))) }
    }
}

impl EventBus {
    /// Adds a subscriber with a buffer of `capacity` events.
    pub fn subscribe(&self, capacity: usize) -> EventStream {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let dropped = Arc::new(AtomicU64::new(0));
        let sub = Sub {
            tx,
            backlog: Mutex::new(VecDeque::new()),
            pumping: AtomicBool::new(false),
            dropped: dropped.clone(),
        };
        let mut subs = self.subs.write().unwrap_or_else(|e| e.into_inner());
        let mut list: Vec<Arc<Sub>> = subs.iter().filter(|s| !s.tx.is_closed()).cloned().collect();
        list.push(Arc::new(sub));
        *subs = list.into();
        EventStream { rx, dropped }
    }

    /// The live subscribers; a closed one found here is removed from the snapshot.
    fn senders(&self) -> Arc<[Arc<Sub>]> {
        let subs = self.subs.read().unwrap_or_else(|e| e.into_inner()).clone();
        if subs.iter().all(|s| !s.tx.is_closed()) {
            return subs;
        }
        let mut w = self.subs.write().unwrap_or_else(|e| e.into_inner());
        let live: Vec<Arc<Sub>> = w.iter().filter(|s| !s.tx.is_closed()).cloned().collect();
        *w = live.into();
        w.clone()
    }

    /// Delivers `ev` to every subscriber, waiting for room (backpressure).
    pub async fn publish(&self, ev: Event) {
        let subs = self.senders();
        if let Some((last, rest)) = subs.split_last() {
            for s in rest {
                let _ = s.tx.send(ev.clone()).await;
            }
            let _ = last.tx.send(ev).await;
        }
    }

    /// Delivers `ev` without blocking the caller: at once where there is room, otherwise
    /// through the subscriber's bounded backlog (see the module docs).
    pub fn publish_later(&self, ev: Event) {
        for s in self.senders().iter() {
            let mut backlog = s.backlog.lock().unwrap_or_else(|e| e.into_inner());
            // Straight into the buffer only when nothing older is still on its way there.
            if backlog.is_empty() && !s.pumping.load(Ordering::Acquire) {
                match s.tx.try_send(ev.clone()) {
                    Ok(()) => continue,
                    Err(mpsc::error::TrySendError::Closed(_)) => continue,
                    Err(mpsc::error::TrySendError::Full(_)) => {}
                }
            }
            if backlog.len() >= MAX_BACKLOG {
                backlog.pop_front();
                s.dropped.fetch_add(1, Ordering::Relaxed);
            }
            backlog.push_back(ev.clone());
            drop(backlog);
            if !s.pumping.swap(true, Ordering::AcqRel) {
                tokio::spawn(pump(s.clone()));
            }
        }
    }

    /// Number of live subscribers.
    pub fn subscribers(&self) -> usize {
        self.senders().len()
    }
}

/// Drains one subscriber's backlog into its buffer, in order, then ends.
async fn pump(s: Arc<Sub>) {
    loop {
        let next = s.backlog.lock().unwrap_or_else(|e| e.into_inner()).pop_front();
        match next {
            Some(ev) => {
                if s.tx.send(ev).await.is_err() {
                    break;
                }
            }
            None => {
                s.pumping.store(false, Ordering::Release);
                // An event may have been queued after the check: take it over if so.
                let more = !s.backlog.lock().unwrap_or_else(|e| e.into_inner()).is_empty();
                if !more || s.pumping.swap(true, Ordering::AcqRel) {
                    return;
                }
            }
        }
    }
    s.backlog.lock().unwrap_or_else(|e| e.into_inner()).clear();
    s.pumping.store(false, Ordering::Release);
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests: a panic is the failure report.
mod tests {
    use super::*;

    fn ev(n: u32) -> Event {
        Event::LimitHit { limit: n.to_string(), detail: String::new() }
    }

    fn n(e: &Event) -> u32 {
        match e {
            Event::LimitHit { limit, .. } => limit.parse().unwrap(),
            _ => panic!("unexpected event"),
        }
    }

    #[tokio::test]
    async fn a_full_subscriber_gets_control_events_in_order_through_one_bounded_backlog() {
        let bus = EventBus::default();
        let mut s = bus.subscribe(2);
        for i in 0..(MAX_BACKLOG as u32 + 2 + 10) {
            bus.publish_later(ev(i));
        }
        // 2 in the buffer, MAX_BACKLOG in the backlog, the 10 oldest of the backlog dropped.
        let mut got = Vec::new();
        while got.len() < MAX_BACKLOG + 2 {
            got.push(n(&tokio::time::timeout(std::time::Duration::from_secs(5), s.recv())
                .await
                .unwrap()
                .unwrap()));
        }
        assert_eq!(&got[..2], &[0, 1]);
        assert_eq!(got[2], 12, "the oldest backlog entries were dropped");
        assert!(got.windows(2).all(|w| w[0] < w[1]), "in order");
        assert_eq!(s.dropped(), 10);
        assert_eq!(bus.subscribers(), 1);
    }

    #[tokio::test]
    async fn control_events_are_never_reordered_and_every_drop_is_counted() {
        let bus = EventBus::default();
        let mut s = bus.subscribe(4);
        const N: u32 = 5000;
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            while let Ok(Some(e)) =
                tokio::time::timeout(std::time::Duration::from_millis(500), s.recv()).await
            {
                got.push(n(&e));
            }
            (got, s.dropped())
        });
        for i in 0..N {
            bus.publish_later(ev(i));
            if i % 7 == 0 {
                tokio::task::yield_now().await;
            }
        }
        let (got, dropped) = reader.await.unwrap();
        assert!(got.windows(2).all(|w| w[0] < w[1]), "reordered");
        assert_eq!(got.len() as u64 + dropped, u64::from(N));
    }
}
