//! Importing a sealed bundle into a fresh store, against writing the same
//! bytes as plain files plus one `syncfs`, measured in the same run.
//!
//! `cargo bench -p chapar-store --bench import`
#![allow(missing_docs)]

use std::hint::black_box;

use chapar_bundle::{seal_to_folder, SealOptions};
use chapar_store::{import_folder, Role, Store};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

const SIZE: usize = 64 * 1024 * 1024;

fn import(c: &mut Criterion) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let input = tmp.path().join("in");
    std::fs::create_dir(&input).expect("mkdir");
    let mut data = vec![0u8; SIZE];
    blake3::Hasher::new().finalize_xof().fill(&mut data);
    std::fs::write(input.join("evidence.bin"), &data).expect("write");
    let key = age::x25519::Identity::generate();
    let bundle = tmp.path().join("bundle");
    seal_to_folder(&[input], &SealOptions::new(vec![key.to_public()]), &bundle).expect("seal");
    let chunk_files: Vec<_> = walk(&bundle.join("chunks"));
    let bytes: u64 = chunk_files
        .iter()
        .map(|p| std::fs::metadata(p).expect("meta").len())
        .sum();

    let mut g = c.benchmark_group("import");
    g.throughput(Throughput::Bytes(bytes));
    g.sample_size(10);
    let mut n = 0;
    g.bench_function("baseline_write_same_files_then_syncfs", |b| {
        b.iter(|| {
            n += 1;
            let dir = tmp.path().join(format!("raw{n}"));
            std::fs::create_dir(&dir).expect("mkdir");
            for (i, p) in chunk_files.iter().enumerate() {
                let bytes = std::fs::read(p).expect("read");
                std::fs::write(dir.join(i.to_string()), bytes).expect("write");
            }
            rustix::fs::syncfs(std::fs::File::open(&dir).expect("dir")).expect("syncfs");
            std::fs::remove_dir_all(&dir).expect("cleanup");
        })
    });
    g.bench_function("bundle_folder_into_fresh_store", |b| {
        b.iter(|| {
            n += 1;
            let dir = tmp.path().join(format!("store{n}"));
            let store = Store::open(&dir).expect("open");
            let report = import_folder(&store, &bundle, Role::Relaying, |_| {}).expect("import");
            assert!(report.complete);
            drop(store);
            std::fs::remove_dir_all(&dir).expect("cleanup");
            black_box(report.stored)
        })
    });
    g.finish();
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).expect("read_dir") {
        let p = e.expect("entry").path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

criterion_group!(benches, import);
criterion_main!(benches);
