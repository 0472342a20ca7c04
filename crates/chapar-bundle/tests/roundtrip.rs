//! Seal → open on real files: random trees, boundary sizes, erasure of
//! payload and index chunks, and the errors a recipient must see.

use std::fs;
use std::path::{Path, PathBuf};

use chapar_bundle::{open_folder, seal_to_folder, BundleError, BundleFolder, SealOptions};
use chapar_format::{Geometry, Part, RebuildError, Slot};
use proptest::prelude::*;

const CHUNK: u32 = 1024;

fn key() -> age::x25519::Identity {
    age::x25519::Identity::generate()
}

fn opts(recipients: &[&age::x25519::Identity], parity: u8) -> SealOptions {
    let mut o = SealOptions::new(recipients.iter().map(|i| i.to_public()).collect());
    o.geometry = Geometry {
        chunk_size: CHUNK,
        data_per_stripe: 4,
        parity_per_stripe: parity,
    };
    o.note = "ward 4, nights of 14–16".into();
    o
}

fn bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut out = vec![0u8; len];
    let mut h = blake3::Hasher::new();
    h.update(&seed.to_le_bytes());
    h.finalize_xof().fill(&mut out);
    out
}

/// Asserts `out` holds exactly the files under `input` (by relative path).
fn assert_same_tree(input: &Path, out: &Path) {
    let name = input.file_name().expect("name");
    for entry in walk(input) {
        let rel = entry.strip_prefix(input).expect("prefix");
        let opened = out.join(name).join(rel);
        assert_eq!(
            fs::read(&entry).expect("read input"),
            fs::read(&opened).unwrap_or_else(|e| panic!("{}: {e}", opened.display())),
            "{}",
            rel.display()
        );
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).expect("read_dir") {
        let p = e.expect("entry").path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

struct Sealed {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    input: PathBuf,
    bundle: PathBuf,
    key: age::x25519::Identity,
}

fn seal_files(files: &[(&str, Vec<u8>)], parity: u8) -> Sealed {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().to_path_buf();
    let input = root.join("evidence");
    fs::create_dir(&input).expect("mkdir");
    for (name, data) in files {
        let path = input.join(name);
        fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        fs::write(path, data).expect("write");
    }
    let key = key();
    let bundle = root.join("bundle");
    seal_to_folder(
        std::slice::from_ref(&input),
        &opts(&[&key], parity),
        &bundle,
    )
    .expect("seal");
    Sealed {
        _tmp: tmp,
        root,
        input,
        bundle,
        key,
    }
}

#[test]
fn boundary_sizes_round_trip() {
    let sizes = [
        0, 1, 1023, 1024, 1025, 4095, 4096, 4097, 8191, 8192, 8193, 70_000,
    ];
    let files: Vec<(String, Vec<u8>)> = sizes
        .iter()
        .map(|&s| (format!("f{s}.bin"), bytes(s, s as u64)))
        .collect();
    let refs: Vec<(&str, Vec<u8>)> = files.iter().map(|(n, d)| (n.as_str(), d.clone())).collect();
    let s = seal_files(&refs, 2);
    let out = s.root.join("out");
    let opened = open_folder(&s.bundle, &[s.key], &out).expect("open");
    assert_eq!(opened.manifest.files.len(), sizes.len());
    assert_eq!(opened.note, "ward 4, nights of 14–16");
    assert_same_tree(&s.input, &out);
}

#[test]
fn every_recipient_opens_and_a_third_key_sees_nothing() {
    let (a, b, c) = (key(), key(), key());
    let tmp = tempfile::tempdir().expect("tempdir");
    let input = tmp.path().join("docs");
    fs::create_dir(&input).expect("mkdir");
    fs::write(input.join("scan.pdf"), bytes(5000, 1)).expect("write");
    let bundle = tmp.path().join("b");
    seal_to_folder(std::slice::from_ref(&input), &opts(&[&a, &b], 1), &bundle).expect("seal");
    for (i, k) in [a, b].into_iter().enumerate() {
        let out = tmp.path().join(format!("out{i}"));
        open_folder(&bundle, &[k], &out).expect("opens");
        assert_same_tree(&input, &out);
    }
    let out = tmp.path().join("out-c");
    assert!(matches!(
        open_folder(&bundle, &[c], &out),
        Err(BundleError::NotAddressed)
    ));
    assert!(!out.exists(), "a failed open left {}", out.display());
}

/// Ids of every chunk of `part`, grouped by stripe.
fn stripes_of(bundle: &Path, part: Part) -> Vec<Vec<chapar_format::ChunkId>> {
    let folder = BundleFolder::new(bundle);
    let (d, _) = folder.read_descriptor().expect("descriptor");
    let (layout, ids) = match part {
        Part::Index => (d.index_layout().expect("layout"), d.index_chunks.clone()),
        Part::Payload => (
            d.payload_layout().expect("layout"),
            chapar_format::read_index(&d, &folder).expect("index").0,
        ),
    };
    (0..layout.stripes())
        .map(|s| {
            let mut v: Vec<_> = layout
                .stripe_data(s)
                .map(|i| ids[layout.position(Slot::Data(i))])
                .collect();
            v.extend(
                (0..layout.parity_per_stripe())
                    .map(|index| ids[layout.position(Slot::Parity { stripe: s, index })]),
            );
            v
        })
        .collect()
}

fn remove_chunk(bundle: &Path, id: &chapar_format::ChunkId) {
    fs::remove_file(BundleFolder::new(bundle).chunk_path(id)).expect("remove chunk");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(12))]

    /// Random trees; then up to `parity` chunks lost from every stripe of
    /// the payload and of the index: the bundle still opens intact.
    #[test]
    fn random_trees_survive_parity_losses_in_payload_and_index(
        sizes in proptest::collection::vec(0usize..9000, 1..6),
        parity in 1u8..4,
        seed in any::<u64>(),
        picks in proptest::collection::vec(any::<prop::sample::Index>(), 0..40),
    ) {
        let files: Vec<(String, Vec<u8>)> = sizes
            .iter()
            .enumerate()
            .map(|(i, &s)| (format!("d{}/f{i}", i % 2), bytes(s, seed ^ i as u64)))
            .collect();
        let refs: Vec<(&str, Vec<u8>)> = files.iter().map(|(n, d)| (n.as_str(), d.clone())).collect();
        let s = seal_files(&refs, parity);
        let mut stripes = stripes_of(&s.bundle, Part::Payload);
        stripes.extend(stripes_of(&s.bundle, Part::Index));
        let mut lost = vec![0usize; stripes.len()];
        for pick in picks {
            let stripe = pick.index(stripes.len());
            if lost[stripe] < usize::from(parity) {
                let victim = stripes[stripe][pick.index(stripes[stripe].len())];
                if BundleFolder::new(&s.bundle).chunk_path(&victim).exists() {
                    remove_chunk(&s.bundle, &victim);
                    lost[stripe] += 1;
                }
            }
        }
        let out = s.root.join("out");
        open_folder(&s.bundle, &[s.key], &out).expect("opens despite losses");
        assert_same_tree(&s.input, &out);
    }
}

