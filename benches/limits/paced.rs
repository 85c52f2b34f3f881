//! An open-loop HTTP/1.1 load generator for `accuracy.sh`: CONNS keep-alive connections, each
//! sending `GET PATH` at exponentially distributed intervals (mean CONNS / RATE), so arrivals
//! are independent of how long answers take (as long as one connection's answer comes before
//! its next turn) and have microsecond timing (wrk's `delay()` ticks in whole milliseconds,
//! which makes arrivals come in bursts at the tick). std only: `rustc -O paced.rs`.
//!
//!   paced ADDR PATH RATE CONNS SECS SEED   -> prints `COUNT <200s> <429s> <late>`

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let (addr, path) = (a[1].clone(), a[2].clone());
    let rate: f64 = a[3].parse().unwrap();
    let conns: usize = a[4].parse().unwrap();
    let secs: f64 = a[5].parse().unwrap();
    let seed: u64 = a[6].parse().unwrap();
    let mean = conns as f64 / rate;
    let start = Instant::now() + Duration::from_millis(200);
    let end = start + Duration::from_secs_f64(secs);
    let threads: Vec<_> = (0..conns)
        .map(|i| {
            let (addr, path) = (addr.clone(), path.clone());
            let mut x =
                seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ (i as u64 + 1) * 0xbf58_476d_1ce4_e5b9;
            std::thread::spawn(move || {
                let mut s = connect(&addr);
                let req = format!("GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n");
                let mut buf = vec![0u8; 4096];
                let (mut ok, mut limited, mut late) = (0u64, 0u64, 0u64);
                let mut next = start;
                loop {
                    // xorshift64*, then an exponential gap
                    x ^= x >> 12;
                    x ^= x << 25;
                    x ^= x >> 27;
                    let u =
                        (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64;
                    next += Duration::from_secs_f64(-mean * (1.0 - u).ln());
                    if next >= end {
                        break;
                    }
                    let now = Instant::now();
                    if next > now {
                        std::thread::sleep(next - now);
                    } else {
                        late += 1;
                    }
                    // A connection the server closed is opened again, the request sent again.
                    let status = match exchange(&mut s, &req, &mut buf) {
                        Some(st) => st,
                        None => {
                            s = connect(&addr);
                            exchange(&mut s, &req, &mut buf).expect("no answer")
                        }
                    };
                    match status {
                        200 => ok += 1,
                        429 => limited += 1,
                        other => panic!("status {other}"),
                    }
                }
                (ok, limited, late)
            })
        })
        .collect();
    let (mut ok, mut limited, mut late) = (0, 0, 0);
    for t in threads {
        let (o, l, z) = t.join().unwrap();
        ok += o;
        limited += l;
        late += z;
    }
    println!("COUNT {ok} {limited} {late}");
}

fn connect(addr: &str) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect");
    s.set_nodelay(true).unwrap();
    s
}

/// Send `req`, read one answer (head and Content-Length body); its status, or `None` when
/// the connection failed or closed.
fn exchange(s: &mut TcpStream, req: &str, buf: &mut [u8]) -> Option<u16> {
    s.write_all(req.as_bytes()).ok()?;
    let mut have = 0;
    loop {
        let n = s.read(&mut buf[have..]).ok().filter(|&n| n > 0)?;
        have += n;
        let Some(h) = buf[..have].windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&buf[..h]).to_ascii_lowercase();
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .map_or(0, |v| v.trim().parse().unwrap_or(0));
        while have < h + 4 + len {
            let n = s.read(&mut buf[have..]).ok().filter(|&n| n > 0)?;
            have += n;
        }
        return head.get(9..12)?.parse().ok();
    }
}
