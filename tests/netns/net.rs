//! A private network of hosts made of Linux network namespaces: one namespace per host, each with
//! one interface (`eth0`, address `10.77.0.N/24`) whose other end is a port of a bridge living in a
//! namespace of its own (the switch). Nothing is added to the namespace the caller runs in, so the
//! subnet exists only inside; many networks (parallel tests) coexist, each on its own bridge.
//!
//! Shared by the `netns` integration tests and the benchmark's `network` scenario (which includes
//! this file by path), so it uses only `std`, `libc` and the crate itself.
//!
//! Clean-up: [`Net`]'s `Drop` kills every process started in the network and deletes its
//! namespaces, also when a test panics. A run killed outright (SIGKILL, Ctrl-C) leaves them
//! behind: every namespace name carries [`PREFIX`] and the pid of the process that made it, and
//! [`Net::new`] first deletes those whose process is gone (killing what still runs in them).
//! Children also get `PR_SET_PDEATHSIG`, so they die with the thread that started them.

// Shared by the `netns` tests and the benchmark, each of which uses a part.
#![allow(dead_code)]

use std::fs::File;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Start of every namespace name this harness makes.
pub(crate) const PREFIX: &str = "p2pn-";
/// The hosts' subnet (a /24; host `i` of the list is `.i+1`).
pub(crate) const SUBNET: [u8; 3] = [10, 77, 0];
/// Most hosts in one network (addresses .1 to .200).
pub(crate) const MAX_HOSTS: usize = 200;
/// Bound on one `ip`/`tc` command.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);

/// Networks made by this process so far (part of the names, so each is distinct).
static SEQUENCE: AtomicU32 = AtomicU32::new(0);

/// What a host's link cap applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Direction {
    /// What the host sends (a qdisc on its own `eth0`).
    Up,
    /// What the host receives (a qdisc on its switch port).
    Down,
}

/// One host: a namespace with one link to the switch.
#[derive(Clone, Debug)]
pub(crate) struct Host {
    /// Its name in the network (`tracker`, `h1`, ...).
    pub(crate) name: String,
    /// Its namespace.
    pub(crate) ns: String,
    /// Its address.
    pub(crate) addr: Ipv4Addr,
    /// Its switch port (an interface name in the switch's namespace).
    pub(crate) port: String,
    /// The MAC address of its `eth0` (fixed, so a delay line can address it).
    pub(crate) mac: [u8; 6],
}

/// A network of hosts on one switch, torn down on drop.
pub(crate) struct Net {
    /// The switch's namespace (holds the bridge `br0` and one port per host).
    pub(crate) switch: String,
    hosts: Vec<Host>,
    children: Vec<(String, Child)>,
}

/// Whether this machine can make such networks: root with `CAP_NET_ADMIN` and `CAP_SYS_ADMIN`
/// (`ip netns add` mounts), the `ip` and `tc` programs, `/dev/net/tun`. `Err` says what is missing.
/// Found out once per process (tests ask at the same time).
pub(crate) fn available() -> Result<(), String> {
    static FOUND: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    FOUND.get_or_init(find_out).clone()
}

fn find_out() -> Result<(), String> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let effective = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .unwrap_or(0);
    const NET_ADMIN: u64 = 1 << 12;
    const SYS_ADMIN: u64 = 1 << 21;
    if effective & (NET_ADMIN | SYS_ADMIN) != NET_ADMIN | SYS_ADMIN {
        return Err("root with CAP_NET_ADMIN and CAP_SYS_ADMIN (network namespaces)".into());
    }
    for program in ["ip", "tc"] {
        match Command::new(program).arg("-V").output() {
            Ok(out) if out.status.success() => {}
            _ => return Err(format!("the `{program}` program (iproute2) on PATH")),
        }
    }
    if !Path::new("/dev/net/tun").exists() {
        return Err("/dev/net/tun (the delay line)".into());
    }
    // The real test: can a namespace be made here (not in every container)?
    let probe = format!(
        "{PREFIX}{}-{}-probe",
        std::process::id(),
        SEQUENCE.fetch_add(1, Ordering::Relaxed)
    );
    let made = run("ip", &["netns", "add", &probe]);
    let _ = run("ip", &["netns", "del", &probe]);
    made.map(|_| ())
        .map_err(|e| format!("network namespaces (`ip netns add` failed: {e})"))
}

/// Runs `program args`, bounded, and returns its standard output; a failure carries its stderr.
pub(crate) fn run(program: &str, args: &[&str]) -> Result<String, String> {
    let child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{program}: {e}"))?;
    let out = wait_output(child, COMMAND_TIMEOUT).map_err(|e| format!("{program}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "`{program} {}`: {} ({})",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim(),
            out.status
        ))
    }
}

