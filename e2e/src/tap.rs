//! A TCP relay between the agent and a server that records what the agent
//! sent, per connection, to check what went over the wire (compression);
//! and a server that accepts and never answers (export timeouts).

use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    sync::{Arc, Mutex},
};

/// One connection's client-to-server bytes.
type Recording = Arc<Mutex<Vec<u8>>>;

/// Relays 127.0.0.1:`port` to 127.0.0.1:`to`, recording each connection's
/// client-to-server bytes.
pub struct Tap {
    pub port: u16,
    sent: Arc<Mutex<Vec<Recording>>>,
}

impl Tap {
    pub fn start(to: u16) -> Tap {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let sent: Arc<Mutex<Vec<Recording>>> = Default::default();
        let all = sent.clone();
        std::thread::spawn(move || {
            for client in l.incoming().map_while(Result::ok) {
                let Ok(server) = TcpStream::connect(("127.0.0.1", to)) else {
                    continue;
                };
                let rec = Arc::new(Mutex::new(Vec::new()));
                all.lock().unwrap().push(rec.clone());
                let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                std::thread::spawn(move || copy(client, server, Some(rec)));
                std::thread::spawn(move || copy(s2, c2, None));
            }
        });
        Tap { port, sent }
    }

    /// What each connection sent so far.
    pub fn sent(&self) -> Vec<Vec<u8>> {
        self.sent
            .lock()
            .unwrap()
            .iter()
            .map(|c| c.lock().unwrap().clone())
            .collect()
    }
}

fn copy(mut from: TcpStream, mut to: TcpStream, rec: Option<Recording>) {
    let mut buf = [0u8; 16 << 10];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if let Some(r) = &rec {
                    r.lock().unwrap().extend_from_slice(&buf[..n]);
                }
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown(std::net::Shutdown::Both);
}

/// True if an HTTP/1.1 request in `bytes` declares a gzip body.
pub fn http_gzip(bytes: &[u8]) -> bool {
    String::from_utf8_lossy(bytes)
        .to_ascii_lowercase()
        .contains("content-encoding: gzip")
}

/// The gRPC messages' compressed flags in an HTTP/2 client stream: the
/// first byte of each stream's first DATA frame.
pub fn grpc_compressed_flags(bytes: &[u8]) -> Vec<u8> {
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let Some(mut at) = bytes.strip_prefix(PREFACE).map(|_| PREFACE.len()) else {
        return Vec::new();
    };
    let mut seen = std::collections::HashSet::new();
    let mut flags = Vec::new();
    while at + 9 <= bytes.len() {
        let len = u32::from_be_bytes([0, bytes[at], bytes[at + 1], bytes[at + 2]]) as usize;
        let (kind, fl) = (bytes[at + 3], bytes[at + 4]);
        let stream = u32::from_be_bytes(bytes[at + 5..at + 9].try_into().unwrap()) & 0x7fff_ffff;
        let payload = &bytes[(at + 9).min(bytes.len())..(at + 9 + len).min(bytes.len())];
        if kind == 0 && !payload.is_empty() && seen.insert(stream) {
            // PADDED: the first byte is the pad length.
            let p = if fl & 0x8 != 0 {
                &payload[1..]
            } else {
                payload
            };
            if let Some(&f) = p.first() {
                flags.push(f);
            }
        }
        at += 9 + len;
    }
    flags
}

/// A server on 127.0.0.1 that accepts, reads and never answers.
pub fn black_hole() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut c in l.incoming().map_while(Result::ok) {
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while matches!(c.read(&mut buf), Ok(n) if n > 0) {}
            });
        }
    });
    port
}
