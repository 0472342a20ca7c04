//! Progress for `send` and `receive`: bars on a terminal (indicatif), a
//! plain line per change otherwise, JSON lines for scripts, or nothing.

use std::collections::HashMap;

use chapar_format::BundleId;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::{json, Value};

use crate::args::ProgressMode;

/// Where one sent bundle stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendStage {
    pub id: BundleId,
    pub total_chunks: usize,
    /// Distinct chunks that have left this machine (or that peers hold).
    pub handed_off: usize,
    /// Connected relays holding the whole bundle.
    pub replicas: usize,
    pub receipted: usize,
    pub recipients: usize,
    /// Every recipient's receipt is in: the store keeps only a tombstone.
    pub tombstoned: bool,
}

impl SendStage {
    pub fn delivered(&self) -> bool {
        self.tombstoned || (self.recipients > 0 && self.receipted >= self.recipients)
    }

    pub fn to_json(&self) -> Value {
        json!({
            "bundle_id": self.id.to_hex(),
            "chunks": self.total_chunks,
            "handed_off": self.handed_off,
            "replicas": self.replicas,
            "receipts": self.receipted,
            "recipients": self.recipients,
            "delivered": self.delivered(),
        })
    }
}

struct SendBars {
    handed_off: ProgressBar,
    replicated: ProgressBar,
    delivered: ProgressBar,
}

/// Shows progress in the chosen way.
pub struct Progress {
    mode: ProgressMode,
    replicas: usize,
    multi: MultiProgress,
    send_bars: HashMap<BundleId, SendBars>,
    fetch_bars: HashMap<BundleId, ProgressBar>,
    last: HashMap<BundleId, Value>,
}

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ")
}

fn short(id: &BundleId) -> String {
    id.to_hex()[..12].to_string()
}

impl Progress {
    pub fn new(mode: ProgressMode, replicas: usize) -> Self {
        let target = if mode == ProgressMode::Bars {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        Self {
            mode,
            replicas,
            multi: MultiProgress::with_draw_target(target),
            send_bars: HashMap::new(),
            fetch_bars: HashMap::new(),
            last: HashMap::new(),
        }
    }

    /// Says something once: a line above the bars, a text line, or JSON.
    pub fn event(&self, text: &str, json: Value) {
        match self.mode {
            ProgressMode::Bars => {
                let _ = self.multi.println(text);
            }
            ProgressMode::Lines | ProgressMode::Auto => eprintln!("{text}"),
            ProgressMode::Json => eprintln!("{json}"),
            ProgressMode::Quiet => {}
        }
    }

    pub fn sealed(&self, id: BundleId, files: u64, bytes: u64) {
        self.event(
            &format!(
                "sealed {files} file(s), {} into bundle {}",
                bytesize::ByteSize(bytes),
                id.to_hex()
            ),
            json!({ "event": "sealed", "bundle_id": id.to_hex(), "files": files, "bytes": bytes }),
        );
    }

    fn bar(&self, len: u64, template: &str, prefix: String) -> ProgressBar {
        let bar = self.multi.add(ProgressBar::new(len));
        bar.set_style(style(template));
        bar.set_prefix(prefix);
        bar
    }

    /// Shows what changed; returns whether anything did.
    pub fn update_send(&mut self, stages: &[SendStage]) -> bool {
        let mut changed = false;
        for s in stages {
            let json = json!({ "event": "progress", "stage": s.to_json() });
            if self.last.get(&s.id) == Some(&json) {
                continue;
            }
            changed = true;
            self.last.insert(s.id, json.clone());
            match self.mode {
                ProgressMode::Bars => self.draw_send(s),
                ProgressMode::Quiet => {}
                _ => self.event(
                    &format!(
                        "{}  handed off {}/{}  whole on {}/{} relays  receipts {}/{}",
                        short(&s.id),
                        s.handed_off,
                        s.total_chunks,
                        s.replicas,
                        self.replicas,
                        s.receipted,
                        s.recipients
                    ),
                    json,
                ),
            }
        }
        changed
    }

    fn draw_send(&mut self, s: &SendStage) {
        if !self.send_bars.contains_key(&s.id) {
            let p = short(&s.id);
            let bars = SendBars {
                handed_off: self.bar(
                    s.total_chunks as u64,
                    "{prefix} handed off {bar:30} {pos}/{len} chunks",
                    p.clone(),
                ),
                replicated: self.bar(
                    self.replicas as u64,
                    "{prefix} replicated {bar:30} {pos}/{len} relays hold it whole",
                    p.clone(),
                ),
                delivered: self.bar(
                    s.recipients as u64,
                    "{prefix} delivered  {bar:30} {pos}/{len} receipts",
                    p,
                ),
            };
            self.send_bars.insert(s.id, bars);
        }
        if let Some(b) = self.send_bars.get(&s.id) {
            b.handed_off.set_length(s.total_chunks as u64);
            b.handed_off.set_position(s.handed_off as u64);
            b.replicated
                .set_position(s.replicas.min(self.replicas) as u64);
            b.delivered.set_position(s.receipted as u64);
        }
    }

    /// A bundle addressed to us is arriving: `held` of `known` chunks.
    pub fn update_fetch(&mut self, id: BundleId, held: u64, known: u64) {
        let json =
            json!({ "event": "receiving", "bundle_id": id.to_hex(), "held": held, "known": known });
        if self.last.get(&id) == Some(&json) {
            return;
        }
        self.last.insert(id, json.clone());
        match self.mode {
            ProgressMode::Bars => {
                if !self.fetch_bars.contains_key(&id) {
                    let bar = self.bar(
                        known,
                        "{prefix} receiving {bar:30} {pos}/{len} chunks",
                        short(&id),
                    );
                    self.fetch_bars.insert(id, bar);
                }
                if let Some(bar) = self.fetch_bars.get(&id) {
                    bar.set_length(known);
                    bar.set_position(held);
                }
            }
            ProgressMode::Quiet => {}
            _ => self.event(
                &format!("{}  receiving {held}/{known} chunks", short(&id)),
                json,
            ),
        }
    }

    pub fn finish(&self) {
        for b in self.send_bars.values() {
            b.handed_off.abandon();
            b.replicated.abandon();
            b.delivered.abandon();
        }
        for b in self.fetch_bars.values() {
            b.abandon();
        }
    }
}
