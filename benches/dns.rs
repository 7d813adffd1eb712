//! `make bench` (DNS): queries per second and latency of kaji's cluster DNS server for a
//! cluster name (answered from the in-memory index) and for a forwarded name (answered
//! from the forwarder's cache), against a trivial UDP responder that answers every query
//! with a fixed record, on the same host in the same run. Everything runs on loopback;
//! no root needed.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, MessageType, OpCode, Query};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{Name, RData, Record, RecordType};
use kaji::dns::answer::Zone;
use kaji::dns::forward::Forwarder;
use kaji::dns::index::{Endpoint, Index, Kind, Port, Service};
use kaji::dns::{Dns, server};
use tokio_util::sync::CancellationToken;

use common::pct;

const QUERIES: usize = 20_000;
const CLIENTS: usize = 4;

/// The trivial responder: parses nothing, flips the QR bit and appends one A record.
fn start_trivial() -> SocketAddr {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = sock.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 1500];
        loop {
            let Ok((n, from)) = sock.recv_from(&mut buf) else {
                continue;
            };
            let q = match Message::from_vec(&buf[..n]) {
                Ok(q) => q,
                Err(_) => continue,
            };
            let mut r = Message::response(q.metadata.id, OpCode::Query);
            r.metadata.recursion_available = true;
            r.add_queries(q.queries.clone());
            if let Some(q0) = q.queries.first() {
                r.add_answer(Record::from_rdata(
                    q0.name().clone(),
                    300,
                    RData::A(A::new(192, 0, 2, 1)),
                ));
            }
            let _ = sock.send_to(&r.to_vec().unwrap(), from);
        }
    });
    addr
}

fn index() -> Index {
    let mut index = Index {
        synced: true,
        ..Default::default()
    };
    // A cluster of a realistic size: 500 services, 4 endpoints each.
    for i in 0..500u32 {
        let endpoints = (0..4u8)
            .map(|j| Endpoint {
                ip: std::net::IpAddr::from([10, 42, (i / 250) as u8, (i % 250) as u8 + j]),
                hostname: None,
                ports: vec![],
            })
            .collect();
        index.insert(
            "default",
            &format!("svc-{i}"),
            Service {
                kind: Kind::ClusterIp(vec![std::net::IpAddr::from([
                    10,
                    43,
                    (i / 250) as u8 + 1,
                    (i % 250) as u8,
                ])]),
                ports: vec![Port {
                    name: "http".into(),
                    protocol: "tcp".into(),
                    port: 80,
                }],
                endpoints,
            },
        );
    }
    index
}

fn query_bytes(name: &str, id: u16) -> Vec<u8> {
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
    m.to_vec().unwrap()
}

/// Sends `QUERIES` queries for `name` from `CLIENTS` threads, one outstanding each;
/// returns (queries per second, p50, p99).
fn load(server: SocketAddr, name: &str) -> (f64, Duration, Duration) {
    let start = Instant::now();
    let threads: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let name = name.to_string();
            std::thread::spawn(move || {
                let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
                sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                sock.connect(server).unwrap();
                let mut lat = Vec::with_capacity(QUERIES / CLIENTS);
                let mut buf = [0u8; 1500];
                for i in 0..QUERIES / CLIENTS {
                    let id = (c * QUERIES + i) as u16;
                    let q = query_bytes(&name, id);
                    let t = Instant::now();
                    sock.send(&q).unwrap();
                    loop {
                        let n = sock.recv(&mut buf).expect("answer");
                        if u16::from_be_bytes([buf[0], buf[1]]) == id {
                            assert!(n > 12 && buf[7] >= 1, "an answer record");
                            break;
                        }
                    }
                    lat.push(t.elapsed());
                }
                lat
            })
        })
        .collect();
    let mut lat: Vec<Duration> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    let qps = lat.len() as f64 / start.elapsed().as_secs_f64();
    (qps, pct(&mut lat, 0.5), pct(&mut lat, 0.99))
}

fn main() {
    let trivial = start_trivial();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let shutdown = CancellationToken::new();
    let kaji_addr = rt.block_on(async {
        let zone = Zone::new("cluster.local", "127.0.0.1".parse().unwrap());
        let dns = Arc::new(Dns::new(zone, Forwarder::new(vec![trivial], 30)));
        dns.set_index(index());
        let (udp, tcp) = server::bind("127.0.0.1".parse().unwrap(), 0).await.unwrap();
        let addr = udp.local_addr().unwrap();
        tokio::spawn(server::serve_udp(dns.clone(), udp, shutdown.clone()));
        tokio::spawn(server::serve_tcp(dns, tcp, shutdown.clone()));
        addr
    });
    // Warm up (and fill the forwarder's cache).
    load(trivial, "warm.example.");
    load(kaji_addr, "svc-7.default.svc.cluster.local.");
    load(kaji_addr, "www.example.com.");

    let rows = [
        ("trivial UDP responder", load(trivial, "www.example.com.")),
        (
            "kaji: cluster name",
            load(kaji_addr, "svc-321.default.svc.cluster.local."),
        ),
        (
            "kaji: forwarded name (cached)",
            load(kaji_addr, "www.example.com."),
        ),
    ];
    let base = rows[0].1.0;
    println!(
        "DNS over UDP on loopback: {QUERIES} queries, {CLIENTS} clients, 500 services indexed"
    );
    println!(
        "{:<32} {:>10} {:>10} {:>10} {:>12}",
        "server", "queries/s", "p50 µs", "p99 µs", "vs trivial"
    );
    for (name, (qps, p50, p99)) in rows {
        println!(
            "{name:<32} {qps:>10.0} {:>10} {:>10} {:>11.2}x",
            p50.as_micros(),
            p99.as_micros(),
            qps / base
        );
    }
    shutdown.cancel();
}
