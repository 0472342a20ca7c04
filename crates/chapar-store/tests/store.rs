//! The store on disk and in memory: boundary sizes, bit rot, quotas,
//! receipts, import/export, locking.

use std::fs;
use std::path::{Path, PathBuf};

use chapar_bundle::{open_folder, seal_to_folder, BundleFolder, SealOptions};
use chapar_format::{AckSecret, BundleId, Geometry};
use chapar_store::{
    export_folder, import_folder, ReceiptOutcome, Role, Store, StoreError, StoreHandle,
};

const CHUNK: u32 = 1024;

struct Sealed {
    folder: PathBuf,
    input: PathBuf,
    id: BundleId,
    keys: Vec<age::x25519::Identity>,
}

fn bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut out = vec![0u8; len];
    let mut h = blake3::Hasher::new();
    h.update(&seed.to_le_bytes());
    h.finalize_xof().fill(&mut out);
    out
}

/// Seals one file of `size` bytes for `recipients` fresh keys.
fn seal(dir: &Path, name: &str, size: usize, recipients: usize, priority: u8) -> Sealed {
    seal_expiring(
        dir,
        name,
        size,
        recipients,
        priority,
        chapar_bundle::DEFAULT_EXPIRY,
    )
}

fn seal_expiring(
    dir: &Path,
    name: &str,
    size: usize,
    recipients: usize,
    priority: u8,
    expires_in: std::time::Duration,
) -> Sealed {
    let input = dir.join(format!("{name}-in"));
    fs::create_dir_all(&input).expect("mkdir");
    fs::write(
        input.join("evidence.bin"),
        bytes(size, size as u64 ^ priority as u64),
    )
    .expect("write");
    let keys: Vec<_> = (0..recipients)
        .map(|_| age::x25519::Identity::generate())
        .collect();
    let mut opts = SealOptions::new(keys.iter().map(|k| k.to_public()).collect());
    opts.geometry = Geometry {
        chunk_size: CHUNK,
        data_per_stripe: 4,
        parity_per_stripe: 2,
    };
    opts.priority = priority;
    opts.expires_in = expires_in;
    let folder = dir.join(name);
    let sealed = seal_to_folder(std::slice::from_ref(&input), &opts, &folder).expect("seal");
    Sealed {
        folder,
        input,
        id: sealed.bundle_id,
        keys,
    }
}

fn import(store: &Store, s: &Sealed, role: Role) -> chapar_store::ImportReport {
    import_folder(store, &s.folder, role, |_| {}).expect("import")
}

/// The same checks, run against a store on disk and one in memory.
fn boundary_sizes_survive_import_and_export(store: Store) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let stripe = (CHUNK * 4) as usize;
    let sizes = [
        0,
        1,
        1023,
        1024,
        1025,
        stripe - 1,
        stripe,
        stripe + 1,
        3 * stripe + 17,
    ];
    for (i, size) in sizes.into_iter().enumerate() {
        let s = seal(tmp.path(), &format!("b{i}"), size, 1, 100);
        let report = import(&store, &s, Role::Relaying);
        assert!(report.complete, "size {size}: {report:?}");
        assert!(report.missing.is_empty() && report.corrupt.is_empty());
        let record = store.record(&s.id).expect("record");
        assert_eq!(record.held_chunks, record.known_chunks);
        let out = tmp.path().join(format!("export{i}"));
        let exported = export_folder(&store, &s.id, &out).expect("export");
        assert!(exported.complete);
        let opened = tmp.path().join(format!("open{i}"));
        open_folder(&out, &s.keys, &opened).expect("exported bundle opens");
        assert_eq!(
            fs::read(opened.join(format!("b{i}-in/evidence.bin"))).expect("read"),
            fs::read(s.input.join("evidence.bin")).expect("read"),
            "size {size}"
        );
        // Importing again stores nothing new.
        let again = import(&store, &s, Role::Relaying);
        assert_eq!(again.stored, 0);
        assert!(!again.new_bundle);
    }
    let used: u64 = store
        .bundles()
        .expect("bundles")
        .iter()
        .map(|b| b.record.held_bytes)
        .sum();
    assert_eq!(store.used_bytes().expect("used"), used);
    assert!(!store.fsck(false).expect("fsck").damaged());
}

#[test]
fn boundary_sizes_on_disk() {
    let dir = tempfile::tempdir().expect("tempdir");
    boundary_sizes_survive_import_and_export(Store::open(dir.path()).expect("open"));
}

