//! A packet-level delay line: what `netem delay` would do, on a kernel without `netem`.
//!
//! In host `from`'s namespace, a TUN device takes the route to host `to`; every IPv4 packet
//! `from` sends `to` is read from it, held `delay`, then put on `from`'s `eth0` towards `to`'s
//! MAC address through a packet socket (below IP, so it does not loop back into the TUN). The
//! other direction is untouched: the round-trip time between the two grows by `delay`. Unlike a
//! TCP relay, TCP still runs end to end, so its windows meet the real round trip.
//!
//! The line holds at most [`QUEUE_PACKETS`] packets (beyond that it drops, as a full router
//! queue would) and stops, removing its device, when dropped.

// Shared by the `netns` tests and the benchmark, each of which uses a part.
#![allow(dead_code)]

use super::net::Net;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Packets held at once, at most.
pub(crate) const QUEUE_PACKETS: usize = 65_536;
/// How often the threads look at the stop flag while idle.
const IDLE_POLL: Duration = Duration::from_millis(50);
/// Name of the TUN device in `from`'s namespace.
const DEVICE: &str = "delay0";

/// A running delay line; stops when dropped.
pub(crate) struct DelayLine {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    /// Packets delayed and sent on.
    pub(crate) forwarded: Arc<AtomicU64>,
    /// Packets dropped (queue full or a send failed).
    pub(crate) dropped: Arc<AtomicU64>,
}

