//! A userspace loss/delay shim (this kernel has no `tc netem`): two threads inside a
//! "shim" namespace forward Ethernet frames between two interfaces with AF_PACKET raw
//! sockets, dropping a share of them and holding the rest for a fixed delay. The shim
//! namespace sits between a site's router and the public bridge, so it is a wire with
//! bad weather: ARP, TCP and UDP all cross it.

use std::{
    collections::VecDeque,
    fs::File,
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

/// What the shim does to every frame, in each direction independently.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Impairment {
    /// Percentage of frames dropped (0–100).
    pub(crate) loss_pct: f64,
    /// Delay added to every frame that is not dropped.
    pub(crate) delay: Duration,
}

/// Frames held at once per direction; beyond that new frames are dropped (a full queue
/// is what a real congested link does too). 4096 × 1514 B ≈ 6 MiB per direction: far
/// more than 50 ms of the lab's traffic.
const QUEUE_LIMIT: usize = 4096;
/// Longest a forwarding thread sleeps before checking the stop flag.
const POLL_MS: i32 = 20;
/// Largest frame read: one MTU plus the Ethernet header (offloads are off in the lab).
const FRAME_MAX: usize = 2048;

/// Counters of one shim (both directions together).
#[derive(Default, Debug)]
pub(crate) struct Counters {
    /// Frames read.
    pub(crate) seen: AtomicU64,
    /// Frames dropped on purpose.
    pub(crate) dropped: AtomicU64,
    /// Frames dropped because the queue was full or the send failed.
    pub(crate) overflow: AtomicU64,
}

/// A running shim; dropping it stops and joins its threads.
pub(crate) struct Shim {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    /// What it has done so far.
    pub(crate) counters: Arc<Counters>,
}

impl Shim {
    /// Starts forwarding between `a` and `b` inside namespace `ns`.
    pub(crate) fn start(ns: &str, a: &str, b: &str, imp: Impairment) -> io::Result<Shim> {
        let stop = Arc::new(AtomicBool::new(false));
        let counters = Arc::new(Counters::default());
        let mut threads = Vec::new();
        let (tx, rx) = std::sync::mpsc::channel();
        for (dir, (from, to)) in [(a, b), (b, a)].into_iter().enumerate() {
            let (ns, from, to) = (ns.to_string(), from.to_string(), to.to_string());
            let (stop, counters, tx) = (stop.clone(), counters.clone(), tx.clone());
            threads.push(std::thread::spawn(move || {
                let setup = Wire::open(&ns, &from, &to);
                match setup {
                    Ok(wire) => {
                        let _ = tx.send(Ok(()));
                        wire.forward(imp, &stop, &counters, 0x9e37_79b9_7f4a_7c15 ^ dir as u64);
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e));
                    }
                }
            }));
        }
        let shim = Shim { stop, threads, counters };
        for _ in 0..2 {
            rx.recv().map_err(|_| io::Error::other("shim thread died"))??;
        }
        Ok(shim)
    }
}

impl Drop for Shim {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// One direction: frames read on `rx` leave on `tx`.
struct Wire {
    rx: OwnedFd,
    tx: OwnedFd,
}

fn check(ret: libc::c_int, what: &str) -> io::Result<libc::c_int> {
    if ret < 0 {
        let e = io::Error::last_os_error();
        Err(io::Error::new(e.kind(), format!("{what}: {e}")))
    } else {
        Ok(ret)
    }
}

/// A raw packet socket bound to interface `dev` (in the calling thread's namespace),
/// receiving every frame that arrives on it and none that leave it.
fn packet_socket(dev: &str) -> io::Result<OwnedFd> {
    let proto = (libc::ETH_P_ALL as u16).to_be();
    // SAFETY: plain socket(2) call; the result is checked before use.
    let fd = check(unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, proto as i32) }, "socket")?;
    // SAFETY: fd is a fresh descriptor we own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let name = std::ffi::CString::new(dev).map_err(|_| io::Error::other("bad interface name"))?;
    // SAFETY: name is a valid NUL-terminated string.
    let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if ifindex == 0 {
        return Err(io::Error::other(format!("no interface {dev}")));
    }
    // SAFETY: sockaddr_ll is plain data; zeroed is a valid value.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = proto;
    sll.sll_ifindex = ifindex as i32;
    // SAFETY: sll is a valid sockaddr_ll and the length matches it.
    check(
        unsafe {
            libc::bind(
                fd.as_raw_fd(),
                std::ptr::addr_of!(sll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        },
        "bind",
    )?;
    let one: libc::c_int = 1;
    // PACKET_IGNORE_OUTGOING (Linux 4.20): do not read back the frames the other
    // direction sends out of this interface. `forward` also checks the packet type.
    // SAFETY: the option value is a c_int as the kernel expects.
    let _ = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_PACKET,
            23,
            std::ptr::addr_of!(one).cast(),
            std::mem::size_of::<libc::c_int>() as u32,
        )
    };
    Ok(fd)
}

impl Wire {
    /// Enters namespace `ns` (this thread only) and opens the two sockets.
    fn open(ns: &str, from: &str, to: &str) -> io::Result<Wire> {
        let f = File::open(format!("/run/netns/{ns}"))?;
        // SAFETY: f is an open namespace file; setns changes only this thread.
        check(unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) }, "setns")?;
        Ok(Wire { rx: packet_socket(from)?, tx: packet_socket(to)? })
    }

    fn forward(&self, imp: Impairment, stop: &AtomicBool, c: &Counters, seed: u64) {
        let mut rng = seed | 1;
        let mut queue: VecDeque<(Instant, Vec<u8>)> = VecDeque::new();
        let mut buf = vec![0u8; FRAME_MAX];
        while !stop.load(Ordering::Relaxed) {
            let now = Instant::now();
            while queue.front().is_some_and(|(due, _)| *due <= now) {
                if let Some((_, frame)) = queue.pop_front() {
                    // SAFETY: frame is a valid buffer of frame.len() bytes.
                    let n = unsafe { libc::send(self.tx.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
                    if n < 0 {
                        c.overflow.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            let wait = queue
                .front()
                .map(|(due, _)| due.saturating_duration_since(now).as_millis() as i32)
                .unwrap_or(POLL_MS)
                .clamp(0, POLL_MS);
            let mut pfd = libc::pollfd { fd: self.rx.as_raw_fd(), events: libc::POLLIN, revents: 0 };
            // SAFETY: one valid pollfd.
            if unsafe { libc::poll(&mut pfd, 1, wait) } <= 0 {
                continue;
            }
            // SAFETY: sockaddr_ll is plain data.
            let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            let mut len = std::mem::size_of::<libc::sockaddr_ll>() as u32;
            // SAFETY: buf and from are valid for the lengths given.
            let n = unsafe {
                libc::recvfrom(
                    self.rx.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                    std::ptr::addr_of_mut!(from).cast(),
                    &mut len,
                )
            };
            if n <= 0 || from.sll_pkttype == libc::PACKET_OUTGOING {
                continue;
            }
            c.seen.fetch_add(1, Ordering::Relaxed);
            // xorshift64: uniform enough for a loss percentage.
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            if (rng % 1_000_000) as f64 / 10_000.0 < imp.loss_pct {
                c.dropped.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            if queue.len() >= QUEUE_LIMIT {
                c.overflow.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            queue.push_back((Instant::now() + imp.delay, buf[..n as usize].to_vec()));
        }
    }
}