#[test]
fn boundary_sizes_in_memory() {
    boundary_sizes_survive_import_and_export(Store::in_memory().expect("store"));
}

fn chunk_file(data_dir: &Path, id: &chapar_format::ChunkId) -> PathBuf {
    data_dir
        .join("chunks")
        .join(&id.to_hex()[..2])
        .join(id.to_hex())
}

#[test]
fn a_bit_rotted_chunk_is_found_never_served_and_refetched() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    let store = Store::open(&data).expect("open");
    let s = seal(tmp.path(), "b", 20_000, 1, 100);
    import(&store, &s, Role::Relaying);
    let victim = store.known_chunks(&s.id).expect("chunks")[3];
    let path = chunk_file(&data, &victim);
    let mut b = fs::read(&path).expect("read");
    b[7] ^= 0x10;
    fs::write(&path, b).expect("write");

    let report = store.fsck(false).expect("fsck");
    assert_eq!(report.corrupt, vec![victim]);
    assert!(report.damaged());

    match store.get_chunk(&victim) {
        Err(StoreError::ChunkCorrupt { id }) => assert_eq!(id, victim),
        other => panic!("corrupt chunk served or misreported: {other:?}"),
    }
    assert!(!store.has_chunk(&victim).expect("has"));
    assert_eq!(store.missing_chunks(&s.id).expect("missing"), vec![victim]);
    assert!(!path.exists(), "corrupt file left in place");
    let quarantined = fs::read_dir(data.join("quarantine"))
        .expect("quarantine")
        .count();
    assert_eq!(quarantined, 1);
    assert!(!store.fsck(false).expect("fsck").damaged());

    // The good copy comes back from the folder.
    let again = import(&store, &s, Role::Relaying);
    assert_eq!(again.stored, 1);
    assert!(again.complete);
}

#[test]
fn fsck_repair_drops_corrupt_chunks_and_adopts_or_removes_orphans() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    let store = Store::open(&data).expect("open");
    let s = seal(tmp.path(), "b", 9000, 1, 100);
    import(&store, &s, Role::Relaying);
    let ids = store.known_chunks(&s.id).expect("chunks");
    // Corrupt one, delete another's file, plant an orphan and a stray.
    let corrupt_path = chunk_file(&data, &ids[0]);
    fs::write(&corrupt_path, b"garbage").expect("write");
    fs::remove_file(chunk_file(&data, &ids[1])).expect("rm");
    let stray = chapar_format::ChunkId::of(b"nobody wants this");
    fs::create_dir_all(chunk_file(&data, &stray).parent().expect("parent")).expect("mkdir");
    fs::write(chunk_file(&data, &stray), b"nobody wants this").expect("write");

    let found = store.fsck(false).expect("fsck");
    assert_eq!(found.corrupt, vec![ids[0]]);
    assert_eq!(found.missing, vec![ids[1]]);
    assert_eq!(found.orphans, vec![stray]);
    let fixed = store.fsck(true).expect("fsck --repair");
    assert!(fixed.repaired);
    assert!(!chunk_file(&data, &stray).exists());
    let clean = store.fsck(false).expect("fsck");
    assert!(!clean.damaged() && clean.orphans.is_empty(), "{clean:?}");
    let mut missing = store.missing_chunks(&s.id).expect("missing");
    missing.sort();
    let mut expected = vec![ids[0], ids[1]];
    expected.sort();
    assert_eq!(missing, expected);
}

