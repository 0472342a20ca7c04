//! Seal and open throughput, with raw single-core ChaCha20-Poly1305 and
//! BLAKE3 measured in the same run as the baseline (these machines are
//! shared and noisy: compare ratios, not absolute numbers).
//!
//! `cargo bench -p chapar-bundle --bench seal_open`
#![allow(missing_docs)]

use std::hint::black_box;
use std::io;

use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use chapar_bundle::{open_folder, seal_stream, seal_to_folder, SealOptions};
use chapar_format::{ChunkId, ChunkSink};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

const SIZE: usize = 64 * 1024 * 1024;

fn payload() -> Vec<u8> {
    let mut out = vec![0u8; SIZE];
    blake3::Hasher::new().finalize_xof().fill(&mut out);
    out
}

/// Discards chunks: isolates the CPU work of sealing from disk speed.
struct NullSink(u64);

impl ChunkSink for NullSink {
    fn put(&mut self, _id: &ChunkId, bytes: &[u8]) -> io::Result<()> {
        self.0 += bytes.len() as u64;
        Ok(())
    }
}

fn baselines(c: &mut Criterion) {
    let data = payload();
    let mut g = c.benchmark_group("baseline");
    g.throughput(Throughput::Bytes(SIZE as u64));
    g.sample_size(10);
    let cipher = ChaCha20Poly1305::new(Key::from_slice(&[7u8; 32]));
    let mut buf = data.clone();
    g.bench_function("chacha20poly1305_1core_64KiB_segments", |b| {
        b.iter(|| {
            for (i, seg) in buf.chunks_mut(64 * 1024).enumerate() {
                let mut nonce = [0u8; 12];
                nonce[..8].copy_from_slice(&(i as u64).to_be_bytes());
                let tag = cipher
                    .encrypt_in_place_detached(Nonce::from_slice(&nonce), b"", seg)
                    .expect("encrypt");
                black_box(tag);
            }
        })
    });
    g.bench_function("blake3_1core", |b| {
        b.iter(|| black_box(blake3::hash(&data)))
    });
    g.bench_function("sha256_1core", |b| {
        b.iter(|| black_box(<sha2::Sha256 as sha2::Digest>::digest(&data)))
    });
    g.finish();

    // What the disk gives: the bytes a sealed bundle occupies (payload plus
    // 4/16 parity) written as 1 MiB files, then one syncfs.
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut g = c.benchmark_group("baseline");
    g.throughput(Throughput::Bytes(SIZE as u64));
    g.sample_size(10);
    let mut round = 0;
    g.bench_function("write_1MiB_files_plus_parity_then_syncfs", |b| {
        b.iter(|| {
            round += 1;
            let dir = tmp.path().join(format!("raw{round}"));
            std::fs::create_dir(&dir).expect("mkdir");
            let chunk = &data[..1024 * 1024];
            for i in 0..(SIZE / chunk.len()) * 5 / 4 {
                std::fs::write(dir.join(i.to_string()), chunk).expect("write");
            }
            let d = std::fs::File::open(&dir).expect("open dir");
            rustix::fs::syncfs(&d).expect("syncfs");
            std::fs::remove_dir_all(&dir).expect("cleanup");
        })
    });
    g.finish();
}

fn seal_and_open(c: &mut Criterion) {
    let data = payload();
    let key = age::x25519::Identity::generate();
    let opts = SealOptions::new(vec![key.to_public()]);
    let mut g = c.benchmark_group("seal");
    g.throughput(Throughput::Bytes(SIZE as u64));
    g.sample_size(10);
    g.bench_function("stream_to_null_sink", |b| {
        b.iter(|| {
            let (sealed, sink) = seal_stream(&opts, NullSink(0), 1, SIZE as u64, |w, _| {
                w.write_all(&data)
                    .map_err(|e| chapar_bundle::BundleError::BadArchive(e.to_string()))
            })
            .expect("seal");
            black_box((sealed.bundle_id, sink.0))
        })
    });
    let tmp = tempfile::tempdir().expect("tempdir");
    let input = tmp.path().join("evidence.bin");
    std::fs::write(&input, &data).expect("write");
    let mut n = 0;
    g.bench_function("file_to_bundle_folder", |b| {
        b.iter(|| {
            n += 1;
            let out = tmp.path().join(format!("bundle{n}"));
            let sealed = seal_to_folder(std::slice::from_ref(&input), &opts, &out).expect("seal");
            std::fs::remove_dir_all(&out).expect("cleanup");
            black_box(sealed.bundle_id)
        })
    });
    g.finish();

    let bundle = tmp.path().join("bundle");
    seal_to_folder(std::slice::from_ref(&input), &opts, &bundle).expect("seal");
    let mut g = c.benchmark_group("open");
    g.throughput(Throughput::Bytes(SIZE as u64));
    g.sample_size(10);
    let identities = [key];
    g.bench_function("bundle_folder_to_files", |b| {
        b.iter(|| {
            n += 1;
            let out = tmp.path().join(format!("out{n}"));
            let opened = open_folder(&bundle, &identities, &out).expect("open");
            std::fs::remove_dir_all(&out).expect("cleanup");
            black_box(opened.bundle_id)
        })
    });
    g.finish();
}

criterion_group!(benches, baselines, seal_and_open);
criterion_main!(benches);
