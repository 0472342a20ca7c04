//! The store commands as users run them: import, export, status, fsck.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Output;

use assert_cmd::Command;
use serde_json::Value;

struct Env {
    tmp: tempfile::TempDir,
}

impl Env {
    fn new() -> Self {
        Self {
            tmp: tempfile::tempdir().expect("tempdir"),
        }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.tmp.path().join(rel)
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::cargo_bin("chapar")
            .expect("binary")
            .current_dir(self.tmp.path())
            .env("CHAPAR_DATA_DIR", self.path("data"))
            .args(args)
            .output()
            .expect("runs")
    }

    fn json(&self, args: &[&str]) -> (Option<i32>, Value) {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let out = self.run(&all);
        let v = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "chapar {args:?}: not one JSON object ({e}): {}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
        (out.status.code(), v)
    }

    fn ok(&self, args: &[&str]) -> Value {
        let (code, v) = self.json(args);
        assert_eq!(code, Some(0), "chapar {args:?}: {v}");
        v
    }

    /// Seals a sample folder into `name` (4 KiB chunks) and returns its id.
    fn sealed(&self, name: &str) -> String {
        if !self.path("key.txt").exists() {
            self.ok(&["keygen", "-o", "key.txt"]);
        }
        let text = fs::read_to_string(self.path("key.txt")).expect("key");
        let recipient = text
            .lines()
            .find_map(|l| l.strip_prefix("# public key: "))
            .expect("public key line")
            .to_owned();
        let input = self.path(&format!("{name}-in"));
        fs::create_dir_all(&input).expect("mkdir");
        fs::write(input.join("scan.bin"), vec![7u8; 100_000]).expect("write");
        fs::write(input.join("note.txt"), name).expect("write");
        let v = self.ok(&[
            "seal",
            "-r",
            &recipient,
            "--chunk-size",
            "4KiB",
            "-o",
            name,
            input.to_str().expect("utf8"),
        ]);
        v["bundle_id"].as_str().expect("id").to_owned()
    }
}

fn chunk_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for shard in fs::read_dir(dir).expect("read_dir") {
        for f in fs::read_dir(shard.expect("shard").path()).expect("read_dir") {
            out.push(f.expect("file").path());
        }
    }
    out.sort();
    out
}

#[test]
fn import_export_round_trip_through_the_cli() {
    let env = Env::new();
    let id = env.sealed("bundle");
    let imported = env.ok(&["import", "bundle"]);
    assert_eq!(imported["bundle_id"], id.as_str());
    assert_eq!(imported["complete"], true);

    let status = env.ok(&["status"]);
    let b = &status["bundles"][0];
    assert_eq!(b["bundle_id"], id.as_str());
    assert_eq!(b["role"], "relaying");
    assert_eq!(b["complete"], true);
    assert_eq!(b["chunks_held"], b["chunks_known"]);
    assert_eq!(b["receipts"], 0);

    env.ok(&["export", &id, "-o", "exported"]);
    env.ok(&["open", "-i", "key.txt", "-o", "opened", "exported"]);
    assert_eq!(
        fs::read(env.path("opened/bundle-in/scan.bin")).expect("read"),
        vec![7u8; 100_000]
    );
    assert_eq!(env.ok(&["fsck"])["damaged"], false);
}

#[test]
fn a_partial_folder_imports_what_it_can_and_says_what_is_missing() {
    let env = Env::new();
    env.sealed("bundle");
    let files = chunk_files(&env.path("bundle/chunks"));
    // Drop a third of the chunk files (index chunks may go too).
    for f in files.iter().step_by(3) {
        fs::remove_file(f).expect("rm");
    }
    let (code, v) = env.json(&["import", "bundle"]);
    assert_eq!(code, Some(0));
    assert_eq!(v["complete"], false);
    let missing = v["missing"].as_array().map_or(0, Vec::len);
    assert!(missing > 0 || v["index_known"] == false, "{v}");
}

#[test]
fn fsck_exit_code_follows_damage_and_repair() {
    let env = Env::new();
    env.sealed("bundle");
    env.ok(&["import", "bundle"]);
    let stored = chunk_files(&env.path("data/chunks"));
    let mut bytes = fs::read(&stored[0]).expect("read");
    bytes[0] ^= 0xff;
    fs::write(&stored[0], bytes).expect("write");

    let (code, v) = env.json(&["fsck"]);
    assert_eq!(code, Some(1), "damage left in place must fail: {v}");
    assert_eq!(v["corrupt"].as_array().map(Vec::len), Some(1));
    let human = env.run(&["fsck"]);
    assert_eq!(human.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&human.stdout).contains("run with --repair"));

    let (code, v) = env.json(&["fsck", "--repair"]);
    assert_eq!(code, Some(0), "{v}");
    assert_eq!(v["repaired"], true);
    let (code, v) = env.json(&["fsck"]);
    assert_eq!(code, Some(0));
    assert_eq!(v["damaged"], false);
    // The dropped chunk comes back from the folder.
    let again = env.ok(&["import", "bundle"]);
    assert_eq!(again["stored"], 1);
    assert_eq!(again["complete"], true);
}

#[test]
fn a_second_process_on_the_same_data_directory_gets_a_clear_error() {
    let env = Env::new();
    env.sealed("bundle");
    env.ok(&["status"]);
    let _held = chapar_store::Store::open(&env.path("data")).expect("open");
    let out = env.run(&["status"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("another Chapar process"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn export_of_an_unknown_bundle_and_a_bad_id_fail_cleanly() {
    let env = Env::new();
    let (code, v) = env.json(&["export", &"ab".repeat(32), "-o", "x"]);
    assert_eq!(code, Some(1));
    assert_eq!(v["kind"], "unknown_bundle");
    let (code, _) = env.json(&["export", "not-hex", "-o", "x"]);
    assert_eq!(code, Some(1));
    assert!(!env.path("x").exists());
}