#[test]
fn quota_evicts_lowest_priority_then_oldest_and_never_own_bundles() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = Store::open(&tmp.path().join("data")).expect("open");
    let own = seal(tmp.path(), "own", 6000, 1, 0);
    let low = seal(tmp.path(), "low", 6000, 1, 10);
    let mid_old = seal(tmp.path(), "mid-old", 6000, 1, 50);
    let mid_new = seal(tmp.path(), "mid-new", 6000, 1, 50);
    let high = seal(tmp.path(), "high", 6000, 1, 200);
    import(&store, &own, Role::Sealed);
    import(&store, &low, Role::Relaying);
    import(&store, &mid_old, Role::Relaying);
    // Distinct added_at seconds, so "oldest" is well defined.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    import(&store, &mid_new, Role::Relaying);
    let per_bundle = store.record(&low.id).expect("record").held_bytes;
    let used = store.used_bytes().expect("used");
    // Taking `high` in must free one and a half bundles' worth: exactly
    // two bundles go.
    store.set_quota(Some(used - per_bundle / 2)).expect("quota");
    let report = import(&store, &high, Role::Relaying);
    assert!(report.complete, "{report:?}");
    let left: Vec<BundleId> = held_ids(&store);
    assert!(left.contains(&own.id), "own bundle evicted");
    assert!(left.contains(&high.id));
    assert!(!left.contains(&low.id), "lowest priority kept");
    assert!(!left.contains(&mid_old.id), "older of equal priority kept");
    assert!(
        left.contains(&mid_new.id),
        "newer of equal priority evicted first"
    );
    assert!(store.used_bytes().expect("used") <= store.quota().expect("q").expect("set"));

    // Nothing evictable left but `high` and `mid_new`, both needed for the
    // quota to fit another: a sealed bundle that cannot fit is refused and
    // nothing is evicted for it.
    store
        .set_quota(Some(store.used_bytes().expect("used") + 100))
        .expect("quota");
    let big = seal(tmp.path(), "big", 60_000, 1, 255);
    let before: Vec<BundleId> = held_ids(&store);
    match import_folder(&store, &big.folder, Role::Sealed, |_| {}) {
        Err(StoreError::QuotaFull { .. }) => {}
        other => panic!("expected QuotaFull, got {other:?}"),
    }
    let after: Vec<BundleId> = store
        .bundles()
        .expect("bundles")
        .iter()
        .map(|b| b.id)
        .filter(|id| *id != big.id)
        .collect();
    let mut b2 = before.clone();
    b2.retain(|id| *id != big.id);
    assert!(after.iter().all(|id| b2.contains(id)));
    assert!(after.contains(&own.id));
}

fn ack_secret_of(s: &Sealed, key: usize, dir: &Path) -> AckSecret {
    let out = dir.join(format!("opened-{key}-{}", s.id));
    open_folder(&s.folder, std::slice::from_ref(&s.keys[key]), &out)
        .expect("open")
        .ack_secret
}

#[test]
fn receipts_are_checked_and_the_last_one_frees_the_bundle() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = Store::open(&tmp.path().join("data")).expect("open");
    let s = seal(tmp.path(), "b", 12_000, 2, 100);
    import(&store, &s, Role::Relaying);
    assert!(matches!(
        store.add_receipt(&s.id, &AckSecret::random()),
        Err(StoreError::WrongPreimage { .. })
    ));
    let first = ack_secret_of(&s, 0, tmp.path());
    assert_eq!(
        store.add_receipt(&s.id, &first).expect("receipt"),
        ReceiptOutcome::Recorded { delivered: false }
    );
    assert_eq!(
        store.add_receipt(&s.id, &first).expect("again"),
        ReceiptOutcome::Duplicate
    );
    assert_eq!(store.record(&s.id).expect("record").receipt_count(), 1);
    assert!(store.used_bytes().expect("used") > 0);

    let second = ack_secret_of(&s, 1, tmp.path());
    assert_eq!(
        store.add_receipt(&s.id, &second).expect("receipt"),
        ReceiptOutcome::Recorded { delivered: true }
    );
    assert_eq!(store.used_bytes().expect("used"), 0, "chunks not freed");
    assert!(store.is_tombstoned(&s.id).expect("tombstone"));
    assert!(fs::read_dir(tmp.path().join("data/chunks"))
        .expect("chunks")
        .all(|shard| fs::read_dir(shard.expect("shard").path())
            .expect("dir")
            .count()
            == 0));
    assert!(matches!(
        import_folder(&store, &s.folder, Role::Relaying, |_| {}),
        Err(StoreError::Tombstoned { .. })
    ));
    assert_eq!(
        store.add_receipt(&s.id, &first).expect("late"),
        ReceiptOutcome::AlreadyDelivered
    );
    // The receipts outlive the bundle, as proof of delivery to pass on.
    assert_eq!(store.receipts(&s.id).expect("receipts").len(), 2);
    // Tombstones lapse with the bundle's expiry.
    let gc = store.collect_garbage(u64::MAX).expect("gc");
    assert_eq!(gc.tombstones_lapsed, 1);
}