/// `ifreq` as TUNSETIFF takes it: a name and the flags (the rest of the union is padding).
#[repr(C)]
struct IfReq {
    name: [libc::c_char; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

fn last_error(what: &str) -> String {
    format!("{what}: {}", std::io::Error::last_os_error())
}

/// Opens a TUN device called [`DEVICE`] in the calling thread's namespace, plus a packet socket
/// and the index of `eth0` there.
fn open_in_namespace() -> Result<(OwnedFd, OwnedFd, i32), String> {
    // SAFETY: plain syscalls on descriptors we own; `req` outlives the ioctl that fills it.
    unsafe {
        let tun = libc::open(c"/dev/net/tun".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC);
        if tun < 0 {
            return Err(last_error("open /dev/net/tun"));
        }
        let tun = OwnedFd::from_raw_fd(tun);
        let mut req = IfReq {
            name: [0; libc::IFNAMSIZ],
            flags: (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short,
            _pad: [0; 22],
        };
        for (dst, src) in req.name.iter_mut().zip(DEVICE.bytes()) {
            *dst = src as libc::c_char;
        }
        if libc::ioctl(tun.as_raw_fd(), libc::TUNSETIFF, &mut req) < 0 {
            return Err(last_error("TUNSETIFF"));
        }
        let protocol = (libc::ETH_P_IP as u16).to_be() as libc::c_int;
        let sock = libc::socket(
            libc::AF_PACKET,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            protocol,
        );
        if sock < 0 {
            return Err(last_error("packet socket"));
        }
        let sock = OwnedFd::from_raw_fd(sock);
        let index = libc::if_nametoindex(c"eth0".as_ptr());
        if index == 0 {
            return Err(last_error("index of eth0"));
        }
        Ok((tun, sock, index as i32))
    }
}

impl DelayLine {
    /// Delays every packet host `from` sends host `to` by `delay`.
    pub(crate) fn start(net: &Net, from: &str, to: &str, delay: Duration) -> Result<Self, String> {
        let ns = net.host(from).ns.clone();
        let src = net.host(from).addr;
        let dst = net.host(to).addr;
        let mac = net.host(to).mac;
        let (tun, sock, ifindex) = net
            .on(from, open_in_namespace)
            .map_err(|e| format!("joining {ns}: {e}"))??;
        // Replies from `to` come in on eth0 while the route to it is the TUN: no reverse-path
        // filter may drop them.
        net.on(from, || {
            for conf in ["all", "eth0", DEVICE] {
                let path = format!("/proc/sys/net/ipv4/conf/{conf}/rp_filter");
                std::fs::write(&path, "0").map_err(|e| format!("{path}: {e}"))?;
            }
            Ok::<_, String>(())
        })
        .map_err(|e| e.to_string())??;
        super::net::run(
            "ip",
            &["-n", &ns, "link", "set", DEVICE, "mtu", "1500", "up"],
        )?;
        let dst_route = format!("{dst}/32");
        let src = src.to_string();
        #[rustfmt::skip]
        super::net::run("ip", &["-n", &ns, "route", "replace", &dst_route,
            "dev", DEVICE, "src", &src])?;

        let stop = Arc::new(AtomicBool::new(false));
        let forwarded = Arc::new(AtomicU64::new(0));
        let dropped = Arc::new(AtomicU64::new(0));
        let (tx, rx) = mpsc::sync_channel::<(Instant, Vec<u8>)>(QUEUE_PACKETS);
        let reader = {
            let stop = stop.clone();
            let dropped = dropped.clone();
            std::thread::spawn(move || read_loop(tun, delay, tx, &stop, &dropped))
        };
        let writer = {
            let stop = stop.clone();
            let forwarded = forwarded.clone();
            let dropped = dropped.clone();
            std::thread::spawn(move || {
                write_loop(sock, ifindex, mac, rx, &stop, &forwarded, &dropped)
            })
        };
        Ok(DelayLine {
            stop,
            threads: vec![reader, writer],
            forwarded,
            dropped,
        })
    }
}

/// Reads packets from the TUN and queues each with the time it is due.
fn read_loop(
    tun: OwnedFd,
    delay: Duration,
    queue: mpsc::SyncSender<(Instant, Vec<u8>)>,
    stop: &AtomicBool,
    dropped: &AtomicU64,
) {
    let mut buf = vec![0u8; 65_536];
    while !stop.load(Ordering::Relaxed) {
        let mut pfd = libc::pollfd {
            fd: tun.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one pollfd we own, a bounded wait.
        let ready = unsafe { libc::poll(&mut pfd, 1, IDLE_POLL.as_millis() as libc::c_int) };
        if ready <= 0 {
            continue;
        }
        // SAFETY: reading into a buffer of the given length.
        let n = unsafe { libc::read(tun.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n <= 0 {
            continue;
        }
        let packet = &buf[..n as usize];
        // IPv4 only (the route is IPv4; anything else the kernel sends the device is noise).
        if packet[0] >> 4 != 4 {
            continue;
        }
        let due = Instant::now() + delay;
        match queue.try_send((due, packet.to_vec())) {
            Ok(()) => {}
            Err(mpsc::TrySendError::Full(_)) => {
                dropped.fetch_add(1, Ordering::Relaxed);
            }
            Err(mpsc::TrySendError::Disconnected(_)) => return,
        }
    }
}

/// Sends each queued packet on when it is due (the queue is in due order: one fixed delay).
fn write_loop(
    sock: OwnedFd,
    ifindex: i32,
    mac: [u8; 6],
    queue: mpsc::Receiver<(Instant, Vec<u8>)>,
    stop: &AtomicBool,
    forwarded: &AtomicU64,
    dropped: &AtomicU64,
) {
    // SAFETY: an all-zero sockaddr_ll is valid; the fields that matter are set below.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = (libc::ETH_P_IP as u16).to_be();
    addr.sll_ifindex = ifindex;
    addr.sll_halen = 6;
    addr.sll_addr[..6].copy_from_slice(&mac);
    while !stop.load(Ordering::Relaxed) {
        let (due, packet) = match queue.recv_timeout(IDLE_POLL) {
            Ok(item) => item,
            Err(mpsc::RecvTimeoutError::Timeout) => continue,
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        };
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        // SAFETY: sendto(2) with a buffer and an address of the lengths given.
        let sent = unsafe {
            libc::sendto(
                sock.as_raw_fd(),
                packet.as_ptr().cast(),
                packet.len(),
                0,
                (&addr as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if sent < 0 {
            dropped.fetch_add(1, Ordering::Relaxed);
        } else {
            forwarded.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl Drop for DelayLine {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
        // Closing the TUN's last descriptor (with the reader) removed the device and its route.
    }
}
