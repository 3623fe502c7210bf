//! The relay's STUN responder (`--stun UDP_ADDR`): RFC 5389 / RFC 8489 Binding.
//!
//! A Binding request gets a success response carrying XOR-MAPPED-ADDRESS (the source
//! address the request came from) and SOFTWARE. Anything that is not a STUN message
//! (RFC 8489 §5: top two bits zero, the magic cookie) is ignored; a request that cannot be
//! decoded, or of another method, gets a `400 Bad Request` error response; responses and
//! indications are ignored. Nothing here panics on any input.
//!
//! [`StunResponder::answer`] is pure (a datagram and its source in, a datagram out), so
//! the RFC 5780 behaviour-discovery attributes (CHANGE-REQUEST, OTHER-ADDRESS,
//! RESPONSE-ORIGIN) can be added when a relay has two addresses: the responder would
//! also take the address the request arrived on and return which socket answers.
//! Encoding and decoding use the `stun-rs` crate.

use std::net::SocketAddr;

use stun_rs::{
    attributes::stun::{ErrorCode as ErrorCodeAttr, Software, XorMappedAddress},
    methods::BINDING,
    MessageClass, MessageDecoderBuilder, MessageEncoderBuilder, StunMessage, StunMessageBuilder,
    TransactionId, MAGIC_COOKIE,
};
use tokio::net::UdpSocket;

/// The SOFTWARE attribute of the relay's responses.
pub const SOFTWARE: &str = concat!("kizuna relay ", env!("CARGO_PKG_VERSION"));

/// Largest datagram read. 1500 bytes: a Binding request is 20–100 bytes and STUN
/// messages over UDP must fit the path MTU (RFC 8489 §6.1); larger datagrams are cut and
/// then fail to decode.
const MAX_DATAGRAM: usize = 1500;

/// Size of the STUN header (RFC 8489 §5).
const HEADER_LEN: usize = 20;

/// Answers STUN requests. See the module docs.
#[derive(Debug, Clone)]
pub struct StunResponder {
    software: String,
}

impl StunResponder {
    /// A responder naming itself `software` in its answers.
    pub fn new(software: impl Into<String>) -> Self {
        Self { software: software.into() }
    }

    /// The answer to one datagram from `from`, or `None` to ignore it.
    pub fn answer(&self, packet: &[u8], from: SocketAddr) -> Option<Vec<u8>> {
        let tid = stun_header(packet)?;
        let request_class = class_bits(packet) == 0b00;
        match MessageDecoderBuilder::default().build().decode(packet) {
            Ok((msg, _)) if msg.class() == MessageClass::Request && msg.method() == BINDING => {
                self.binding_success(&msg, from)
            }
            Ok((msg, _)) if msg.class() == MessageClass::Request => {
                self.error(*msg.transaction_id(), 400, "Only Binding is supported")
            }
            Ok(_) => None,
            Err(_) if request_class => self.error(tid, 400, "Bad Request"),
            Err(_) => None,
        }
    }

    fn binding_success(&self, req: &StunMessage, from: SocketAddr) -> Option<Vec<u8>> {
        let mut b = StunMessageBuilder::new(BINDING, MessageClass::SuccessResponse)
            .with_transaction_id(*req.transaction_id())
            .with_attribute(XorMappedAddress::from(from));
        if let Ok(s) = Software::new(self.software.as_str()) {
            b = b.with_attribute(s);
        }
        encode(&b.build())
    }

    fn error(&self, tid: TransactionId, code: u16, reason: &str) -> Option<Vec<u8>> {
        let code = stun_rs::ErrorCode::new(code, reason).ok()?;
        let mut b = StunMessageBuilder::new(BINDING, MessageClass::ErrorResponse)
            .with_transaction_id(tid)
            .with_attribute(ErrorCodeAttr::from(code));
        if let Ok(s) = Software::new(self.software.as_str()) {
            b = b.with_attribute(s);
        }
        encode(&b.build())
    }
}

