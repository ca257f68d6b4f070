//! The client listeners: one `SO_REUSEPORT` socket per worker, so that the kernel spreads new
//! connections over the cores.
//!
//! `SO_REUSEPORT` also lets any other process of the same user listen on the same port, and
//! the kernel then splits the traffic between the two without a word (a second mcplb started
//! by mistake took 8 of 20 requests). So, as for any server, an address another process
//! listens on is a start error ("address already in use"), unless `proxy.reuse_port` asks
//! for sharing it: a deliberate hand-over from a running mcplb to a new one.
//!
//! Two checks make it so. Before binding, a probe socket without `SO_REUSEPORT` binds the
//! address: the kernel refuses it when anything listens there, with or without the option,
//! and allows it over connections in TIME_WAIT (`SO_REUSEADDR`): the rule a server without
//! `SO_REUSEPORT` gets. The probe stays bound, not listening, until the workers' listeners
//! listen (with port 0 it also holds the port they share). Two processes that probe at the
//! same instant could both pass; so once listening, the sockets listening on the address are
//! read from `/proc/net/tcp{,6}`, and one that is not ours fails the start. Of two processes
//! racing, the later one always sees the earlier one: at most one of them runs.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;

use anyhow::Context as _;
use socket2::{Domain, Protocol, Socket, Type};

/// Binds one listener per worker on `addr` (with port 0, one free port for all of them).
/// Unless `share`, refuses an address another process listens on.
pub(crate) fn bind_workers(
    addr: SocketAddr,
    workers: usize,
    share: bool,
) -> anyhow::Result<Vec<TcpListener>> {
    let probe = if share {
        None
    } else {
        Some(probe(addr).map_err(|e| {
            if e.kind() == std::io::ErrorKind::AddrInUse {
                in_use(addr, "another process listens on it")
            } else {
                anyhow::anyhow!("proxy.listen: cannot bind {addr}: {e}")
            }
        })?)
    };
    let at = match &probe {
        Some(p) => p
            .local_addr()
            .and_then(|a| a.as_socket().ok_or(std::io::ErrorKind::InvalidInput.into()))
            .with_context(|| format!("proxy.listen: cannot bind {addr}"))?,
        None => addr,
    };
    let mut listeners: Vec<TcpListener> = Vec::with_capacity(workers);
    for _ in 0..workers.max(1) {
        let bound = listeners.first().map_or(Ok(at), TcpListener::local_addr)?;
        listeners.push(
            reuseport_listener(bound)
                .with_context(|| format!("proxy.listen: cannot bind {bound}"))?,
        );
    }
    drop(probe);
    let local = listeners
        .first()
        .context("proxy.listen: no listener")?
        .local_addr()?;
    match (foreign_listeners(local, &listeners), share) {
        (Some(n), false) if n > 0 => Err(in_use(
            local,
            "another process started listening on it at the same moment",
        )),
        (Some(n), true) if n > 0 => {
            tracing::info!(
                %local,
                others = n,
                "proxy.reuse_port: sharing the address with another process's listeners; \
                 the kernel splits new connections between them until one of them stops"
            );
            Ok(listeners)
        }
        _ => Ok(listeners),
    }
}

fn in_use(addr: SocketAddr, why: &str) -> anyhow::Error {
    anyhow::anyhow!(
        "proxy.listen: address already in use: {addr} ({why}). Stop that process or choose \
         another address; to hand over from a running mcplb on purpose, set \
         proxy.reuse_port = true"
    )
}

/// A bound, not listening socket without `SO_REUSEPORT`: the kernel's verdict on whether
/// anything listens on `addr`.
fn probe(addr: SocketAddr) -> std::io::Result<Socket> {
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    sock.set_reuse_address(true)?;
    sock.bind(&addr.into())?;
    Ok(sock)
}

fn reuseport_listener(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    sock.set_reuse_address(true)?;
    sock.set_reuse_port(true)?;
    sock.set_nonblocking(true)?;
    sock.bind(&addr.into())?;
    sock.listen(4096)?;
    Ok(sock.into())
}