#[test]
fn a_partial_folder_imports_what_it_has_and_completes_later() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = Store::open(&tmp.path().join("data")).expect("open");
    let s = seal(tmp.path(), "b", 30_000, 1, 100);
    // A copy of the folder with some payload chunks lost and one corrupted.
    let partial = tmp.path().join("partial");
    copy_dir(&s.folder, &partial);
    let folder = BundleFolder::new(&partial);
    let (d, _) = folder.read_descriptor().expect("descriptor");
    let (ids, _) = chapar_format::read_index(&d, &folder).expect("index");
    for id in &ids[..3] {
        fs::remove_file(folder.chunk_path(id)).expect("rm");
    }
    fs::write(folder.chunk_path(&ids[5]), b"flipped").expect("corrupt");

    let report = import(
        &store,
        &Sealed {
            folder: partial.clone(),
            input: s.input.clone(),
            id: s.id,
            keys: vec![],
        },
        Role::Relaying,
    );
    assert!(report.index_known);
    assert!(!report.complete);
    let mut missing = report.missing.clone();
    missing.sort();
    let mut expected = ids[..3].to_vec();
    expected.sort();
    assert_eq!(missing, expected);
    assert_eq!(report.corrupt, vec![ids[5]]);

    // What the store has still opens: export, then open (parity fills in
    // within limits: 4 chunks lost over stripes of 4+2 may be too many, so
    // only check the folder's contents).
    let out = tmp.path().join("export");
    let exported = export_folder(&store, &s.id, &out).expect("export");
    assert!(!exported.complete);
    assert_eq!(exported.missing, 4);

    let full = import(&store, &s, Role::Relaying);
    assert_eq!(full.stored, 4);
    assert!(full.complete);
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).expect("mkdir");
    for e in fs::read_dir(from).expect("read_dir") {
        let e = e.expect("entry");
        let dest = to.join(e.file_name());
        if e.path().is_dir() {
            copy_dir(&e.path(), &dest);
        } else {
            fs::copy(e.path(), dest).expect("copy");
        }
    }
}

#[test]
fn a_second_process_cannot_open_the_same_data_directory() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let _first = Store::open(tmp.path()).expect("open");
    match Store::open(tmp.path()) {
        Err(e @ StoreError::Locked { .. }) => {
            assert!(e.to_string().contains("another Chapar process"), "{e}")
        }
        other => panic!("expected Locked, got {other:?}"),
    }
}

#[test]
fn the_async_handle_stores_serves_and_reuses_chunk_buffers() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let s = seal(tmp.path(), "b", 5000, 1, 100);
    let folder = BundleFolder::new(&s.folder);
    let (d, descriptor_bytes) = folder.read_descriptor().expect("descriptor");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let handle = StoreHandle::new(Store::open(&tmp.path().join("data")).expect("open"));
        let (id, new) = handle
            .add_bundle(descriptor_bytes, Role::Relaying)
            .await
            .expect("add");
        assert!(new && id == s.id);
        let index: Vec<_> = d
            .index_chunks
            .iter()
            .map(|c| (*c, fs::read(folder.chunk_path(c)).expect("chunk")))
            .collect();
        let put = handle.put_chunks(index).await.expect("put");
        assert_eq!(put.stored.len(), d.index_chunks.len());
        // Index known: every payload chunk is now wanted.
        let missing = handle.missing_chunks(id).await.expect("missing");
        assert!(missing.len() > 5);
        let got = handle
            .get_chunk(d.index_chunks[0])
            .await
            .expect("get")
            .expect("present");
        assert!(d.index_chunks[0].matches(&got));

        // Chunk-sized buffers full of other bytes, as a relay's are after
        // a chunk is stored (these are refused: no bundle wants them).
        let stale = |fill: u8| {
            let mut b = Vec::with_capacity(1 << 20);
            b.resize(1 << 20, fill);
            (chapar_format::ChunkId::of(&b), b)
        };
        let put = handle
            .put_chunks(vec![stale(0xAA), stale(0xBB)])
            .await
            .expect("put");
        assert!(put.stored.is_empty());
        assert_eq!(handle.buffers().kept(), 2, "both buffers came back");
        let chunk = d.index_chunks[0];
        let got = handle
            .get_chunk(chunk)
            .await
            .expect("get")
            .expect("present");
        assert_eq!(handle.buffers().kept(), 1, "the read took one");
        assert!(got.capacity() >= 1 << 20, "read into a reused buffer");
        assert_eq!(got, fs::read(folder.chunk_path(&chunk)).expect("chunk"));
    });
}