#[test]
fn losing_parity_plus_one_index_chunks_is_a_clear_error() {
    let s = seal_files(&[("a", bytes(3000, 7))], 2);
    let index = stripes_of(&s.bundle, Part::Index);
    for id in &index[0][..3] {
        remove_chunk(&s.bundle, id);
    }
    let out = s.root.join("out");
    match open_folder(&s.bundle, &[s.key], &out) {
        Err(BundleError::Rebuild(RebuildError::TooManyMissing { losses })) => {
            assert_eq!(losses[0].part, Part::Index);
            assert_eq!((losses[0].lost, losses[0].parity), (3, 2));
        }
        other => panic!("expected TooManyMissing, got {other:?}"),
    }
    assert!(!out.exists());
}

#[test]
fn a_flipped_byte_in_a_chunk_is_repaired_from_parity() {
    let s = seal_files(&[("a", bytes(9000, 8))], 1);
    let victim = stripes_of(&s.bundle, Part::Payload)[1][0];
    let path = BundleFolder::new(&s.bundle).chunk_path(&victim);
    let mut data = fs::read(&path).expect("read");
    data[100] ^= 1;
    fs::write(&path, data).expect("write");
    let out = s.root.join("out");
    let opened = open_folder(&s.bundle, &[s.key], &out).expect("repaired");
    assert_eq!(opened.repairs.len(), 1);
    assert_eq!(opened.repairs[0].chunk, victim);
    assert_same_tree(&s.input, &out);
}

