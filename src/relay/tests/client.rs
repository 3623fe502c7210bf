//! The client machine with a synthetic clock: renewals, failover, backoff, and a run
//! against the server's handshake and state machines.

use std::time::{Duration, Instant};

use super::{key, peer, reserved};
use crate::relay::{
    auth::{Admission, HandshakeStep, ServerHandshake},
    client::{
        ClientCommandError, ClientEvent, ClientOutput, RelayClientConfig, RelayClientState, RelayEndpoint,
    },
    limits::RelayLimits,
    server::{ConnId, Output, RelayState},
    CircuitId, ErrorCode, RelayConfigError, RelayMessage,
};

const R0: &str = "ws://relay0.example:7000";
const R1: &str = "ws://relay1.example:7000";

fn cfg(urls: &[&str]) -> RelayClientConfig {
    RelayClientConfig::new(urls.iter().map(|u| RelayEndpoint { url: (*u).into(), token: None }).collect())
}

struct C {
    c: RelayClientState,
    now: Instant,
}

impl C {
    fn new(urls: &[&str]) -> Self {
        Self { c: RelayClientState::new(key(1), cfg(urls), 7).unwrap(), now: Instant::now() }
    }
    fn drain(&mut self) -> Vec<ClientOutput> {
        std::iter::from_fn(|| self.c.poll_output()).collect()
    }
    fn msg(&mut self, m: RelayMessage) -> Vec<ClientOutput> {
        self.c.handle_message(m, self.now);
        self.drain()
    }
    fn advance_to_timeout(&mut self) -> Vec<ClientOutput> {
        self.now = self.c.poll_timeout().expect("a timer is armed");
        self.c.handle_timeout(self.now);
        self.drain()
    }
    /// Runs a connection attempt to `url` up to a granted reservation of `ttl` seconds.
    fn reserve_at(&mut self, url: &str, ttl: u64) {
        let hs = ServerHandshake::new([3; 32], url, self.now);
        let out = self.msg(hs.challenge());
        assert_eq!(out.len(), 3, "{out:?}");
        assert_eq!(out[2], ClientOutput::Send(RelayMessage::Reserve { ttl_secs: 600 }));
        let out = self.msg(reserved(ttl));
        assert_eq!(
            out,
            vec![ClientOutput::Event(ClientEvent::Reserved {
                url: url.into(),
                ttl: Duration::from_secs(ttl),
                observed: None,
                stun: Vec::new(),
            })]
        );
    }
}

fn failed(out: &[ClientOutput]) -> Option<(bool, String, Duration)> {
    out.iter().find_map(|o| match o {
        ClientOutput::Event(ClientEvent::RelayFailed { was_reserved, next_url, retry_in, .. }) => {
            Some((*was_reserved, next_url.clone(), *retry_in))
        }
        _ => None,
    })
}

#[test]
fn needs_a_relay() {
    let e = RelayClientState::new(key(1), cfg(&[]), 0).unwrap_err();
    assert_eq!(e, RelayConfigError::NoRelays);
}

#[test]
fn reserves_and_renews_at_half_ttl() {
    let mut c = C::new(&[R0]);
    assert_eq!(c.c.poll_timeout(), None);
    c.c.start(c.now);
    assert_eq!(c.drain(), vec![ClientOutput::Connect { relay: 0, url: R0.into() }]);
    c.c.handle_connected(c.now);
    c.reserve_at(R0, 600);
    let granted_at = c.now;
    assert!(c.c.is_reserved(c.now));
    for i in 1..=5u32 {
        let out = c.advance_to_timeout();
        assert_eq!(c.now, granted_at + Duration::from_secs(300) * i);
        assert_eq!(out, vec![ClientOutput::Send(RelayMessage::Reserve { ttl_secs: 600 })]);
        // Until answered, the next deadline is the expiry.
        assert_eq!(c.c.poll_timeout(), Some(c.now + Duration::from_secs(300)));
        c.msg(reserved(600));
        assert_eq!(c.c.poll_timeout(), Some(c.now + Duration::from_secs(300)));
    }
    assert_eq!(c.c.consecutive_failures(), 0);
}