#[test]
fn expired_bundles_are_collected_and_unwanted_chunks_refused() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = Store::in_memory().expect("store");
    let s = seal(tmp.path(), "b", 5000, 1, 100);
    import(&store, &s, Role::Relaying);
    let stray = chapar_format::ChunkId::of(b"stray");
    let put = store.put_chunks([(stray, b"stray".to_vec())]).expect("put");
    assert_eq!(put.unwanted, vec![stray]);
    let lie = store
        .put_chunks([(stray, b"other bytes".to_vec())])
        .expect("put");
    assert_eq!(lie.mismatched, vec![stray]);
    let gc = store.collect_garbage(u64::MAX).expect("gc");
    assert_eq!(gc.expired, vec![s.id]);
    assert_eq!(store.used_bytes().expect("used"), 0);
    assert!(store.bundles().expect("bundles").is_empty());
}

/// Expired bundles go first whatever their priority, then bundles some of
/// whose recipients have receipted, then by priority.
#[test]
fn quota_evicts_expired_then_partly_receipted_before_priority() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut store = Store::open(&tmp.path().join("data")).expect("open");
    let hour = std::time::Duration::from_secs(3600);
    let expiring = seal_expiring(tmp.path(), "expiring", 6000, 1, 255, hour);
    let receipted = seal(tmp.path(), "receipted", 6000, 2, 200);
    let low = seal(tmp.path(), "low", 6000, 1, 1);
    let incoming = seal(tmp.path(), "incoming", 6000, 1, 100);
    for s in [&expiring, &receipted, &low] {
        import(&store, s, Role::Relaying);
    }
    let secret = ack_secret_of(&receipted, 0, tmp.path());
    store.add_receipt(&receipted.id, &secret).expect("receipt");
    let per_bundle = store.record(&low.id).expect("record").held_bytes;
    // Two hours on: `expiring` has expired but has the highest priority.
    let later = chapar_store::now() + 2 * 3600;
    store.set_clock(move || later);
    store
        .set_quota(Some(store.used_bytes().expect("used") + per_bundle / 2))
        .expect("quota");
    import(&store, &incoming, Role::Relaying);
    let left: Vec<BundleId> = held_ids(&store);
    assert!(!left.contains(&expiring.id), "expired bundle kept");
    assert!(
        left.contains(&receipted.id) && left.contains(&low.id),
        "{left:?}"
    );

    // Next squeeze, freeing one bundle's worth: the partly receipted
    // bundle goes before the low-priority one.
    let one_more = seal(tmp.path(), "one-more", 100, 1, 100);
    let one_more_bytes: u64 = walk_files(&one_more.folder.join("chunks"))
        .iter()
        .map(|p| fs::metadata(p).expect("meta").len())
        .sum();
    store
        .set_quota(Some(
            store.used_bytes().expect("used") + one_more_bytes - per_bundle / 2,
        ))
        .expect("quota");
    import(&store, &one_more, Role::Relaying);
    let left: Vec<BundleId> = held_ids(&store);
    assert!(
        !left.contains(&receipted.id),
        "partly receipted bundle kept: {left:?}"
    );
    assert!(left.contains(&low.id));
}

