//! A reassembled bundle is an ordinary age file holding an ordinary tar
//! archive: stock `age`, `tar`, `b3sum` and `sha256sum` open and check it
//! without Chapar. And keys made by stock `age-keygen` work with Chapar.

use std::fs;
use std::path::Path;
use std::process::Command;

use chapar_bundle::{keys, reassemble_to_file, seal_to_folder, BundleFolder, SealOptions};
use chapar_tests::require_tool;

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("tool runs");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn sample(dir: &Path) -> std::path::PathBuf {
    let input = dir.join("evidence");
    fs::create_dir_all(input.join("scans")).expect("mkdir");
    fs::write(input.join("scans/xray 1.png"), vec![0x89u8; 300_000]).expect("write");
    fs::write(input.join("notes.txt"), "shot at the checkpoint").expect("write");
    input
}

#[test]
fn stock_age_tar_and_b3sum_open_a_reassembled_bundle() {
    let (Some(age), Some(b3sum), Some(tar), Some(sha256sum)) = (
        require_tool("age"),
        require_tool("b3sum"),
        require_tool("tar"),
        require_tool("sha256sum"),
    ) else {
        return;
    };
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let key = dir.join("key.txt");
    keys::generate_identity_file(&key).expect("keygen");
    let recipient = keys::load_identities(&key).expect("load")[0].to_public();
    let input = sample(dir);
    let mut opts = SealOptions::new(vec![recipient]);
    opts.geometry.chunk_size = 64 * 1024;
    let bundle = dir.join("bundle");
    let sealed = seal_to_folder(std::slice::from_ref(&input), &opts, &bundle).expect("seal");
    // Lose a chunk: reassembly rebuilds it before stock tools see the file.
    let (d, _) = BundleFolder::new(&bundle)
        .read_descriptor()
        .expect("descriptor");
    let (ids, _) = chapar_format::read_index(&d, &BundleFolder::new(&bundle)).expect("index");
    fs::remove_file(BundleFolder::new(&bundle).chunk_path(&ids[1])).expect("rm");

    let age_file = dir.join("bundle.age");
    reassemble_to_file(&bundle, &age_file).expect("reassemble");

    let sum = run(Command::new(&b3sum).arg("--no-names").arg(&age_file));
    assert_eq!(sum.trim(), hex::encode(sealed.descriptor.ciphertext_blake3));
    let id = run(Command::new(&b3sum)
        .arg("--no-names")
        .arg(bundle.join("descriptor.chapar")));
    assert_eq!(id.trim(), sealed.bundle_id.to_hex());

    let out = dir.join("out");
    fs::create_dir(&out).expect("mkdir");
    let pipeline = format!(
        "{} -d -i {} {} | {} -x -C {}",
        age.display(),
        key.display(),
        age_file.display(),
        tar.display(),
        out.display()
    );
    run(Command::new("sh").arg("-c").arg(pipeline));
    assert_eq!(
        fs::read(out.join("evidence/scans/xray 1.png")).expect("read"),
        fs::read(input.join("scans/xray 1.png")).expect("read")
    );
    let checked = run(Command::new(&sha256sum)
        .arg("-c")
        .arg("chapar-manifest.sha256")
        .current_dir(&out));
    assert!(
        checked.contains("evidence/scans/xray 1.png: OK"),
        "{checked}"
    );
    assert!(checked.contains("evidence/notes.txt: OK"), "{checked}");
}

#[test]
fn identities_from_stock_age_keygen_open_chapar_bundles() {
    let Some(age_keygen) = require_tool("age-keygen") else {
        return;
    };
    let tmp = tempfile::tempdir().expect("tempdir");
    let key = tmp.path().join("stock-key.txt");
    run(Command::new(age_keygen).arg("-o").arg(&key));
    let identities = keys::load_identities(&key).expect("chapar reads age-keygen output");
    let input = sample(tmp.path());
    let bundle = tmp.path().join("bundle");
    seal_to_folder(
        &[input],
        &SealOptions::new(vec![identities[0].to_public()]),
        &bundle,
    )
    .expect("seal");
    let out = tmp.path().join("out");
    chapar_bundle::open_folder(&bundle, &identities, &out).expect("open");
    assert!(out.join("evidence/notes.txt").exists());
}
