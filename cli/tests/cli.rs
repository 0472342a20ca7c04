//! The `chapar` binary as users run it: outputs, exit codes, every error
//! message `open` promises, and that nothing leaks into a bundle folder.

use std::fs;
use std::os::unix::fs::PermissionsExt;
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

    fn chapar(&self, args: &[&str]) -> Output {
        Command::cargo_bin("chapar")
            .expect("binary")
            .current_dir(self.tmp.path())
            .args(args)
            .output()
            .expect("runs")
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.chapar(args);
        assert!(
            out.status.success(),
            "chapar {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf8")
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        serde_json::from_str(&self.ok(&all)).expect("one JSON object")
    }

    /// Runs a command expected to fail with exit code 1; returns (stderr, JSON kind).
    fn fails(&self, args: &[&str]) -> (String, String) {
        let out = self.chapar(args);
        assert_eq!(
            out.status.code(),
            Some(1),
            "chapar {args:?} should fail with 1"
        );
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let out = self.chapar(&all);
        assert_eq!(out.status.code(), Some(1));
        let v: Value = serde_json::from_slice(&out.stdout).expect("JSON error object");
        assert_eq!(v["ok"], false);
        (stderr, v["kind"].as_str().unwrap_or("").to_owned())
    }

    fn keygen(&self, name: &str) -> String {
        self.ok(&["keygen", "-o", name]).trim().to_owned()
    }

    /// A sample evidence folder whose bytes and names hold canaries.
    fn evidence(&self) -> PathBuf {
        let dir = self.path("evidence");
        fs::create_dir_all(dir.join("ct-scans")).expect("mkdir");
        fs::write(
            dir.join("ct-scans/CANARY-NAME-patient-17.dcm"),
            CANARY.repeat(3000),
        )
        .expect("write");
        fs::write(dir.join("records.txt"), format!("{CANARY} ward 4")).expect("write");
        fs::write(dir.join("empty"), b"").expect("write");
        dir
    }

    fn seal(&self, recipient: &str, extra: &[&str]) -> PathBuf {
        self.evidence();
        let mut args = vec![
            "seal",
            "-r",
            recipient,
            "-o",
            "bundle",
            "--chunk-size",
            "4KiB",
        ];
        args.extend_from_slice(extra);
        args.push("evidence");
        self.ok(&args);
        self.path("bundle")
    }
}

const CANARY: &str = "CANARY-7f3a9c-plaintext-must-not-leak ";

fn all_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).expect("read_dir") {
        let p = e.expect("entry").path();
        if p.is_dir() {
            out.extend(all_files(&p));
        } else {
            out.push(p);
        }
    }
    out
}

fn chunk_files(bundle: &Path) -> Vec<PathBuf> {
    let mut v = all_files(&bundle.join("chunks"));
    v.sort();
    v
}

#[test]
fn keygen_writes_a_private_key_once_and_prints_the_recipient() {
    let env = Env::new();
    let recipient = env.keygen("key.txt");
    assert!(recipient.starts_with("age1"), "{recipient}");
    let text = fs::read_to_string(env.path("key.txt")).expect("read");
    assert!(text.contains(&format!("# public key: {recipient}")));
    assert!(text.contains("AGE-SECRET-KEY-1"));
    let mode = fs::metadata(env.path("key.txt"))
        .expect("meta")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let (stderr, kind) = env.fails(&["keygen", "-o", "key.txt"]);
    assert!(stderr.contains("refusing to overwrite"), "{stderr}");
    assert_eq!(kind, "key_exists");
    assert_eq!(fs::read_to_string(env.path("key.txt")).expect("read"), text);
}

