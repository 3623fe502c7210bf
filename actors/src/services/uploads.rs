//! Which file names are being received right now, from whom, and how a newer request from
//! the same peer takes a name over from a stale one.
//!
//! Every `file_stat` and `file` request holds a [`Claim`] on its name while it touches
//! `<name>.part`. A claim of a name held for another peer is refused. A claim of a name
//! held for the *same* peer supersedes the holder: the holder is told to stop
//! ([`Claim::cancelled`]), flushes and closes its file and drops its claim, and the new
//! request proceeds (resuming from the `.part`). That is what a restarted sender needs: the
//! node learns that a killed sender's connection is dead only when the connection times out,
//! long after the sender was restarted, while the peer's identity already shows that the
//! new request comes from the same sender. A client sends its `file_stat` and its `file`
//! request one after the other on one stream, so it never supersedes itself.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use kizuna::PeerId;
use tokio::sync::watch;

/// Why a claim was not granted.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ClaimError {
    /// Another peer's request holds the name.
    #[error("{0} is being received from another peer (only the same peer can take over its upload)")]
    Busy(String),
    /// This peer's earlier request was told to stop but did not release the name in time.
    #[error("an earlier transfer of {name} from this peer did not stop within {wait:?}; try again")]
    Stuck {
        /// The name.
        name: String,
        /// How long the claim waited.
        wait: Duration,
    },
}

struct Holder {
    peer: PeerId,
    id: u64,
    cancel: watch::Sender<bool>,
    /// Never sent on: `changed()` resolves (with an error) when the claim drops its sender.
    released: watch::Receiver<()>,
}

#[derive(Default)]
struct State {
    next_id: u64,
    held: HashMap<String, Holder>,
}

/// The names being received, each held by one [`Claim`].
#[derive(Default)]
pub(crate) struct Uploads {
    state: Mutex<State>,
}

/// A name held by one request until dropped.
pub(crate) struct Claim<'a> {
    uploads: &'a Uploads,
    name: String,
    id: u64,
    cancel: watch::Receiver<bool>,
    _released: watch::Sender<()>,
}

impl Uploads {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The map stays consistent whatever panicked while holding the lock (every change
        // is a single insert or remove).
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Claims `name` for `peer`: at once if nobody holds it; after telling the holder to
    /// stop and waiting (at most `wait`) for it to let go if `peer` holds it already;
    /// refused if another peer does. Cancel safe: dropping the future claims nothing.
    pub(crate) async fn claim(
        &self,
        name: &str,
        peer: PeerId,
        wait: Duration,
    ) -> Result<Claim<'_>, ClaimError> {
        let deadline = Instant::now() + wait;
        loop {
            let mut released = {
                let mut st = self.lock();
                match st.held.get(name) {
                    None => {
                        st.next_id += 1;
                        let id = st.next_id;
                        let (cancel_tx, cancel) = watch::channel(false);
                        let (release_tx, released) = watch::channel(());
                        st.held.insert(name.into(), Holder { peer, id, cancel: cancel_tx, released });
                        return Ok(Claim {
                            uploads: self,
                            name: name.into(),
                            id,
                            cancel,
                            _released: release_tx,
                        });
                    }
                    Some(h) if h.peer != peer => return Err(ClaimError::Busy(name.into())),
                    Some(h) => {
                        tracing::debug!(%peer, name, "superseding a stale transfer from the same peer");
                        h.cancel.send_replace(true);
                        h.released.clone()
                    }
                }
            };
            let left = deadline.saturating_duration_since(Instant::now());
            // Resolves only when the holder's claim is dropped (its sender with it).
            if tokio::time::timeout(left, released.changed()).await.is_err() {
                return Err(ClaimError::Stuck { name: name.into(), wait });
            }
        }
    }
}

impl Claim<'_> {
    /// Whether a newer request from the same peer wants the name.
    pub(crate) fn is_cancelled(&self) -> bool {
        *self.cancel.borrow()
    }

    /// Resolves once a newer request from the same peer wants the name. Cancel safe.
    pub(crate) async fn cancelled(&mut self) {
        // The sender lives in the registry until this claim removes it, so `wait_for`
        // fails only after this claim is gone; stay pending then.
        if self.cancel.wait_for(|c| *c).await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        let mut st = self.uploads.lock();
        if st.held.get(&self.name).is_some_and(|h| h.id == self.id) {
            st.held.remove(&self.name);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests: a panic is the failure report.
mod tests {
    use kizuna::Keypair;

    use super::*;

    fn peer(seed: u8) -> PeerId {
        Keypair::from_seed([seed; 32]).peer_id()
    }

    const WAIT: Duration = Duration::from_secs(5);

    #[tokio::test]
    async fn another_peer_is_refused_and_a_released_name_is_free() {
        let u = Uploads::default();
        let a = u.claim("x", peer(1), WAIT).await.unwrap();
        assert!(matches!(u.claim("x", peer(2), WAIT).await, Err(ClaimError::Busy(n)) if n == "x"));
        let _other_name = u.claim("y", peer(2), WAIT).await.unwrap();
        assert!(!a.is_cancelled());
        drop(a);
        let b = u.claim("x", peer(2), WAIT).await.unwrap();
        assert!(!b.is_cancelled());
    }

    #[tokio::test]
    async fn the_same_peer_supersedes_the_holder_once_it_lets_go() {
        let u = Uploads::default();
        let mut stale = u.claim("x", peer(1), WAIT).await.unwrap();
        let newer = async {
            let c = u.claim("x", peer(1), WAIT).await.unwrap();
            assert!(!c.is_cancelled());
        };
        let holder = async move {
            stale.cancelled().await;
            assert!(stale.is_cancelled());
            drop(stale);
        };
        tokio::time::timeout(WAIT, futures_util::future::join(newer, holder)).await.unwrap();
        assert!(u.lock().held.is_empty());
    }

    #[tokio::test]
    async fn a_holder_that_does_not_let_go_makes_the_claim_fail_in_bounded_time() {
        let u = Uploads::default();
        let stale = u.claim("x", peer(1), WAIT).await.unwrap();
        let r = u.claim("x", peer(1), Duration::from_millis(50)).await;
        assert!(matches!(r, Err(ClaimError::Stuck { .. })), "{:?}", r.err());
        assert!(stale.is_cancelled());
        // The failed claim took nothing: the holder still holds the name.
        assert!(matches!(u.claim("x", peer(2), WAIT).await, Err(ClaimError::Busy(_))));
    }
}