fn walk_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).expect("read_dir") {
        let p = e.expect("entry").path();
        if p.is_dir() {
            out.extend(walk_files(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn a_folder_missing_up_to_parity_per_stripe_is_completed_from_parity() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = Store::open(&tmp.path().join("data")).expect("open");
    let s = seal(tmp.path(), "b", 30_000, 1, 100);
    let folder = BundleFolder::new(&s.folder);
    let (d, _) = folder.read_descriptor().expect("descriptor");
    let (ids, _) = chapar_format::read_index(&d, &folder).expect("index");
    let layout = d.payload_layout().expect("layout");
    // Two chunks (= parity) of every payload stripe: one data, one parity.
    let mut removed = 0;
    for stripe in 0..layout.stripes() {
        for slot in [
            chapar_format::Slot::Data(layout.stripe_data(stripe).start),
            chapar_format::Slot::Parity { stripe, index: 1 },
        ] {
            fs::remove_file(folder.chunk_path(&ids[layout.position(slot)])).expect("rm");
            removed += 1;
        }
    }
    let report = import(&store, &s, Role::Relaying);
    assert_eq!(report.rebuilt, removed, "{report:?}");
    assert!(report.complete && report.missing.is_empty());
    assert!(!store.fsck(false).expect("fsck").damaged());
    let out = tmp.path().join("export");
    export_folder(&store, &s.id, &out).expect("export");
    open_folder(&out, &s.keys, &tmp.path().join("opened")).expect("opens");
}

/// Ids of the bundles the store holds.
fn held_ids(store: &Store) -> Vec<BundleId> {
    store
        .bundles()
        .expect("bundles")
        .iter()
        .map(|b| b.id)
        .collect()
}

/// Sealing straight into a store gives the same bundle a sealed folder
/// would (it exports and opens byte for byte, fsck finds nothing), stages
/// nothing that outlives the seal, and a seal that fails leaves nothing.
fn sealing_into_the_store(store: Store, staging: Option<&Path>) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let left_in_staging = || staging.map_or(0, |d| fs::read_dir(d).expect("tmp").count());
    let stripe = (CHUNK * 4) as usize;
    for (i, size) in [0, 1, 1024, stripe + 1, 3 * stripe + 17]
        .into_iter()
        .enumerate()
    {
        let input = tmp.path().join(format!("s{i}-in"));
        fs::create_dir_all(&input).expect("mkdir");
        fs::write(input.join("evidence.bin"), bytes(size, i as u64)).expect("write");
        let key = age::x25519::Identity::generate();
        let mut opts = SealOptions::new(vec![key.to_public()]);
        opts.geometry = Geometry {
            chunk_size: CHUNK,
            data_per_stripe: 4,
            parity_per_stripe: 2,
        };
        let (sealed, report) =
            chapar_store::seal_into(&store, std::slice::from_ref(&input), &opts, Role::Sealed)
                .expect("seal into the store");
        assert!(
            report.complete && report.new_bundle,
            "size {size}: {report:?}"
        );
        assert!(report.missing.is_empty());
        let record = store.record(&sealed.bundle_id).expect("record");
        assert_eq!(record.role, Role::Sealed);
        assert_eq!(report.stored as u32, record.known_chunks, "size {size}");
        assert_eq!(left_in_staging(), 0, "size {size}: staged files left");
        let out = tmp.path().join(format!("export{i}"));
        assert!(
            export_folder(&store, &sealed.bundle_id, &out)
                .expect("export")
                .complete
        );
        let opened = tmp.path().join(format!("open{i}"));
        open_folder(&out, &[key], &opened).expect("opens");
        assert_eq!(
            fs::read(opened.join(format!("s{i}-in/evidence.bin"))).expect("read"),
            bytes(size, i as u64),
            "size {size}"
        );
    }
    assert!(!store.fsck(false).expect("fsck").damaged());

    let before = store.bundles().expect("bundles").len();
    let opts = SealOptions::new(vec![age::x25519::Identity::generate().to_public()]);
    let missing = tmp.path().join("no-such-input");
    let failed = chapar_store::seal_into(&store, &[missing], &opts, Role::Sealed);
    assert!(failed.is_err(), "sealing a missing path must fail");
    assert_eq!(store.bundles().expect("bundles").len(), before);
    assert_eq!(left_in_staging(), 0, "a failed seal left staged files");
}

#[test]
fn sealing_into_the_store_on_disk() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("open");
    sealing_into_the_store(store, Some(&dir.path().join("tmp")));
}

#[test]
fn sealing_into_the_store_in_memory() {
    sealing_into_the_store(Store::in_memory().expect("store"), None);
}

/// A relay that got most of a bundle over the network and can get no
/// more: parity says in advance whether it can finish on its own.
#[test]
fn parity_says_when_it_can_complete_a_stalled_bundle() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = Store::open(&tmp.path().join("data")).expect("open");
    let s = seal(tmp.path(), "b", 30_000, 1, 100);
    let folder = BundleFolder::new(&s.folder);
    let (d, descriptor_bytes) = folder.read_descriptor().expect("descriptor");
    let (ids, _) = chapar_format::read_index(&d, &folder).expect("index");
    let layout = d.payload_layout().expect("layout");
    let chunk =
        |id: &chapar_format::ChunkId| (*id, fs::read(folder.chunk_path(id)).expect("chunk"));
    store
        .add_bundle(&descriptor_bytes, Role::Relaying)
        .expect("descriptor");
    assert!(
        !store.parity_can_complete(&s.id).expect("ask"),
        "no index yet: nothing to judge by"
    );
    store
        .put_chunks(d.index_chunks.iter().map(chunk))
        .expect("index chunks");
    // Stripe 0 lacks three chunks (parity 2); every other stripe lacks one.
    let stripe0: Vec<usize> = [
        chapar_format::Slot::Data(0),
        chapar_format::Slot::Data(1),
        chapar_format::Slot::Parity {
            stripe: 0,
            index: 0,
        },
    ]
    .iter()
    .map(|slot| layout.position(*slot))
    .collect();
    let others: Vec<usize> = (1..layout.stripes())
        .map(|stripe| layout.position(chapar_format::Slot::Data(layout.stripe_data(stripe).start)))
        .collect();
    let held: Vec<_> = (0..ids.len())
        .filter(|p| !stripe0.contains(p) && !others.contains(p))
        .map(|p| chunk(&ids[p]))
        .collect();
    store.put_chunks(held).expect("most chunks");
    assert!(
        !store.parity_can_complete(&s.id).expect("ask"),
        "stripe 0 lost more than its parity"
    );
    store
        .put_chunks([chunk(&ids[stripe0[0]])])
        .expect("one more");
    assert!(store.parity_can_complete(&s.id).expect("ask"));
    let repair = store.repair_from_parity(&s.id).expect("repair");
    assert_eq!(repair.rebuilt, 2 + others.len(), "{repair:?}");
    assert_eq!(repair.unrecoverable_stripes, 0);
    assert!(store.record(&s.id).expect("record").complete());
    assert!(
        !store.parity_can_complete(&s.id).expect("ask"),
        "nothing left to rebuild"
    );
    assert!(!store.fsck(false).expect("fsck").damaged());
    let out = tmp.path().join("export");
    export_folder(&store, &s.id, &out).expect("export");
    open_folder(&out, &s.keys, &tmp.path().join("opened")).expect("opens");
}

