//! Setting up one peer connection: building it, the offer/answer exchange with trickled
//! candidates over a [`Signaler`], and waiting for the two fixed data channels to open.

use std::{net::SocketAddr, sync::Arc};

use crate::address::PathKind;

use bytes::Bytes;
use tokio::sync::{mpsc, watch};
use webrtc::{
    data_channel::{DataChannel, RTCDataChannelInit},
    peer_connection::{
        PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler, RTCIceCandidateInit,
        RTCIceGatheringState, RTCPeerConnectionIceEvent, RTCPeerConnectionState, RTCSessionDescription,
    },
};

use super::{
    channel::{opened, pump, ChannelState, PumpMode, LABEL_DATAGRAMS, LABEL_MESSAGES},
    config::WebRtcConfig,
    error::SignalError,
    runtime::BufferedRuntime,
    signal::{SignalKind, SignalMessage},
    Signaler,
};
use crate::{
    error::{Result, TransportError},
    identity::{Keypair, PeerId},
};

/// Local candidates queued for signaling before more are dropped (a host has a handful).
const CANDIDATE_QUEUE: usize = 64;
/// Channels opened by the peer and not yet routed; beyond this they are closed.
pub(crate) const REMOTE_CHANNEL_QUEUE: usize = 64;
/// How often the offerer nudges the driver while the SCTP association and the channels
/// open (see `PeerSetup::exchange`). 2 ms: a loopback round trip is ≈ 0.1 ms, so each
/// stage starts at most 2 ms late; the handful of calls cost microseconds.
const KICK_INTERVAL: std::time::Duration = std::time::Duration::from_millis(2);
/// Received datagrams queued before the pump drops them. 32 (≤ 8 MiB of 256 KiB
/// datagrams): webrtc-rs queues another 256 events per channel behind it, so this only
/// needs to absorb scheduling jitter. (Messages are read straight from their channel.)
pub(crate) const CHANNEL_QUEUE: usize = 32;

/// Events of a peer connection, delivered by its driver without ever blocking it.
struct Handler {
    candidates: mpsc::Sender<Option<RTCIceCandidateInit>>,
    channels: mpsc::Sender<Arc<dyn DataChannel>>,
    state: watch::Sender<RTCPeerConnectionState>,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Handler {
    async fn on_ice_candidate(&self, event: RTCPeerConnectionIceEvent) {
        match event.candidate.to_json() {
            Ok(init) => {
                let _ = self.candidates.try_send(Some(init));
            }
            Err(e) => tracing::debug!("unusable local ICE candidate: {e}"),
        }
    }

    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        if state == RTCIceGatheringState::Complete {
            let _ = self.candidates.try_send(None);
        }
    }

    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        tracing::trace!(?state, "WebRTC connection state");
        let _ = self.state.send(state);
    }

    async fn on_data_channel(&self, dc: Arc<dyn DataChannel>) {
        // Never wait here: this runs on the connection's driver.
        if let Err(mpsc::error::TrySendError::Full(dc)) = self.channels.try_send(dc) {
            tracing::debug!("too many unrouted WebRTC data channels: closing one");
            tokio::spawn(async move {
                let _ = dc.close().await;
            });
        }
    }
}

/// A data channel with its pump running.
pub(crate) struct Pumped {
    pub(crate) dc: Arc<dyn DataChannel>,
    pub(crate) rx: mpsc::Receiver<Bytes>,
    pub(crate) state: watch::Receiver<ChannelState>,
}

/// Starts the pump of `dc` with a queue of `queue` messages.
pub(crate) fn start_pump(dc: Arc<dyn DataChannel>, queue: usize, mode: PumpMode) -> Pumped {
    let (tx, rx) = mpsc::channel(queue);
    let (stx, state) = watch::channel(ChannelState::Connecting);
    tokio::spawn(pump(dc.clone(), tx, stx, mode));
    Pumped { dc, rx, state }
}

/// A peer connection being set up.
pub(crate) struct PeerSetup {
    pc: Arc<dyn PeerConnection>,
    signaling: Signaling,
    channels: mpsc::Receiver<Arc<dyn DataChannel>>,
}

