//! Embedding Kizuna in an actix application: two nodes in one process, one message each
//! way, one byte stream.
//!
//! Run: `cargo run --example quickstart`

use kizuna::{Keypair, TransportAddr};
use kizuna_actors::{
    Connect, Event, Listen, OpenStream, Send, Shutdown, Subscribe, Supervisor, SupervisorConfig,
};
use tokio::io::AsyncWriteExt;

#[actix::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Two nodes, each with its own identity (persist one with `Keypair::load_or_create`).
    let alice = Supervisor::start(SupervisorConfig::new(Keypair::generate()))?;
    let bob = Supervisor::start(SupervisorConfig::new(Keypair::generate()))?;

    // Bob listens on QUIC and TCP; his ticket is what Alice needs to reach him.
    bob.send(Listen { addr: TransportAddr::Quic("127.0.0.1:0".parse()?) }).await??;
    bob.send(Listen { addr: TransportAddr::Tcp("127.0.0.1:0".parse()?) }).await??;
    let ticket = bob.send(kizuna_actors::api::GetAddress).await?;
    println!("bob's ticket: {ticket}");

    let mut bob_events = bob.send(Subscribe::default()).await?;

    // Connect: authenticated to Bob's identity, best transport first, 10 s bound.
    let info = alice.send(Connect { addr: ticket.clone() }).await??;
    println!("alice connected over {} ({}), rtt {:?}", info.protocol, info.path, info.rtt);

    alice.send(Send { peer: ticket.peer_id, data: "hello bob".into() }).await??;

    // A byte stream for bulk data: it never passes through a mailbox.
    let mut stream = alice.send(OpenStream { peer: ticket.peer_id }).await??;
    stream.write_all(&vec![42u8; 1 << 20]).await?;
    stream.shutdown().await?;

    let mut got_message = false;
    let mut got_stream = false;
    while !(got_message && got_stream) {
        match bob_events.recv().await {
            Some(Event::MessageReceived { peer, data }) => {
                println!("bob got {:?} from {}", String::from_utf8_lossy(&data), peer.short());
                got_message = true;
            }
            Some(Event::StreamOpened { stream, .. }) => {
                if let Some(mut s) = stream.take() {
                    let n = tokio::io::copy(&mut s, &mut tokio::io::sink()).await?;
                    println!("bob read {n} bytes from a stream");
                    got_stream = true;
                }
            }
            Some(_) => {}
            None => break,
        }
    }

    alice.send(Shutdown).await?;
    bob.send(Shutdown).await?;
    Ok(())
}