#[test]
fn unanswered_renewal_fails_over_to_the_next_relay() {
    let mut c = C::new(&[R0, R1]);
    c.c.start(c.now);
    c.drain();
    c.reserve_at(R0, 10);
    assert_eq!(c.advance_to_timeout(), vec![ClientOutput::Send(RelayMessage::Reserve { ttl_secs: 600 })]);
    let out = c.advance_to_timeout(); // the expiry, no answer
    assert_eq!(out[0], ClientOutput::Disconnect);
    let (was_reserved, next, wait) = failed(&out).unwrap();
    assert!(was_reserved);
    assert_eq!(next, R1);
    assert!(!c.c.is_reserved(c.now));
    let t = c.now;
    let out = c.advance_to_timeout();
    assert_eq!(c.now - t, wait);
    assert_eq!(out, vec![ClientOutput::Connect { relay: 1, url: R1.into() }]);
    c.reserve_at(R1, 600);
    assert_eq!(c.c.current_relay().url, R1);
}

#[test]
fn failover_cycles_through_the_list() {
    let mut c = C::new(&[R0, R1]);
    c.c.start(c.now);
    let mut order = vec![];
    for _ in 0..4 {
        let out = c.drain();
        let Some(ClientOutput::Connect { url, .. }) =
            out.into_iter().find(|o| matches!(o, ClientOutput::Connect { .. }))
        else {
            panic!("no connect")
        };
        order.push(url);
        c.c.handle_disconnected(c.now, "connection refused");
        let out = c.drain();
        assert!(!out.contains(&ClientOutput::Disconnect), "nothing to close after a failed connect");
        c.now = c.c.poll_timeout().unwrap();
        c.c.handle_timeout(c.now);
    }
    assert_eq!(order, [R0, R1, R0, R1]);
}

#[test]
fn backoff_grows_to_its_cap_and_resets_after_success() {
    let mut c = C::new(&[R0]);
    c.c.start(c.now);
    c.drain();
    let mut waits = vec![];
    for _ in 0..10 {
        c.c.handle_disconnected(c.now, "down");
        waits.push(failed(&c.drain()).unwrap().2);
        c.advance_to_timeout();
    }
    let ms: Vec<u128> = waits.iter().map(|w| w.as_millis()).collect();
    for (i, w) in waits.iter().enumerate() {
        let base = Duration::from_millis(500 * (1u64 << i)).min(Duration::from_secs(30));
        assert!(*w <= base && *w >= base * 3 / 4, "failure {}: {w:?} vs base {base:?} ({ms:?})", i + 1);
    }
    assert!(waits.windows(2).take(6).all(|p| p[0] < p[1]), "{ms:?}");
    assert_eq!(c.c.consecutive_failures(), 10);
    // Success resets.
    c.reserve_at(R0, 600);
    assert_eq!(c.c.consecutive_failures(), 0);
    c.c.handle_disconnected(c.now, "relay restarted");
    let (_, _, wait) = failed(&c.drain()).unwrap();
    assert!(wait <= Duration::from_millis(500), "{wait:?}");
}

#[test]
fn connect_timeout_and_refusals_fail_the_attempt() {
    let mut c = C::new(&[R0, R1]);
    c.c.start(c.now);
    c.drain();
    // No challenge in time.
    let t = c.now;
    let out = c.advance_to_timeout();
    assert_eq!(c.now - t, Duration::from_secs(15));
    assert_eq!(out[0], ClientOutput::Disconnect);
    assert!(failed(&out).is_some());
    // A challenge naming another relay: nothing is signed.
    c.advance_to_timeout();
    let out = c.msg(ServerHandshake::new([0; 32], "ws://elsewhere:1", c.now).challenge());
    assert!(out.iter().all(|o| !matches!(o, ClientOutput::Send(_))), "{out:?}");
    assert!(failed(&out).is_some());
    // An error before the reservation (not admitted).
    c.advance_to_timeout();
    c.msg(ServerHandshake::new([0; 32], R0, c.now).challenge());
    let out = c.msg(RelayMessage::error(ErrorCode::NotAllowed, "no"));
    assert!(failed(&out).is_some());
    // A message that makes no sense from a relay.
    c.advance_to_timeout();
    c.reserve_at(R1, 600);
    let out = c.msg(RelayMessage::Dial { target: peer(2) });
    assert!(failed(&out).is_some());
}

