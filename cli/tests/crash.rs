//! `chapar import` killed with SIGKILL at random instants, again and again:
//! after every kill the store is consistent, nothing corrupt is recorded,
//! and every chunk the store had acknowledged is present and valid.
//!
//! How the kill instants land inside writes: the bundle has ~600 small
//! chunks, so an import is ~10 group commits, each two `syncfs` calls, a
//! batch of renames and a database commit — the process spends nearly all
//! its life inside write and flush system calls. An uninterrupted import
//! is timed first on this machine, and each kill comes at a uniformly
//! random instant within that time. The test checks the experiment itself:
//! enough kills must have struck after some but before all commits of
//! their run.

use std::collections::HashSet;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use chapar_bundle::{keys, seal_to_folder, SealOptions};
use chapar_format::{ChunkId, Geometry};
use chapar_store::Store;
use rand::Rng;

const KILLS: usize = 100;

fn chapar() -> Command {
    Command::new(env!("CARGO_BIN_EXE_chapar"))
}

fn sealed_bundle(dir: &Path) -> PathBuf {
    let key = dir.join("key.txt");
    let recipient = keys::generate_identity_file(&key).expect("keygen");
    let input = dir.join("evidence");
    std::fs::create_dir(&input).expect("mkdir");
    let mut data = vec![0u8; 2_000_000];
    rand::thread_rng().fill(&mut data[..]);
    std::fs::write(input.join("scan.bin"), data).expect("write");
    let mut opts = SealOptions::new(vec![recipient]);
    opts.geometry = Geometry {
        chunk_size: 4096,
        data_per_stripe: 16,
        parity_per_stripe: 4,
    };
    let bundle = dir.join("bundle");
    seal_to_folder(&[input], &opts, &bundle).expect("seal");
    bundle
}

fn import(data: &Path, bundle: &Path) -> std::process::Child {
    chapar()
        .args(["import", "--progress", "--data-dir"])
        .arg(data)
        .arg(bundle)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn chapar import")
}

/// Chunk ids the process announced as durable and acknowledged.
fn acknowledged(stderr: &str) -> Vec<ChunkId> {
    stderr
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|v| v["event"] == "committed")
        .flat_map(|v| {
            v["chunks"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .filter_map(|c| c.as_str().and_then(|s| s.parse().ok()))
        })
        .collect()
}

#[test]
fn import_killed_at_random_instants_never_loses_or_corrupts_acknowledged_chunks() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let bundle = sealed_bundle(tmp.path());

    // Calibrate: one uninterrupted import.
    let start = Instant::now();
    let out = import(&tmp.path().join("calibrate"), &bundle)
        .wait_with_output()
        .expect("import");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let full = Instant::now() - start;
    let total = acknowledged(&String::from_utf8_lossy(&out.stderr)).len();
    assert!(total > 500, "only {total} chunks");

    let mut rng = rand::thread_rng();
    let mut round = 0;
    let mut data = tmp.path().join("data-0");
    let mut acked: HashSet<ChunkId> = HashSet::new();
    let (mut before_any, mut partial, mut after_all) = (0, 0, 0);
    let mut held_before = 0;
    for kill in 0..KILLS {
        let mut child = import(&data, &bundle);
        let delay = full.mul_f64(rng.gen_range(0.0..1.0));
        std::thread::sleep(delay);
        let _ = child.kill(); // SIGKILL
        let _ = child.wait();
        let mut stderr = String::new();
        if let Some(mut pipe) = child.stderr.take() {
            let _ = pipe.read_to_string(&mut stderr);
        }
        acked.extend(acknowledged(&stderr));

        let store = Store::open(&data).unwrap_or_else(|e| {
            panic!("kill {kill} after {delay:?}: the store does not open: {e:?}")
        });
        let report = store.fsck(false).expect("fsck");
        assert!(
            !report.damaged(),
            "kill {kill} after {delay:?}: fsck found damage: {report:?}"
        );
        for id in &acked {
            let bytes = store
                .get_chunk(id)
                .unwrap_or_else(|e| panic!("kill {kill}: acknowledged chunk {id}: {e}"))
                .unwrap_or_else(|| panic!("kill {kill}: acknowledged chunk {id} lost"));
            assert!(id.matches(&bytes));
        }
        // Where did this kill strike? Judged by the store, not by what the
        // process managed to print before it died.
        let record = store.bundles().expect("bundles").first().map(|b| b.record);
        let held = record.map_or(0, |r| r.held_chunks);
        match (held > held_before, record.is_some_and(|r| r.complete())) {
            (_, true) => after_all += 1,
            (true, false) => partial += 1,
            (false, false) => before_any += 1,
        }
        held_before = held;
        if record.is_some_and(|r| r.complete()) {
            round += 1;
            data = tmp.path().join(format!("data-{round}"));
            acked.clear();
            held_before = 0;
        }
    }
    eprintln!(
        "{KILLS} kills over a {full:?} import of {total} chunks: {before_any} before the run's first commit, \
         {partial} between commits, {after_all} after its last; {round} store(s) completed"
    );
    assert!(
        partial >= KILLS / 10,
        "only {partial} of {KILLS} kills struck mid-import: the experiment did not test writes"
    );
    // And a killed-and-resumed store finishes the job.
    let finish = import(&data, &bundle).wait_with_output().expect("import");
    assert!(finish.status.success());
    let store = Store::open(&data).expect("open");
    assert!(store.bundles().expect("bundles")[0].record.complete());
}