/// The signaling half of a set-up: local candidates out, the peer's messages in.
struct Signaling {
    pc: Arc<dyn PeerConnection>,
    candidates: mpsc::Receiver<Option<RTCIceCandidateInit>>,
    state: watch::Receiver<RTCPeerConnectionState>,
    /// The data section's `mid`, for the candidates this side sends.
    mid: Option<String>,
    /// Whether the peer's description is applied (candidates before it wait in `early`).
    remote_set: bool,
    early: Vec<RTCIceCandidateInit>,
    /// Whether this side answers.
    answerer: bool,
}

/// What a finished set-up hands to the backend.
pub(crate) struct Established {
    pub(crate) pc: Arc<dyn PeerConnection>,
    pub(crate) messages: Pumped,
    pub(crate) datagrams: Pumped,
    pub(crate) channels: mpsc::Receiver<Arc<dyn DataChannel>>,
    pub(crate) state: watch::Receiver<RTCPeerConnectionState>,
}

impl Established {
    /// The path ICE selected: [`PathKind::Relayed`] when either end of the nominated
    /// candidate pair is a TURN relay candidate (the data still travels end-to-end DTLS:
    /// the TURN server sees ciphertext only), else [`PathKind::Direct`].
    pub(crate) async fn path(&self) -> PathKind {
        use webrtc::peer_connection::RTCIceCandidateType;
        let Some(sctp) = self.pc.sctp().await else { return PathKind::Direct };
        match sctp.transport().ice_transport().get_selected_candidate_pair().await {
            Ok(Some(pair)) if [pair.local().typ, pair.remote().typ].contains(&RTCIceCandidateType::Relay) => {
                PathKind::Relayed
            }
            _ => PathKind::Direct,
        }
    }
}

fn rtc_error(what: &str) -> impl Fn(webrtc::error::Error) -> TransportError + '_ {
    move |e| TransportError::connect_failed("webrtc", format!("{what}: {e}"))
}

impl PeerSetup {
    /// Builds a peer connection per `config` (sockets with `udp_buffer`-byte buffers).
    pub(crate) async fn build(config: &WebRtcConfig, runtime: Arc<BufferedRuntime>) -> Result<Self> {
        let (ctx, candidates) = mpsc::channel(CANDIDATE_QUEUE);
        let (chtx, channels) = mpsc::channel(REMOTE_CHANNEL_QUEUE);
        let (stx, state) = watch::channel(RTCPeerConnectionState::New);
        let handler = Arc::new(Handler { candidates: ctx, channels: chtx, state: stx });
        let pc = PeerConnectionBuilder::<SocketAddr>::new()
            .with_configuration(config.rtc_configuration())
            .with_setting_engine(config.setting_engine())
            .with_runtime(runtime)
            .with_handler(handler)
            .with_udp_addrs(config.bind.clone())
            .with_data_channel_send_buffer_limit(config.send_buffer)
            .build()
            .await
            .map_err(rtc_error("creating the peer connection"))?;
        let pc: Arc<dyn PeerConnection> = Arc::new(pc);
        let signaling = Signaling {
            pc: pc.clone(),
            candidates,
            state,
            mid: None,
            remote_set: false,
            early: Vec::new(),
            answerer: false,
        };
        Ok(Self { pc, signaling, channels })
    }

    /// The offerer's side: creates the two channels and the offer, sends it signed, and
    /// drives the exchange until both channels are open.
    pub(crate) async fn offer(mut self, sig: &SessionSignals<'_>) -> Result<Established> {
        let msg_dc = self
            .pc
            .create_data_channel(LABEL_MESSAGES, None)
            .await
            .map_err(rtc_error("creating the message channel"))?;
        let unreliable =
            RTCDataChannelInit { ordered: false, max_retransmits: Some(0), ..Default::default() };
        let dgram_dc = self
            .pc
            .create_data_channel(LABEL_DATAGRAMS, Some(unreliable))
            .await
            .map_err(rtc_error("creating the datagram channel"))?;
        let messages = start_pump(msg_dc, 1, PumpMode::UntilOpen);
        let datagrams = start_pump(dgram_dc, CHANNEL_QUEUE, PumpMode::Lossy);
        let offer = self.pc.create_offer(None).await.map_err(rtc_error("creating the offer"))?;
        self.pc.set_local_description(offer).await.map_err(rtc_error("applying the offer"))?;
        let sdp = self.local_sdp().await?;
        self.signaling.mid = first_mid(&sdp);
        sig.send(SignalMessage::signed(sig.keypair, &sig.peer, sig.session, SignalKind::Offer, sdp)).await?;
        self.exchange(sig, messages, datagrams).await
    }