/// Index chunks arrive a batch at a time: the index is read once every
/// one is held, not rebuilt from parity while the last is on its way (that
/// costs a relay the Reed–Solomon tables); one that never comes is rebuilt
/// from the index's parity when the bundle stalls.
#[test]
fn the_index_is_read_once_held_and_rebuilt_from_parity_only_when_stalled() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let s = seal(tmp.path(), "b", 30_000, 1, 100);
    let folder = BundleFolder::new(&s.folder);
    let (d, descriptor_bytes) = folder.read_descriptor().expect("descriptor");
    let index_layout = d.index_layout().expect("layout");
    assert!(
        d.index_chunks.len() >= 2 && index_layout.parity_per_stripe() >= 1,
        "the test needs an index that parity can rebuild: {} chunks",
        d.index_chunks.len()
    );
    let chunk =
        |id: &chapar_format::ChunkId| (*id, fs::read(folder.chunk_path(id)).expect("chunk"));
    let first = layout_position(&index_layout);
    let all_but_first = || {
        d.index_chunks
            .iter()
            .enumerate()
            .filter(|(p, _)| *p != first)
            .map(|(_, id)| chunk(id))
    };
    let known = |store: &Store| store.record(&s.id).expect("record").index_known;

    let store = Store::open(&tmp.path().join("one")).expect("open");
    store
        .add_bundle(&descriptor_bytes, Role::Relaying)
        .expect("descriptor");
    store.put_chunks(all_but_first()).expect("index chunks");
    assert!(
        !known(&store),
        "the index was read before its last chunk came"
    );
    store
        .put_chunks([chunk(&d.index_chunks[first])])
        .expect("the last index chunk");
    assert!(known(&store), "the index was not read once whole");

    let stalled = Store::open(&tmp.path().join("two")).expect("open");
    stalled
        .add_bundle(&descriptor_bytes, Role::Relaying)
        .expect("descriptor");
    stalled.put_chunks(all_but_first()).expect("index chunks");
    assert!(!known(&stalled));
    assert!(
        !stalled.parity_can_complete(&s.id).expect("ask"),
        "no payload chunk is held: parity cannot complete it"
    );
    assert!(known(&stalled), "a stalled bundle's index was not rebuilt");
    let missing = stalled.missing_chunks(&s.id).expect("missing");
    assert!(missing.contains(&d.index_chunks[first]));
    assert!(missing.len() > 1, "the payload chunks are now wanted");
}

/// The position of the index's first data chunk.
fn layout_position(layout: &chapar_format::Layout) -> usize {
    layout.position(chapar_format::Slot::Data(0))
}