/// Waits for `child` to exit within `timeout` (killed past it) and collects its output.
fn wait_output(mut child: Child, timeout: Duration) -> std::io::Result<Output> {
    use std::io::Read as _;
    // Read both pipes on threads, so a chatty child never blocks on a full pipe.
    let mut stdout = child.stdout.take();
    let mut stderr = child.stderr.take();
    let out = std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(s) = stdout.as_mut() {
            let _ = s.read_to_end(&mut buf);
        }
        buf
    });
    let err = std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(s) = stderr.as_mut() {
            let _ = s.read_to_end(&mut buf);
        }
        buf
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("still running after {timeout:?}"),
            ));
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    Ok(Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    })
}

/// The pid in a namespace name `p2pn-<pid>-...`, if it is one of ours.
fn owner_pid(ns: &str) -> Option<u32> {
    ns.strip_prefix(PREFIX)?.split('-').next()?.parse().ok()
}

/// Names of the network namespaces (`ip netns list`).
fn namespaces() -> Vec<String> {
    run("ip", &["netns", "list"])
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

/// Kills every process in namespace `ns`, then deletes it.
fn delete_namespace(ns: &str) {
    if let Ok(pids) = run("ip", &["netns", "pids", ns]) {
        for pid in pids
            .split_whitespace()
            .filter_map(|p| p.parse::<i32>().ok())
        {
            // SAFETY: kill(2) with a pid read from the kernel; no memory is involved.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
    }
    let _ = run("ip", &["netns", "del", ns]);
}

/// Deletes the namespaces left by runs of this harness whose process is gone.
pub(crate) fn clean_stale() {
    for ns in namespaces() {
        if let Some(pid) = owner_pid(&ns) {
            if !Path::new(&format!("/proc/{pid}")).exists() {
                delete_namespace(&ns);
            }
        }
    }
}

/// A thread that joins network namespace `ns` (only the thread: `setns(CLONE_NEWNET)` is per
/// thread) and runs `f` there: sockets it makes belong to that namespace for good, wherever
/// they are used later.
pub(crate) fn in_namespace<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> std::io::Result<T> {
    let file = File::open(format!("/run/netns/{ns}"))?;
    std::thread::scope(|scope| {
        scope
            .spawn(move || {
                // SAFETY: setns(2) on a file descriptor we own, for this thread only.
                if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(f())
            })
            .join()
            .map_err(|_| std::io::Error::other("a thread in a network namespace panicked"))?
    })
}

impl Net {
    /// A switch and one host per name, in that order (`10.77.0.1`, `.2`, ...), links up.
    pub(crate) fn new(names: &[&str]) -> Result<Net, String> {
        assert!(names.len() <= MAX_HOSTS, "at most {MAX_HOSTS} hosts");
        clean_stale();
        let tag = format!(
            "{PREFIX}{}-{}",
            std::process::id(),
            SEQUENCE.fetch_add(1, Ordering::Relaxed)
        );
        let mut net = Net {
            switch: format!("{tag}-sw"),
            hosts: Vec::new(),
            children: Vec::new(),
        };
        // From here on, `net` deletes what was made if a step fails.
        run("ip", &["netns", "add", &net.switch])?;
        let sw = net.switch.clone();
        run("ip", &["-n", &sw, "link", "set", "lo", "up"])?;
        run("ip", &["-n", &sw, "link", "add", "br0", "type", "bridge"])?;
        // No spanning tree, no learning delay: ports forward as soon as they are up.
        run(
            "ip",
            &[
                "-n",
                &sw,
                "link",
                "set",
                "br0",
                "type",
                "bridge",
                "forward_delay",
                "0",
            ],
        )?;
        run("ip", &["-n", &sw, "link", "set", "br0", "up"])?;
        for (i, name) in names.iter().enumerate() {
            let index = i as u8 + 1;
            let host = Host {
                name: name.to_string(),
                ns: format!("{tag}-{name}"),
                addr: Ipv4Addr::new(SUBNET[0], SUBNET[1], SUBNET[2], index),
                port: format!("p{index}"),
                mac: [0x02, 0x77, 0, 0, 0, index],
            };
            run("ip", &["netns", "add", &host.ns])?;
            net.hosts.push(host.clone());
            let mac = host
                .mac
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(":");
            let ns = host.ns.as_str();
            #[rustfmt::skip]
            run("ip", &["-n", &sw, "link", "add", &host.port, "type", "veth",
                "peer", "name", "eth0", "netns", ns, "address", &mac])?;
            run(
                "ip",
                &["-n", &sw, "link", "set", &host.port, "master", "br0", "up"],
            )?;
            run("ip", &["-n", ns, "link", "set", "lo", "up"])?;
            let cidr = format!("{}/24", host.addr);
            run("ip", &["-n", ns, "addr", "add", &cidr, "dev", "eth0"])?;
            run("ip", &["-n", ns, "link", "set", "eth0", "up"])?;
        }
        Ok(net)
    }

    /// The host called `name`.
    pub(crate) fn host(&self, name: &str) -> &Host {
        self.hosts
            .iter()
            .find(|h| h.name == name)
            .unwrap_or_else(|| panic!("no host {name} in this network"))
    }

    /// Every host, in order.
    pub(crate) fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    /// Caps `host`'s link at `bits_per_s` in `direction` with a token bucket (`tc tbf`),
    /// replacing any cap it had there.
    pub(crate) fn cap(
        &self,
        host: &str,
        direction: Direction,
        bits_per_s: u64,
    ) -> Result<(), String> {
        let h = self.host(host);
        let (ns, dev) = match direction {
            Direction::Up => (h.ns.as_str(), "eth0"),
            Direction::Down => (self.switch.as_str(), h.port.as_str()),
        };
        // A bucket of at least 64 KiB (a whole TSO segment) and 4 ms at the rate; a queue of
        // 20 ms at the rate beyond it, so TCP sees a link, not a black hole.
        let burst = (bits_per_s / 8 / 250).max(64 * 1024);
        let rate = format!("{bits_per_s}bit");
        let burst = burst.to_string();
        #[rustfmt::skip]
        run("tc", &["-n", ns, "qdisc", "replace", "dev", dev, "root", "tbf",
            "rate", &rate, "burst", &burst, "latency", "20ms"])?;
        Ok(())
    }

    /// Plugs (`true`) or pulls (`false`) `host`'s cable: its switch port up or down. The host
    /// and what runs on it are untouched; it sees its link lose carrier.
    pub(crate) fn set_link(&self, host: &str, up: bool) -> Result<(), String> {
        let port = self.host(host).port.clone();
        let state = if up { "up" } else { "down" };
        run("ip", &["-n", &self.switch, "link", "set", &port, state]).map(|_| ())
    }

    /// Removes `host`'s cap in `direction`, if any.
    pub(crate) fn uncap(&self, host: &str, direction: Direction) {
        let h = self.host(host);
        let (ns, dev) = match direction {
            Direction::Up => (h.ns.as_str(), "eth0"),
            Direction::Down => (self.switch.as_str(), h.port.as_str()),
        };
        // Fails when there is no cap, which is fine.
        let _ = run("tc", &["-n", ns, "qdisc", "del", "dev", dev, "root"]);
    }

    /// Bytes `host` has received on its link so far (its switch port's transmit counter), read
    /// from `/proc/thread-self/net/dev` on a thread in the switch's namespace (no process
    /// started: cheap enough to poll every few milliseconds).
    pub(crate) fn received_bytes(&self, host: &str) -> u64 {
        let port = format!("{}:", self.host(host).port);
        in_namespace(&self.switch, || {
            let table = std::fs::read_to_string("/proc/thread-self/net/dev").ok()?;
            // `name: rx_bytes rx_packets ... (8 receive fields) tx_bytes ...`
            let line = table.lines().find(|l| l.trim_start().starts_with(&port))?;
            line.split_once(':')?
                .1
                .split_whitespace()
                .nth(8)?
                .parse()
                .ok()
        })
        .ok()
        .flatten()
        .unwrap_or(0)
    }

    /// `program` to be run on `host` (`ip netns exec`), dying with the thread that starts it.
    pub(crate) fn command(&self, host: &str, program: &Path) -> Command {
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", &self.host(host).ns])
            .arg(program)
            .stdin(Stdio::null());
        // SAFETY: prctl(2) only, between fork and exec (async-signal-safe).
        unsafe {
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        command
    }

    /// Starts `command` (from [`Net::command`]); the network kills it when it is dropped.
    /// `label` names it in [`Net::child`].
    pub(crate) fn spawn(
        &mut self,
        label: &str,
        mut command: Command,
    ) -> Result<&mut Child, String> {
        let child = command
            .spawn()
            .map_err(|e| format!("cannot start {label}: {e}"))?;
        self.children.push((label.to_string(), child));
        Ok(&mut self.children.last_mut().expect("just pushed").1)
    }

    /// The process started as `label`.
    pub(crate) fn child(&mut self, label: &str) -> &mut Child {
        &mut self
            .children
            .iter_mut()
            .find(|(l, _)| l == label)
            .unwrap_or_else(|| panic!("no process {label}"))
            .1
    }

    /// Runs `f` on a thread inside `host`'s namespace (see [`in_namespace`]).
    pub(crate) fn on<T: Send>(
        &self,
        host: &str,
        f: impl FnOnce() -> T + Send,
    ) -> std::io::Result<T> {
        in_namespace(&self.host(host).ns, f)
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for (_, child) in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        for host in &self.hosts {
            delete_namespace(&host.ns);
        }
        delete_namespace(&self.switch);
    }
}