    /// The answerer's side: applies the (verified) offer, sends the signed answer, and
    /// drives the exchange until the peer's two channels are open.
    pub(crate) async fn answer(mut self, sig: &SessionSignals<'_>, offer_sdp: String) -> Result<Established> {
        let offer = RTCSessionDescription::offer(offer_sdp).map_err(rtc_error("parsing the offer"))?;
        self.pc.set_remote_description(offer).await.map_err(rtc_error("applying the offer"))?;
        let answer = self.pc.create_answer(None).await.map_err(rtc_error("creating the answer"))?;
        self.pc.set_local_description(answer).await.map_err(rtc_error("applying the answer"))?;
        let sdp = self.local_sdp().await?;
        self.signaling.mid = first_mid(&sdp);
        self.signaling.remote_set = true;
        self.signaling.answerer = true;
        sig.send(SignalMessage::signed(sig.keypair, &sig.peer, sig.session, SignalKind::Answer, sdp)).await?;
        let (messages, datagrams) = self.remote_channels(sig).await?;
        self.exchange(sig, messages, datagrams).await
    }

    async fn local_sdp(&self) -> Result<String> {
        self.pc
            .local_description()
            .await
            .map(|d| d.sdp)
            .ok_or_else(|| TransportError::connect_failed("webrtc", "no local description"))
    }

    /// Waits (while still signaling) for the peer's `kizuna-msg` and `kizuna-dgram`.
    async fn remote_channels(&mut self, sig: &SessionSignals<'_>) -> Result<(Pumped, Pumped)> {
        let mut messages = None;
        let mut datagrams = None;
        while messages.is_none() || datagrams.is_none() {
            tokio::select! {
                dc = self.channels.recv() => {
                    let Some(dc) = dc else { return Err(closed("peer connection closed")) };
                    match dc.label().await.unwrap_or_default().as_str() {
                        LABEL_MESSAGES if messages.is_none() => messages = Some(start_pump(dc, 1, PumpMode::UntilOpen)),
                        LABEL_DATAGRAMS if datagrams.is_none() => datagrams = Some(start_pump(dc, CHANNEL_QUEUE, PumpMode::Lossy)),
                        other => {
                            tracing::debug!(label = other, "unexpected WebRTC data channel during set-up: closing it");
                            let _ = dc.close().await;
                        }
                    }
                }
                step = self.signaling.step(sig) => step?,
            }
        }
        #[allow(clippy::unwrap_used)] // The loop above ends only when both are set.
        Ok((messages.unwrap(), datagrams.unwrap()))
    }

    /// Signals until both channels are open.
    async fn exchange(
        mut self,
        sig: &SessionSignals<'_>,
        mut messages: Pumped,
        mut datagrams: Pumped,
    ) -> Result<Established> {
        let (mut ms, mut ds) = (messages.state.clone(), datagrams.state.clone());
        let both_open = async move { opened(&mut ms).await && opened(&mut ds).await };
        tokio::pin!(both_open);
        // webrtc 0.21 queues the SCTP INIT (on "DTLS handshake complete") and then the
        // DCEP opens (on "SCTP association established") in a driver pass that has already
        // flushed its writes, and computes its next wake-up without them: each then waits
        // for an unrelated timer (≈ 200 ms each, the SCTP delayed-ack timer). Any
        // application call that notifies the driver makes it flush at once. The offerer
        // is the SCTP client (the answerer takes the DTLS server role) and owns the
        // message channel, so from `Connected` until the channels open it re-sets that
        // channel's low-water mark (0, the default, used by nobody) every
        // `KICK_INTERVAL`: a few cheap calls instead of ≈ 400 ms of idling.
        let (answerer, mut state, dc) =
            (self.signaling.answerer, self.signaling.state.clone(), messages.dc.clone());
        let kick = async move {
            if answerer {
                return std::future::pending::<()>().await;
            }
            let _ = state.wait_for(|s| *s == RTCPeerConnectionState::Connected).await;
            loop {
                let _ = dc.set_buffered_amount_low_threshold(0).await;
                tokio::time::sleep(KICK_INTERVAL).await;
            }
        };
        tokio::pin!(kick);
        loop {
            tokio::select! {
                _ = &mut kick => {}
                ok = &mut both_open => {
                    if !ok {
                        return Err(closed("a data channel closed during set-up"));
                    }
                    break;
                }
                step = self.signaling.step(sig) => step?,
            }
        }
        messages.state.mark_unchanged();
        datagrams.state.mark_unchanged();
        Ok(Established {
            pc: self.pc,
            messages,
            datagrams,
            channels: self.channels,
            state: self.signaling.state,
        })
    }
}

