//! Connection-id routing: every datagram of a QUIC connection reaches the worker that owns it,
//! even after the client's address or port changed (NAT rebinding, a phone moving from Wi-Fi
//! to mobile data), where the kernel's default `SO_REUSEPORT` choice (a hash of the 4-tuple)
//! would pick another worker at random.
//!
//! Each worker's connection ids begin with its index (two bytes, big-endian, then six random
//! ones: [`CoreCid`]), and a classic BPF program attached to the socket group
//! (`SO_ATTACH_REUSEPORT_CBPF`, Linux 4.5+) reads those two bytes of the destination
//! connection id and returns them modulo the number of workers as the socket to deliver to.
//! A client's first Initial carries an id the client chose: it lands on a worker by those
//! bytes (any worker may take a new connection), and every later packet carries ids that
//! worker issued. Where the program cannot be attached, the kernel's hash stays (logged).

use std::os::fd::AsRawFd;

use quinn_proto::{ConnectionId, ConnectionIdGenerator};

/// Length of the connection ids mcplb issues.
pub(crate) const CID_LEN: usize = 8;

/// Connection ids that name their worker.
pub(crate) struct CoreCid {
    /// The worker's index.
    pub(crate) index: u16,
}

impl ConnectionIdGenerator for CoreCid {
    fn generate_cid(&mut self) -> ConnectionId {
        let mut b = [0u8; CID_LEN];
        let (head, tail) = b.split_at_mut(2);
        head.copy_from_slice(&self.index.to_be_bytes());
        tail.copy_from_slice(&rand::random::<[u8; CID_LEN - 2]>());
        ConnectionId::new(&b)
    }

    fn cid_len(&self) -> usize {
        CID_LEN
    }

    fn cid_lifetime(&self) -> Option<std::time::Duration> {
        None
    }
}

/// The worker (`0..workers`) a datagram goes to: what the BPF program computes, for tests.
pub fn worker_of(datagram: &[u8], workers: u16) -> Option<u16> {
    let first = *datagram.first()?;
    // Long header (bit 7): flags, version (4), DCID length (1), then the DCID.
    let at = if first & 0x80 != 0 { 6 } else { 1 };
    let hi = *datagram.get(at)?;
    let lo = *datagram.get(at + 1)?;
    Some(u16::from_be_bytes([hi, lo]) % workers.max(1))
}

/// The classic BPF program of [`worker_of`] (a load past the datagram's end returns 0: the
/// first socket).
fn program(workers: u16) -> [libc::sock_filter; 7] {
    const LD_H_ABS: u16 = 0x28; // BPF_LD | BPF_H | BPF_ABS
    const LD_B_ABS: u16 = 0x30; // BPF_LD | BPF_B | BPF_ABS
    const JSET_K: u16 = 0x45; // BPF_JMP | BPF_JSET | BPF_K
    const JA: u16 = 0x05; // BPF_JMP | BPF_JA
    const MOD_K: u16 = 0x94; // BPF_ALU | BPF_MOD | BPF_K
    const RET_A: u16 = 0x16; // BPF_RET | BPF_A
    let op = |code, jt, jf, k| libc::sock_filter { code, jt, jf, k };
    [
        op(LD_B_ABS, 0, 0, 0),  // A = first byte (the UDP payload's)
        op(JSET_K, 2, 0, 0x80), // long header? to 4
        op(LD_H_ABS, 0, 0, 1),  // short: the DCID's first two bytes
        op(JA, 0, 0, 1),        // to 5
        op(LD_H_ABS, 0, 0, 6),  // long: the DCID's first two bytes
        op(MOD_K, 0, 0, u32::from(workers.max(1))),
        op(RET_A, 0, 0, 0),
    ]
}

/// Attaches the program to the reuseport group `socket` belongs to.
#[allow(unsafe_code)]
pub(crate) fn attach(socket: &std::net::UdpSocket, workers: u16) -> std::io::Result<()> {
    let mut prog = program(workers);
    let fprog = libc::sock_fprog {
        len: prog.len() as u16,
        filter: prog.as_mut_ptr(),
    };
    // SAFETY: `fprog` points at `prog`, alive for the call; the kernel copies the program.
    let r = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_REUSEPORT_CBPF,
            std::ptr::from_ref(&fprog).cast(),
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn ids_name_their_worker_in_short_and_long_headers() {
        for index in [0u16, 1, 3, 300] {
            let cid = CoreCid { index }.generate_cid();
            assert_eq!(cid.len(), CID_LEN);
            let mut short = vec![0x40];
            short.extend_from_slice(&cid);
            short.extend_from_slice(&[0; 20]);
            assert_eq!(worker_of(&short, 512), Some(index));
            let mut long = vec![0xc0, 0, 0, 0, 1, CID_LEN as u8];
            long.extend_from_slice(&cid);
            assert_eq!(worker_of(&long, 512), Some(index));
            assert_eq!(worker_of(&long, 4), Some(index % 4));
        }
        assert_eq!(worker_of(&[], 2), None);
        assert_eq!(worker_of(&[0xc0, 1], 2), None);
    }
}