#[test]
fn corruption_beyond_parity_fails_and_leaves_nothing_that_looks_complete() {
    let s = seal_files(&[("a", bytes(9000, 9))], 1);
    for id in &stripes_of(&s.bundle, Part::Payload)[0][..2] {
        let path = BundleFolder::new(&s.bundle).chunk_path(id);
        let mut data = fs::read(&path).expect("read");
        data[0] ^= 0xff;
        fs::write(&path, data).expect("write");
    }
    let out = s.root.join("out");
    let err = open_folder(&s.bundle, &[s.key], &out).expect_err("must fail");
    assert!(
        matches!(
            err,
            BundleError::Rebuild(RebuildError::TooManyMissing { .. })
        ),
        "{err:?}"
    );
    assert!(!out.exists());
    let leftovers: Vec<_> = fs::read_dir(&s.root)
        .expect("read_dir")
        .map(|e| e.expect("entry").file_name())
        .filter(|n| n.to_string_lossy().contains("chapar-partial"))
        .collect();
    assert!(leftovers.is_empty(), "staging left behind: {leftovers:?}");
}

/// Anyone who knows a recipient's public key can copy a bundle's
/// descriptor, swap in a sealed header of their own (with an ack secret
/// they chose and the real ciphertext hash) and see whether a receipt
/// comes back. The payload seals the real ack hashes, so the recipient
/// refuses the altered descriptor instead of opening it.
#[test]
fn a_descriptor_with_a_forged_header_is_refused() {
    let s = seal_files(&[("a", bytes(5000, 11))], 1);
    let folder = BundleFolder::new(&s.bundle);
    let (mut d, _) = folder.read_descriptor().expect("descriptor");
    let forged = chapar_format::HeaderContents {
        ack_secret: chapar_format::AckSecret::from_bytes([42; 32]),
        ciphertext_blake3: d.ciphertext_blake3,
        file_count: 1,
        total_size: 5000,
        note: "ward 4, nights of 14–16".into(),
    };
    d.sealed_headers = vec![forged.seal(&s.key.to_public()).expect("seal")];
    d.ack_hashes = vec![forged.ack_secret.hash()];
    fs::write(folder.descriptor_path(), d.encode().expect("encode")).expect("write");
    let out = s.root.join("out");
    let err = open_folder(&s.bundle, &[s.key], &out).expect_err("forged descriptor opened");
    assert!(matches!(err, BundleError::DescriptorMismatch), "{err:?}");
    assert!(!out.exists());
}

#[test]
fn a_bundle_too_large_for_its_chunk_size_is_refused_before_sealing() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let input = tmp.path().join("big.bin");
    fs::write(&input, bytes(3_000_000, 1)).expect("write");
    let mut o = opts(&[&key()], 4);
    o.geometry.data_per_stripe = 16;
    let out = tmp.path().join("bundle");
    let err = seal_to_folder(&[input], &o, &out).expect_err("too many chunks");
    assert!(err.to_string().contains("use a larger chunk size"), "{err}");
    assert!(!out.exists());
}
