//! The scenario test's censor: a userspace DPI on an NFQUEUE, run as root
//! in the router namespace between `country` and the world, with
//! `iptables -A FORWARD -j NFQUEUE --queue-num N`.
//!
//! ```text
//! chapar-censor --queue N --country CIDR --log FILE [--probes FILE] [--no-fet]
//! ```
//!
//! Every queued packet gets a verdict from `chapar_tests::censor::Censor`.
//! Each decision event becomes one JSON line in `--log`:
//! `{"event":"blocked","rule":"signature:/noise","flow":"10.0.0.2:5555->10.0.1.1:443"}`
//! or `{"event":"server","addr":"10.0.1.1:443"}`. Each new server is then
//! probed actively from this namespace (its own traffic leaves through
//! OUTPUT, which is not queued), one JSON line per probe answer in
//! `--probes`. Prints `censor: ready` once the queue is bound. SIGTERM
//! ends it (every line is flushed as it is written).
#![forbid(unsafe_code)]

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use chapar_tests::censor::{Censor, Event, Ipv4Net, Verdict};
use serde_json::json;

const USAGE: &str =
    "usage: chapar-censor --queue N --country CIDR --log FILE [--probes FILE] [--no-fet]";
/// Bytes of each probe answer kept in `--probes`.
const ANSWER_PREFIX: usize = 200;

struct Args {
    queue: u16,
    country: Ipv4Net,
    log: PathBuf,
    probes: Option<PathBuf>,
    fet: bool,
}

fn parse_args(mut it: impl Iterator<Item = String>) -> Result<Args, String> {
    let (mut queue, mut country, mut log, mut probes, mut fet) = (None, None, None, None, true);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--queue" => queue = Some(value()?.parse().map_err(|e| format!("--queue: {e}"))?),
            "--country" => country = Some(value()?.parse().map_err(|e| format!("--country: {e}"))?),
            "--log" => log = Some(PathBuf::from(value()?)),
            "--probes" => probes = Some(PathBuf::from(value()?)),
            "--no-fet" => fet = false,
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(Args {
        queue: queue.ok_or("--queue is required")?,
        country: country.ok_or("--country is required")?,
        log: log.ok_or("--log is required")?,
        probes,
        fet,
    })
}

type SharedFile = Arc<Mutex<File>>;

fn append(path: &PathBuf) -> io::Result<SharedFile> {
    let file = OpenOptions::new().create(true).append(true).open(path)?;
    Ok(Arc::new(Mutex::new(file)))
}

/// Writes one JSON line and flushes it.
fn write_line(file: &SharedFile, value: &serde_json::Value) {
    let Ok(mut f) = file.lock() else { return };
    if let Err(e) = writeln!(f, "{value}").and_then(|()| f.flush()) {
        eprintln!("censor: cannot write a log line: {e}");
    }
}

fn event_line(event: &Event) -> serde_json::Value {
    match event {
        Event::Blocked { flow, rule } => json!({
            "event": "blocked",
            "rule": rule.to_string(),
            "proto": flow.proto.to_string(),
            "flow": flow.to_string(),
        }),
        Event::NewServer(addr) => json!({"event": "server", "addr": addr.to_string()}),
    }
}

/// Probes `addr` in a thread of its own and records every answer.
fn spawn_probes(addr: SocketAddr, out: SharedFile) {
    let spawned = std::thread::Builder::new()
        .name(format!("probe {addr}"))
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            let answers = match rt {
                Ok(rt) => rt.block_on(chapar_transport::probe::probe_all(
                    addr,
                    &addr.ip().to_string(),
                )),
                Err(e) => return eprintln!("censor: no runtime to probe {addr}: {e}"),
            };
            for a in answers {
                let prefix = &a.answer[..a.answer.len().min(ANSWER_PREFIX)];
                write_line(
                    &out,
                    &json!({
                        "server": addr.to_string(),
                        "probe": a.probe,
                        "tls": a.tls,
                        "status": a.http_status(),
                        "telltales": a.telltales(),
                        "answer_len": a.answer.len(),
                        "answer_prefix": String::from_utf8_lossy(prefix),
                    }),
                );
            }
        });
    if let Err(e) = spawned {
        eprintln!("censor: cannot start probing {addr}: {e}");
    }
}

fn open_queue(num: u16) -> io::Result<nfq::Queue> {
    let mut queue = nfq::Queue::open()?;
    queue.bind(num)?; // copies whole packets (range 65535)
    queue.set_fail_open(num, true)?;
    Ok(queue)
}

fn run(args: Args) -> io::Result<()> {
    let log = append(&args.log)?;
    let probes = args.probes.as_ref().map(append).transpose()?;
    let mut queue = open_queue(args.queue)?;
    let mut censor = Censor::new(Some(args.country), args.fet);
    println!("censor: ready");
    io::stdout().flush()?;
    loop {
        let mut msg = match queue.recv() {
            Ok(msg) => msg,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let decision = censor.decide(msg.get_payload());
        for event in &decision.events {
            write_line(&log, &event_line(event));
            if let (Event::NewServer(addr), Some(out)) = (event, &probes) {
                spawn_probes(*addr, out.clone());
            }
        }
        msg.set_verdict(match decision.verdict {
            Verdict::Accept => nfq::Verdict::Accept,
            Verdict::Drop => nfq::Verdict::Drop,
        });
        queue.verdict(msg)?;
    }
}

fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(args) => args,
        Err(e) => {
            eprintln!("chapar-censor: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("chapar-censor: {e}");
            ExitCode::FAILURE
        }
    }
}
