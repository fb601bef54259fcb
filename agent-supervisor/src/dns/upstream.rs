//! The host's real resolvers, and sending one query to them (UDP, then TCP when the answer
//! is truncated).
//!
//! The supervisor's own sockets live in its own cgroup, so the session's network hooks never
//! see them: forwarding an allowed name is not subject to the agent's rules.
#![forbid(unsafe_code)]

use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, UdpSocket};
use std::time::Duration;

/// How long one upstream server gets to answer one attempt.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);
/// Largest DNS message over UDP we read (EDNS payloads are at most this in practice).
const UDP_MAX: usize = 4096;

/// The `nameserver` lines of a `resolv.conf` text, port 53.
pub fn nameservers(resolv_conf: &str) -> Vec<SocketAddr> {
    resolv_conf
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            (words.next() == Some("nameserver")).then(|| words.next())?
        })
        .filter_map(|addr| {
            // A scoped IPv6 address (fe80::1%eth0) has no SocketAddr form without its index.
            addr.parse::<IpAddr>().ok()
        })
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

/// The upstream servers: `override_` when given, else the host's `/etc/resolv.conf`.
pub fn servers(override_: &[SocketAddr]) -> io::Result<Vec<SocketAddr>> {
    if !override_.is_empty() {
        return Ok(override_.to_vec());
    }
    let text = std::fs::read_to_string("/etc/resolv.conf")?;
    Ok(nameservers(&text))
}

/// Send `query` (a whole DNS message whose id is `id`) to each server in turn until one
/// answers with the same id; over UDP, then TCP when the UDP answer is truncated.
pub fn exchange(servers: &[SocketAddr], query: &[u8], id: u16) -> io::Result<Vec<u8>> {
    let mut last = io::Error::new(
        io::ErrorKind::NotFound,
        "no upstream DNS server (none in /etc/resolv.conf and no --dns-upstream)",
    );
    for round in 0..2 {
        for server in servers {
            let answer = over_udp(*server, query, id).and_then(|a| {
                if truncated(&a) {
                    over_tcp(*server, query)
                } else {
                    Ok(a)
                }
            });
            match answer {
                Ok(a) if a.len() >= 12 && u16::from_be_bytes([a[0], a[1]]) == id => return Ok(a),
                Ok(_) => last = io::Error::other(format!("{server} answered another query")),
                Err(e) => {
                    tracing::debug!("upstream DNS {server} (round {round}): {e}");
                    last = io::Error::new(e.kind(), format!("upstream DNS {server}: {e}"));
                }
            }
        }
    }
    Err(last)
}

fn truncated(message: &[u8]) -> bool {
    message.len() >= 3 && message[2] & 0x02 != 0
}

fn over_udp(server: SocketAddr, query: &[u8], id: u16) -> io::Result<Vec<u8>> {
    let local: SocketAddr = match server {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = UdpSocket::bind(local)?;
    socket.connect(server)?;
    socket.set_read_timeout(Some(ATTEMPT_TIMEOUT))?;
    socket.send(query)?;
    let mut buf = vec![0u8; UDP_MAX];
    loop {
        let n = socket.recv(&mut buf)?;
        // A stray datagram with another id is not the answer: keep waiting (up to the timeout).
        if n >= 12 && u16::from_be_bytes([buf[0], buf[1]]) == id {
            buf.truncate(n);
            return Ok(buf);
        }
    }
}

fn over_tcp(server: SocketAddr, query: &[u8]) -> io::Result<Vec<u8>> {
    let mut stream = TcpStream::connect_timeout(&server, ATTEMPT_TIMEOUT)?;
    stream.set_read_timeout(Some(ATTEMPT_TIMEOUT))?;
    stream.set_write_timeout(Some(ATTEMPT_TIMEOUT))?;
    write_framed(&mut stream, query)?;
    read_framed(&mut stream)
}

/// One TCP-framed DNS message (two-byte length, then the message).
pub fn read_framed(stream: &mut impl Read) -> io::Result<Vec<u8>> {
    let mut len = [0u8; 2];
    stream.read_exact(&mut len)?;
    let mut message = vec![0u8; u16::from_be_bytes(len) as usize];
    stream.read_exact(&mut message)?;
    Ok(message)
}

/// Write one TCP-framed DNS message.
pub fn write_framed(stream: &mut impl Write, message: &[u8]) -> io::Result<()> {
    let len = u16::try_from(message.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "DNS message over 64 KiB"))?;
    let mut framed = Vec::with_capacity(message.len() + 2);
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(message);
    stream.write_all(&framed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_nameserver_lines() {
        let text = "# comment\nsearch corp.test\nnameserver 10.0.0.2\nnameserver ::1\nnameserver fe80::1%eth0\noptions edns0\n nameserver 9.9.9.9\n";
        let got: Vec<String> = nameservers(text).iter().map(|s| s.to_string()).collect();
        assert_eq!(got, ["10.0.0.2:53", "[::1]:53", "9.9.9.9:53"]);
    }
}
