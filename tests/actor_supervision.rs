//! Actor-harness tests of supervision: restarts, restart intensity, reconnects, panics.

use std::time::Duration;

use kizuna::{Protocol, TransportAddr};
use kizuna_actors::{
    testing::{secs, TestNode},
    Event, Fault, Send as SendMsg,
};

fn tcp_only(c: &mut kizuna_actors::SupervisorConfig) {
    c.protocols = vec![Protocol::Tcp];
}

#[actix_rt::test]
async fn killed_listener_is_restarted_and_accepts_again() {
    for (i, p) in [Protocol::Tcp, Protocol::Quic].into_iter().enumerate() {
        let mut a = TestNode::start_with(100 + 2 * i as u8, |c| c.protocols = vec![p]).await.unwrap();
        let b = TestNode::start_with(101 + 2 * i as u8, |c| c.protocols = vec![p]).await.unwrap();
        let before = a.ticket().await.unwrap();
        let prefix = format!("listener/{}=", p.name());
        let name = a.child(&prefix).await.unwrap().expect("listener child");
        assert!(a.inject(&name, Fault::Kill).await.unwrap());
        a.assert_restarted(&prefix, secs(5)).await.unwrap();
        a.wait_for(|e| matches!(e, Event::ListenerStarted { .. }), secs(5)).await.unwrap();
        // Re-bound to the same port: the old ticket still works.
        assert_eq!(a.ticket().await.unwrap(), before, "{p}");
        b.addr.send(kizuna_actors::Connect { addr: before }).await.unwrap().unwrap();
        a.wait_for(|e| matches!(e, Event::PeerConnected { .. }), secs(5)).await.unwrap();
    }
}

#[actix_rt::test]
async fn restart_intensity_exceeded_gives_up() {
    let mut a = TestNode::start_with(3, tcp_only).await.unwrap();
    let ticket = a.ticket().await.unwrap();
    let Some(TransportAddr::Tcp(port)) = ticket.addrs.first().cloned() else { panic!("no tcp addr") };
    let name = a.child("listener/tcp=").await.unwrap().unwrap();
    assert!(a.inject(&name, Fault::Kill).await.unwrap());
    // Make every re-bind fail: occupy the port as soon as the listener released it.
    let mut squatter = None;
    for _ in 0..200 {
        if let Ok(l) = std::net::TcpListener::bind(port) {
            squatter = Some(l);
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(squatter.is_some(), "could not occupy the listener's port");
    let ev = a.wait_for(|e| matches!(e, Event::ChildGivenUp { .. }), secs(15)).await.unwrap();
    let Event::ChildGivenUp { child, .. } = ev else { unreachable!() };
    assert_eq!(child, name);
    let restarts = a.history.iter().filter(|e| matches!(e, Event::ActorRestarted { .. })).count();
    assert_eq!(restarts, 5, "5 restarts within the window, then give up");
    assert_eq!(a.stats().await.unwrap().given_up, 1);
}

#[actix_rt::test]
async fn killed_connection_is_reconnected_while_wanted() {
    let mut a = TestNode::start_with(4, tcp_only).await.unwrap();
    let mut b = TestNode::start_with(5, tcp_only).await.unwrap();
    a.connect(&b).await.unwrap();
    a.wait_for(|e| matches!(e, Event::PeerConnected { .. }), secs(5)).await.unwrap();
    let name = format!("connection/{}", b.peer);
    assert!(a.inject(&name, Fault::Kill).await.unwrap());
    a.assert_restarted("connection/", secs(5)).await.unwrap();
    a.wait_for(|e| matches!(e, Event::PeerConnected { .. }), secs(10)).await.unwrap();
    // The new connection carries messages.
    a.addr.send(SendMsg { peer: b.peer, data: "after-reconnect".into() }).await.unwrap().unwrap();
    b.wait_for(
        |e| matches!(e, Event::MessageReceived { data, .. } if &data[..] == b"after-reconnect"),
        secs(5),
    )
    .await
    .unwrap();
}

#[actix_rt::test]
async fn panicking_handler_does_not_take_the_node_down() {
    let mut a = TestNode::start_with(6, tcp_only).await.unwrap();
    let b = TestNode::start_with(7, tcp_only).await.unwrap();
    let c = TestNode::start_with(8, tcp_only).await.unwrap();
    a.connect(&b).await.unwrap();
    a.connect(&c).await.unwrap();
    // Panic in the connection to b: a restarts it; the connection to c is untouched.
    assert!(a.inject(&format!("connection/{}", b.peer), Fault::Panic).await.unwrap());
    let ev = a.wait_for(|e| matches!(e, Event::PeerDisconnected { .. }), secs(5)).await.unwrap();
    let Event::PeerDisconnected { peer, reason } = ev else { unreachable!() };
    assert_eq!(peer, b.peer);
    assert!(reason.to_string().contains("panicked"), "{reason}");
    a.assert_restarted("connection/", secs(5)).await.unwrap();
    a.addr.send(SendMsg { peer: c.peer, data: "still-alive".into() }).await.unwrap().unwrap();
    // Panic in the listener: restarted, node still accepts.
    let l = a.child("listener/tcp=").await.unwrap().unwrap();
    assert!(a.inject(&l, Fault::Panic).await.unwrap());
    a.assert_restarted("listener/tcp=", secs(5)).await.unwrap();
    a.wait_for(|e| matches!(e, Event::ListenerStarted { .. }), secs(5)).await.unwrap();
    let d = TestNode::start_with(9, tcp_only).await.unwrap();
    d.connect(&a).await.unwrap();
}

#[actix_rt::test]
async fn dropped_connection_is_reconnected() {
    let mut a = TestNode::start_with(10, tcp_only).await.unwrap();
    let b = TestNode::start_with(11, tcp_only).await.unwrap();
    a.connect(&b).await.unwrap();
    assert!(a.inject(&format!("connection/{}", b.peer), Fault::DropConnection).await.unwrap());
    a.wait_for(|e| matches!(e, Event::PeerDisconnected { .. }), secs(5)).await.unwrap();
    a.assert_restarted("connection/", secs(5)).await.unwrap();
    a.wait_for(|e| matches!(e, Event::PeerConnected { .. }), secs(10)).await.unwrap();
}

#[actix_rt::test]
async fn listen_on_a_taken_port_fails_clearly() {
    let squatter = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = squatter.local_addr().unwrap();
    let mut a = TestNode::start_with(12, |c| c.protocols = vec![Protocol::Tcp]).await.unwrap();
    let err =
        a.addr.send(kizuna_actors::Listen { addr: TransportAddr::Tcp(port) }).await.unwrap().unwrap_err();
    assert!(err.to_string().contains(&port.to_string()), "{err}");
    a.wait_for(|e| matches!(e, Event::ListenerFailed { .. }), secs(5)).await.unwrap();
}