/// How many sockets listen on exactly `addr` besides `ours`; `None` when `/proc` cannot tell.
fn foreign_listeners(addr: SocketAddr, ours: &[TcpListener]) -> Option<usize> {
    let ours = ours
        .iter()
        .map(|l| std::fs::metadata(format!("/proc/self/fd/{}", l.as_raw_fd())).map(|m| m.ino()))
        .collect::<Result<Vec<u64>, _>>()
        .ok()?;
    let table = if addr.is_ipv4() {
        "/proc/net/tcp"
    } else {
        "/proc/net/tcp6"
    };
    let text = std::fs::read_to_string(table).ok()?;
    Some(
        text.lines()
            .filter_map(listener_entry)
            .filter(|(a, inode)| {
                a.ip() == addr.ip() && a.port() == addr.port() && !ours.contains(inode)
            })
            .count(),
    )
}

/// The local address and inode of a `/proc/net/tcp{,6}` line in state LISTEN (`0A`). The
/// kernel prints each 32-bit word of the address as a host-order number in hex.
fn listener_entry(line: &str) -> Option<(SocketAddr, u64)> {
    let mut f = line.split_whitespace();
    let local = f.nth(1)?;
    if f.nth(1)? != "0A" {
        return None;
    }
    let inode = f.nth(5)?.parse().ok()?;
    let (ip, port) = local.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |i: usize| -> Option<[u8; 4]> {
        let hex = ip.get(i * 8..i * 8 + 8)?;
        Some(u32::from_str_radix(hex, 16).ok()?.to_ne_bytes())
    };
    let ip = match ip.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(0)?)),
        32 => {
            let mut b = [0u8; 16];
            for (i, chunk) in b.chunks_exact_mut(4).enumerate() {
                chunk.copy_from_slice(&word(i)?);
            }
            IpAddr::V6(Ipv6Addr::from(b))
        }
        _ => return None,
    };
    Some((SocketAddr::new(ip, port), inode))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn reads_proc_net_tcp_lines() {
        let v4 = "   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 4242 1 0000000000000000 100 0 0 10 0";
        assert_eq!(
            listener_entry(v4),
            Some(("127.0.0.1:8080".parse().unwrap(), 4242))
        );
        let v6 = "   1: 00000000000000000000000001000000:1F90 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 77 1 0000000000000000 100 0 0 10 0";
        assert_eq!(
            listener_entry(v6),
            Some(("[::1]:8080".parse().unwrap(), 77))
        );
        let established = "   2: 0100007F:1F90 0100007F:D431 01 00000000:00000000 00:00000000 00000000  1000        0 99 1";
        assert_eq!(listener_entry(established), None);
        assert_eq!(listener_entry("  sl  local_address rem_address   st"), None);
        assert_eq!(listener_entry(""), None);
    }

    #[test]
    fn binds_one_port_for_all_workers() {
        let ls = bind_workers("127.0.0.1:0".parse().unwrap(), 3, false).unwrap();
        let a = ls[0].local_addr().unwrap();
        assert_ne!(a.port(), 0);
        assert!(ls.iter().all(|l| l.local_addr().unwrap() == a));
        assert_eq!(foreign_listeners(a, &ls), Some(0));
    }

    #[test]
    fn refuses_a_port_another_socket_listens_on() {
        // Another process's listener, with SO_REUSEPORT as a second mcplb would have it.
        let other = reuseport_listener("127.0.0.1:0".parse().unwrap()).unwrap();
        let a = other.local_addr().unwrap();
        let e = bind_workers(a, 2, false).unwrap_err().to_string();
        assert!(e.contains("proxy.listen: address already in use"), "{e}");
        assert!(e.contains(&a.to_string()), "{e}");
        // Sharing on purpose joins it, and the late check counts it.
        let ls = bind_workers(a, 2, true).unwrap();
        assert_eq!(foreign_listeners(a, &ls), Some(1));
        // The late check alone (two processes that probed at the same instant).
        assert_eq!(foreign_listeners(a, &ls[..1]), Some(2));
    }
}