#[test]
fn events_and_commands_while_reserved() {
    let mut c = C::new(&[R0]);
    assert_eq!(c.c.signal(peer(2), vec![], c.now), Err(ClientCommandError::NotReserved));
    c.c.start(c.now);
    c.drain();
    c.reserve_at(R0, 600);
    let out = c.msg(RelayMessage::Incoming { circuit: CircuitId(4), from: peer(2) });
    assert_eq!(
        out,
        vec![ClientOutput::Event(ClientEvent::Incoming {
            url: R0.into(),
            circuit: CircuitId(4),
            from: peer(2)
        })]
    );
    let out = c.msg(RelayMessage::Signaled { from: peer(2), payload: b"x".to_vec() });
    assert_eq!(
        out,
        vec![ClientOutput::Event(ClientEvent::Signaled { from: peer(2), payload: b"x".to_vec() })]
    );
    let out = c.msg(RelayMessage::error(ErrorCode::TargetNotReserved, "no"));
    assert!(matches!(
        out[..],
        [ClientOutput::Event(ClientEvent::RelayError { code: ErrorCode::TargetNotReserved, .. })]
    ));
    assert!(c.msg(RelayMessage::Unknown).is_empty());
    c.c.signal(peer(2), b"offer".to_vec(), c.now).unwrap();
    c.c.refuse(CircuitId(4), "busy", c.now).unwrap();
    assert_eq!(
        c.drain(),
        vec![
            ClientOutput::Send(RelayMessage::Signal { to: peer(2), payload: b"offer".to_vec() }),
            ClientOutput::Send(RelayMessage::Refuse { circuit: CircuitId(4), reason: "busy".into() }),
        ]
    );
    assert!(matches!(
        c.c.signal(peer(2), vec![0; 16 * 1024 + 1], c.now),
        Err(ClientCommandError::SignalTooLarge { .. })
    ));
    c.c.stop();
    assert_eq!(
        c.drain(),
        vec![ClientOutput::Send(RelayMessage::Reserve { ttl_secs: 0 }), ClientOutput::Disconnect]
    );
    assert_eq!(c.c.poll_timeout(), None);
    assert!(c.msg(reserved(5)).is_empty());
}

/// The client machine against the server's handshake and state machines, messages going
/// through the codec, until an incoming circuit reaches the client.
#[test]
fn client_and_server_machines_interoperate() {
    let now = Instant::now();
    let mut relay = RelayState::new(RelayLimits::default());
    let admission = Admission::open();
    let mut hs = ServerHandshake::new([8; 32], R0, now);
    let mut c = C { c: RelayClientState::new(key(2), cfg(&[R0]), 1).unwrap(), now };
    c.c.start(now);
    c.drain();
    let conn = ConnId(1);
    let mut to_client = vec![hs.challenge()];
    let mut reserved = false;
    for _round in 0..5 {
        let mut to_relay = vec![];
        for m in to_client.drain(..) {
            let m = RelayMessage::decode(&m.encode().unwrap()).unwrap();
            for o in c.msg(m) {
                match o {
                    ClientOutput::Send(m) => to_relay.push(m),
                    ClientOutput::Event(ClientEvent::Reserved { .. }) => reserved = true,
                    other => panic!("{other:?}"),
                }
            }
        }
        for m in to_relay {
            let m = RelayMessage::decode(&m.encode().unwrap()).unwrap();
            if let Some(HsDone { peer, purpose }) = hs_step(&mut hs, m.clone(), &admission) {
                relay.handle_authenticated(conn, peer, purpose, now);
            } else if matches!(m, RelayMessage::Reserve { .. }) {
                relay.handle_message(conn, m, now);
            }
            while let Some(o) = relay.poll_output() {
                if let Output::Send { conn: c, msg } = o {
                    assert_eq!(c, conn);
                    to_client.push(msg);
                }
            }
        }
    }
    assert!(reserved);
    assert!(relay.is_reserved(&peer(2), now));
    // A dial from peer 1 reaches the client as an event.
    relay.handle_authenticated(ConnId(2), peer(1), crate::relay::Purpose::Dial { target: peer(2) }, now);
    let incoming = std::iter::from_fn(|| relay.poll_output())
        .find_map(|o| match o {
            Output::Send { conn: c, msg } if c == conn => Some(msg),
            _ => None,
        })
        .unwrap();
    let out = c.msg(incoming);
    assert!(matches!(out[..], [ClientOutput::Event(ClientEvent::Incoming { from, .. })] if from == peer(1)));
}

struct HsDone {
    peer: crate::identity::PeerId,
    purpose: crate::relay::Purpose,
}

/// Feeds the handshake while it is running; `Some` when it completes with this message.
fn hs_step(hs: &mut ServerHandshake, m: RelayMessage, admission: &Admission) -> Option<HsDone> {
    match m {
        RelayMessage::Auth { .. } | RelayMessage::Control => {
            match hs.handle_message(m, admission, 1_700_000_000).unwrap() {
                HandshakeStep::Done { peer, purpose } => Some(HsDone { peer, purpose }),
                _ => None,
            }
        }
        _ => None,
    }
}