#[test]
fn seal_open_inspect_reassemble_round_trip_with_json() {
    let env = Env::new();
    let r = env.keygen("key.txt");
    env.evidence();
    let sealed = env.json(&[
        "seal",
        "-r",
        &r,
        "--note",
        "for the mission",
        "-o",
        "bundle",
        "evidence",
    ]);
    let id = sealed["bundle_id"].as_str().expect("bundle_id").to_owned();
    assert_eq!(id.len(), 64);
    assert_eq!(sealed["files"], 3);

    let inspected = env.json(&["inspect", "bundle", "-i", "key.txt"]);
    assert_eq!(inspected["bundle_id"], id.as_str());
    assert_eq!(inspected["ciphertext_blake3"], sealed["ciphertext_blake3"]);
    assert_eq!(inspected["addressed"], true);
    assert_eq!(inspected["note"], "for the mission");
    assert_eq!(inspected["chunks_present"], inspected["chunks_total"]);
    // The id really is BLAKE3 of the descriptor file.
    let descriptor = fs::read(env.path("bundle/descriptor.chapar")).expect("read");
    assert_eq!(blake3::hash(&descriptor).to_hex().as_str(), id);

    let opened = env.json(&["open", "-i", "key.txt", "-o", "out", "bundle"]);
    assert_eq!(opened["bundle_id"], id.as_str());
    assert_eq!(opened["files"], 3);
    assert_eq!(
        fs::read(env.path("out/evidence/records.txt")).expect("read"),
        fs::read(env.path("evidence/records.txt")).expect("read")
    );

    let re = env.json(&["reassemble", "bundle", "-o", "bundle.age"]);
    let age_bytes = fs::read(env.path("bundle.age")).expect("read");
    assert_eq!(
        blake3::hash(&age_bytes).to_hex().as_str(),
        re["ciphertext_blake3"]
    );
    assert_eq!(re["ciphertext_blake3"], sealed["ciphertext_blake3"]);
}