fn encode(msg: &StunMessage) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let n = MessageEncoderBuilder::default().build().encode(&mut buf, msg).ok()?;
    buf.truncate(n);
    Some(buf)
}

/// The transaction id if `packet` looks like STUN (length, top bits, magic cookie).
fn stun_header(packet: &[u8]) -> Option<TransactionId> {
    if packet.len() < HEADER_LEN || packet[0] & 0xc0 != 0 {
        return None;
    }
    let cookie = u32::from_be_bytes([packet[4], packet[5], packet[6], packet[7]]);
    if cookie != MAGIC_COOKIE.as_u32() {
        return None;
    }
    let mut tid = [0u8; 12];
    tid.copy_from_slice(&packet[8..HEADER_LEN]);
    Some(TransactionId::from(tid))
}

/// The two class bits of the message type (C1 at bit 8, C0 at bit 4).
fn class_bits(packet: &[u8]) -> u8 {
    let t = u16::from_be_bytes([packet[0], packet[1]]);
    (((t >> 7) & 0b10) | ((t >> 4) & 0b01)) as u8
}

/// Answers requests on `socket` until aborted.
pub(crate) async fn serve(socket: UdpSocket, responder: StunResponder) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let (n, from) = match socket.recv_from(&mut buf).await {
            Ok(r) => r,
            Err(e) => {
                // ICMP errors of earlier sends surface here on some systems; keep going.
                tracing::debug!("STUN receive failed: {e}");
                continue;
            }
        };
        if let Some(resp) = responder.answer(&buf[..n], from) {
            if let Err(e) = socket.send_to(&resp, from).await {
                tracing::debug!(%from, "STUN send failed: {e}");
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests: a panic is the failure report.
mod tests {
    use super::*;
    use stun_rs::StunAttribute;

    fn request(tid: [u8; 12]) -> Vec<u8> {
        let msg = StunMessageBuilder::new(BINDING, MessageClass::Request)
            .with_transaction_id(TransactionId::from(tid))
            .build();
        encode(&msg).unwrap()
    }

    #[test]
    fn binding_request_gets_xor_mapped_address() {
        let r = StunResponder::new("test");
        let from: SocketAddr = "203.0.113.7:40000".parse().unwrap();
        let resp = r.answer(&request([7; 12]), from).unwrap();
        let (msg, _) = MessageDecoderBuilder::default().build().decode(&resp).unwrap();
        assert_eq!(msg.class(), MessageClass::SuccessResponse);
        assert_eq!(msg.transaction_id().as_ref(), &[7; 12]);
        let attr = msg.get::<XorMappedAddress>().unwrap();
        let StunAttribute::XorMappedAddress(x) = attr else { panic!("{attr:?}") };
        assert_eq!(x.socket_address(), &from);
        assert!(msg.get::<Software>().is_some());
        let v6: SocketAddr = "[2001:db8::1]:5".parse().unwrap();
        assert!(r.answer(&request([1; 12]), v6).is_some());
    }

    #[test]
    fn garbage_is_ignored_or_refused_without_panic() {
        let r = StunResponder::new("test");
        let from: SocketAddr = "127.0.0.1:1".parse().unwrap();
        assert!(r.answer(b"", from).is_none());
        assert!(r.answer(&[0xff; 40], from).is_none());
        // A request header claiming more attribute bytes than present: 400.
        let mut bad = request([3; 12]);
        bad[3] = 40;
        let resp = r.answer(&bad, from).unwrap();
        let (msg, _) = MessageDecoderBuilder::default().build().decode(&resp).unwrap();
        assert_eq!(msg.class(), MessageClass::ErrorResponse);
        // Every prefix and every single-byte corruption: no panic.
        let good = request([9; 12]);
        for i in 0..good.len() {
            let _ = r.answer(&good[..i], from);
            for v in [0u8, 0x80, 0xff] {
                let mut m = good.clone();
                m[i] = v;
                let _ = r.answer(&m, from);
            }
        }
    }
}