impl Signaling {
    /// One step of signaling: a local candidate out, or a peer message in.
    async fn step(&mut self, sig: &SessionSignals<'_>) -> Result<()> {
        let mid = self.mid.clone();
        let failed = |s: &RTCPeerConnectionState| {
            matches!(s, RTCPeerConnectionState::Failed | RTCPeerConnectionState::Closed)
        };
        let mut state = self.state.clone();
        tokio::select! {
            c = self.candidates.recv() => match c {
                Some(Some(c)) => {
                    let mid = mid.or(c.sdp_mid.filter(|m| !m.is_empty()));
                    sig.send(SignalMessage::unsigned(sig.session, SignalKind::Candidate, c.candidate, mid)).await
                }
                Some(None) => {
                    sig.send(SignalMessage::unsigned(sig.session, SignalKind::Candidate, String::new(), mid)).await
                }
                None => std::future::pending().await,
            },
            m = sig.inbox_recv() => {
                let m = m.ok_or_else(|| closed("signaling session ended"))?;
                match m.kind {
                    SignalKind::Answer => {
                        m.verify(&sig.peer, &sig.keypair.peer_id()).map_err(|e| e.into_transport(sig.peer))?;
                        let answer = RTCSessionDescription::answer(m.sdp).map_err(rtc_error("parsing the answer"))?;
                        self.pc.set_remote_description(answer).await.map_err(rtc_error("applying the answer"))?;
                        self.remote_set = true;
                        for c in std::mem::take(&mut self.early) {
                            self.add_candidate(c).await;
                        }
                        Ok(())
                    }
                    SignalKind::Candidate if m.sdp.is_empty() => Ok(()),
                    SignalKind::Candidate => {
                        let init = RTCIceCandidateInit { candidate: m.sdp, sdp_mid: m.mid, sdp_mline_index: Some(0), ..Default::default() };
                        if self.remote_set {
                            self.add_candidate(init).await;
                        } else if self.early.len() < super::session::MAX_CANDIDATES_PER_SESSION {
                            self.early.push(init);
                        }
                        Ok(())
                    }
                    SignalKind::Close => Err(closed(&format!("peer abandoned the WebRTC session: {}", truncate(&m.sdp)))),
                    SignalKind::Offer => Err(SignalError::Unexpected { kind: "offer", session: sig.session }.into_transport(sig.peer)),
                }
            }
            s = async { state.wait_for(failed).await.map(|s| *s).ok() } => {
                let s = s.unwrap_or(RTCPeerConnectionState::Closed);
                Err(closed(&format!("peer connection {s}")))
            }
        }
    }

    async fn add_candidate(&self, c: RTCIceCandidateInit) {
        if let Err(e) = self.pc.add_ice_candidate(c).await {
            tracing::debug!("remote ICE candidate refused: {e}");
        }
    }
}

fn closed(why: &str) -> TransportError {
    TransportError::connect_failed("webrtc", why)
}

/// At most 200 bytes of a peer-supplied reason, for logs and errors.
fn truncate(s: &str) -> &str {
    let mut end = s.len().min(200);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// The first `a=mid:` of an SDP (the data channel section's), for candidates' `sdpMid`.
fn first_mid(sdp: &str) -> Option<String> {
    sdp.lines().find_map(|l| l.trim_end().strip_prefix("a=mid:")).map(str::to_string)
}

/// One signaling session's context: who, which session, how to send, and the inbox the
/// transport routes this session's incoming messages to.
pub(crate) struct SessionSignals<'a> {
    pub(crate) keypair: &'a Keypair,
    pub(crate) peer: PeerId,
    pub(crate) session: u64,
    pub(crate) signaler: Arc<dyn Signaler>,
    pub(crate) inbox: tokio::sync::Mutex<mpsc::Receiver<SignalMessage>>,
}

impl SessionSignals<'_> {
    async fn send(&self, m: SignalMessage) -> Result<()> {
        let payload = m.encode().map_err(|e| e.into_transport(self.peer))?;
        self.signaler.signal(self.peer, payload).await
    }

    async fn inbox_recv(&self) -> Option<SignalMessage> {
        self.inbox.lock().await.recv().await
    }
}