#[test]
fn nothing_readable_leaks_into_the_bundle_folder() {
    let env = Env::new();
    let r = env.keygen("key.txt");
    let bundle = env.seal(&r, &["--note", "NOTE-CANARY-b81"]);
    let needles: [&[u8]; 5] = [
        CANARY.as_bytes(),
        b"CANARY-NAME",
        b"records.txt",
        b"NOTE-CANARY",
        r.as_bytes(),
    ];
    for file in all_files(&bundle) {
        let bytes = fs::read(&file).expect("read");
        for needle in needles {
            assert!(
                !bytes.windows(needle.len()).any(|w| w == needle),
                "{} contains {:?}",
                file.display(),
                String::from_utf8_lossy(needle)
            );
        }
        let name = file
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        assert!(
            name == "descriptor.chapar" || name.len() == 64,
            "unexpected file {name}"
        );
    }
    // No staging folders or temp files left next to the bundle.
    let stray: Vec<_> = fs::read_dir(env.tmp.path())
        .expect("read_dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("partial"))
        .collect();
    assert!(stray.is_empty(), "{stray:?}");
}

#[test]
fn open_with_the_wrong_key_says_so() {
    let env = Env::new();
    let r = env.keygen("key.txt");
    env.keygen("other.txt");
    env.seal(&r, &[]);
    let (stderr, kind) = env.fails(&["open", "-i", "other.txt", "-o", "out", "bundle"]);
    assert!(
        stderr.contains("not addressed to the given key"),
        "{stderr}"
    );
    assert_eq!(kind, "not_addressed");
    assert!(!env.path("out").exists());
    let inspected = env.json(&["inspect", "bundle", "-i", "other.txt"]);
    assert_eq!(inspected["addressed"], false);
}

#[test]
fn too_many_missing_chunks_names_the_stripes() {
    let env = Env::new();
    let r = env.keygen("key.txt");
    let bundle = env.seal(&r, &["--parity", "1"]);
    // Remove every chunk: every stripe of the index is lost first.
    for f in chunk_files(&bundle) {
        fs::remove_file(f).expect("rm");
    }
    let (stderr, kind) = env.fails(&["open", "-i", "key.txt", "-o", "out", "bundle"]);
    assert!(stderr.contains("too many chunks missing"), "{stderr}");
    assert!(stderr.contains("stripe 0"), "{stderr}");
    assert_eq!(kind, "too_many_missing");
    let (stderr, _) = env.fails(&["reassemble", "bundle", "-o", "x.age"]);
    assert!(stderr.contains("too many chunks missing"), "{stderr}");
    assert!(!env.path("x.age").exists());
}

#[test]
fn corruption_parity_cannot_repair_is_reported_and_one_flip_is_repaired() {
    let env = Env::new();
    let r = env.keygen("key.txt");
    let bundle = env.seal(&r, &["--parity", "1"]);
    let index: Value = env.json(&["inspect", "bundle"]);
    assert!(index["data_chunks"].as_u64().expect("n") > 4);
    // Flip one byte in every chunk file: far beyond what parity 1 repairs.
    for f in chunk_files(&bundle) {
        let mut b = fs::read(&f).expect("read");
        b[0] ^= 0x80;
        fs::write(&f, b).expect("write");
    }
    let (stderr, kind) = env.fails(&["open", "-i", "key.txt", "-o", "out", "bundle"]);
    assert!(stderr.contains("missing or corrupt"), "{stderr}");
    assert_eq!(kind, "too_many_missing");
    assert!(!env.path("out").exists());
}

#[test]
fn a_single_corrupt_chunk_is_rebuilt_from_parity() {
    let env = Env::new();
    let r = env.keygen("key.txt");
    let bundle = env.seal(&r, &[]);
    // A payload data chunk (a parity chunk would never be read, so it
    // could not show the repair): the first one in the index.
    let folder = chapar_bundle::BundleFolder::new(&bundle);
    let (d, _) = folder.read_descriptor().expect("descriptor");
    let (ids, _) = chapar_format::read_index(&d, &folder).expect("index");
    let victim = folder.chunk_path(&ids[0]);
    let mut b = fs::read(&victim).expect("read");
    b[10] ^= 1;
    fs::write(&victim, b).expect("write");
    let opened = env.json(&["open", "-i", "key.txt", "-o", "out", "bundle"]);
    assert_eq!(opened["repaired_chunks"], 1);
}

#[test]
fn truncated_descriptor_and_truncated_chunks_are_clear_errors() {
    let env = Env::new();
    let r = env.keygen("key.txt");
    let bundle = env.seal(&r, &["--parity", "0"]);
    // A chunk cut short, with no parity to rebuild it.
    let mut files = chunk_files(&bundle);
    files.sort_by_key(|f| std::cmp::Reverse(fs::metadata(f).expect("meta").len()));
    let f = &files[0];
    let len = fs::metadata(f).expect("meta").len();
    fs::OpenOptions::new()
        .write(true)
        .open(f)
        .and_then(|h| h.set_len(len / 2))
        .expect("truncate");
    let (stderr, _) = env.fails(&["open", "-i", "key.txt", "-o", "out", "bundle"]);
    assert!(stderr.contains("missing or corrupt"), "{stderr}");

    let d = bundle.join("descriptor.chapar");
    let bytes = fs::read(&d).expect("read");
    fs::write(&d, &bytes[..bytes.len() - 10]).expect("write");
    let (stderr, kind) = env.fails(&["open", "-i", "key.txt", "-o", "out", "bundle"]);
    assert!(stderr.contains("truncated"), "{stderr}");
    assert_eq!(kind, "malformed");
    let (stderr, kind) = env.fails(&["inspect", "bundle"]);
    assert!(stderr.contains("truncated"), "{stderr}");
    assert_eq!(kind, "malformed");
}

/// A tar entry named `name` with `data`, written byte by byte so that even
/// names the `tar` crate refuses to write (`../x`) can be made.
fn raw_tar_entry(name: &str, kind: u8, data: &[u8]) -> Vec<u8> {
    let mut h = [0u8; 512];
    h[..name.len()].copy_from_slice(name.as_bytes());
    h[100..107].copy_from_slice(b"0000644");
    h[108..115].copy_from_slice(b"0000000");
    h[116..123].copy_from_slice(b"0000000");
    h[124..135].copy_from_slice(format!("{:011o}", data.len()).as_bytes());
    h[136..147].copy_from_slice(b"00000000000");
    h[156] = kind;
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    h[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
    let mut out = h.to_vec();
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(512) * 512, 0);
    out
}

/// Seals an arbitrary (hostile) tar payload with the library, as a
/// malicious sender could.
fn seal_hostile(env: &Env, recipient: &str, entries: &[(&str, u8, &[u8])]) -> PathBuf {
    let mut payload = Vec::new();
    for (name, kind, data) in entries {
        payload.extend(raw_tar_entry(name, *kind, data));
    }
    payload.extend([0u8; 1024]);
    let r = chapar_bundle::keys::parse_recipient(recipient).expect("recipient");
    let opts = chapar_bundle::SealOptions::new(vec![r]);
    let bundle = env.path("hostile");
    let folder = chapar_bundle::BundleFolder::new(&bundle);
    fs::create_dir(&bundle).expect("mkdir");
    let (sealed, _) =
        chapar_bundle::seal_stream(&opts, folder.sink().expect("sink"), 1, 4, |w, _| {
            w.write_all(&payload)
                .map_err(|e| chapar_bundle::BundleError::BadArchive(e.to_string()))
        })
        .expect("seal");
    folder
        .write_descriptor(&sealed.descriptor_bytes)
        .expect("descriptor");
    bundle
}

#[test]
fn an_entry_escaping_the_output_folder_is_refused() {
    let env = Env::new();
    let r = env.keygen("key.txt");
    seal_hostile(&env, &r, &[("../escaped.txt", b'0', b"evil")]);
    let (stderr, kind) = env.fails(&["open", "-i", "key.txt", "-o", "out/inner", "hostile"]);
    assert!(stderr.contains("outside the output folder"), "{stderr}");
    assert_eq!(kind, "unsafe_path");
    assert!(!env.path("out/escaped.txt").exists());
    assert!(!env.path("escaped.txt").exists());
    assert!(!env.path("out/inner").exists());
}

#[test]
fn symlink_and_absolute_entries_are_refused() {
    let env = Env::new();
    let r = env.keygen("key.txt");
    seal_hostile(&env, &r, &[("link", b'2', b"")]);
    let (stderr, kind) = env.fails(&["open", "-i", "key.txt", "-o", "out", "hostile"]);
    assert!(stderr.contains("symlink"), "{stderr}");
    assert_eq!(kind, "unsupported_entry");
    fs::remove_dir_all(env.path("hostile")).expect("rm");
    seal_hostile(&env, &r, &[("/etc/evil", b'0', b"evil")]);
    let (_, kind) = env.fails(&["open", "-i", "key.txt", "-o", "out", "hostile"]);
    assert_eq!(kind, "unsafe_path");
}

#[test]
fn special_files_and_symlinks_leaving_the_input_are_refused_at_seal() {
    let env = Env::new();
    let r = env.keygen("key.txt");
    let dir = env.path("in");
    fs::create_dir(&dir).expect("mkdir");
    std::os::unix::fs::symlink("/etc/hostname", dir.join("outside")).expect("symlink");
    let (stderr, kind) = env.fails(&["seal", "-r", &r, "-o", "b", "in"]);
    assert!(stderr.contains("symlink points outside"), "{stderr}");
    assert_eq!(kind, "symlink_outside");
    fs::remove_file(dir.join("outside")).expect("rm");
    let fifo = dir.join("pipe");
    let made = std::process::Command::new("mkfifo").arg(&fifo).status();
    if made.is_ok_and(|s| s.success()) {
        let (stderr, kind) = env.fails(&["seal", "-r", &r, "-o", "b", "in"]);
        assert!(stderr.contains("special file"), "{stderr}");
        assert_eq!(kind, "special_file");
    }
    assert!(!env.path("b").exists());
}

#[test]
fn usage_errors_exit_2_and_failures_exit_1() {
    let env = Env::new();
    assert_eq!(env.chapar(&["seal", "-o", "b"]).status.code(), Some(2));
    assert_eq!(env.chapar(&["frobnicate"]).status.code(), Some(2));
    assert_eq!(
        env.chapar(&["seal", "--parity", "x", "-o", "b", "p"])
            .status
            .code(),
        Some(2)
    );
    let (stderr, kind) = env.fails(&["seal", "-r", "age1bogus", "-o", "b", "missing"]);
    assert!(stderr.contains("not an age X25519 recipient"), "{stderr}");
    assert_eq!(kind, "bad_recipient");
    let r = env.keygen("key.txt");
    let (stderr, kind) = env.fails(&["seal", "-r", &r, "-o", "b", "missing"]);
    assert!(stderr.contains("no such file"), "{stderr}");
    assert_eq!(kind, "input_missing");
    let (_, kind) = env.fails(&["inspect", "nowhere"]);
    assert_eq!(kind, "not_a_bundle");
    for sub in ["keygen", "seal", "open", "reassemble", "inspect"] {
        let out = env.chapar(&[sub, "--help"]);
        assert!(out.status.success());
        assert!(String::from_utf8_lossy(&out.stdout).contains("--json"));
    }
}

#[test]
fn existing_outputs_are_never_overwritten() {
    let env = Env::new();
    let r = env.keygen("key.txt");
    env.seal(&r, &[]);
    fs::create_dir(env.path("out")).expect("mkdir");
    fs::write(env.path("out/keep.txt"), b"mine").expect("write");
    let (_, kind) = env.fails(&["open", "-i", "key.txt", "-o", "out", "bundle"]);
    assert_eq!(kind, "output_exists");
    assert_eq!(fs::read(env.path("out/keep.txt")).expect("read"), b"mine");
    let (_, kind) = env.fails(&["seal", "-r", &r, "-o", "out", "evidence"]);
    assert_eq!(kind, "output_exists");
    fs::write(env.path("x.age"), b"mine").expect("write");
    let (_, kind) = env.fails(&["reassemble", "bundle", "-o", "x.age"]);
    assert_eq!(kind, "output_exists");
}
