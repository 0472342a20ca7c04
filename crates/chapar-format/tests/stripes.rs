//! Chunking and reassembly of raw streams across every boundary size, and
//! erasure recovery of any `parity` losses per stripe.

mod memory;

use std::io::{Read, Write};

use chapar_format::{
    rebuild_error, ChunkId, Geometry, Layout, Part, Reassembler, RebuildError, Slot, StripeWriter,
};
use memory::MemoryChunks;
use proptest::prelude::*;

const CHUNK: usize = 1024;

fn geometry(dps: u8, parity: u8) -> Geometry {
    Geometry {
        chunk_size: CHUNK as u32,
        data_per_stripe: dps,
        parity_per_stripe: parity,
    }
}

fn chunk_stream(geometry: Geometry, data: &[u8]) -> (Layout, Vec<ChunkId>, [u8; 32], MemoryChunks) {
    let mut w = StripeWriter::new(geometry, MemoryChunks::default()).expect("geometry");
    w.write_all(data).expect("write");
    let (chunked, store) = w.finish().expect("finish");
    let layout = geometry.layout(data.len() as u64).expect("layout");
    assert_eq!(chunked.ids.len(), layout.total_chunks());
    assert_eq!(chunked.blake3, *blake3::hash(data).as_bytes());
    (layout, chunked.ids, chunked.blake3, store)
}

fn read_back(
    layout: Layout,
    ids: &[ChunkId],
    whole: [u8; 32],
    store: &MemoryChunks,
) -> Result<Vec<u8>, RebuildError> {
    let mut r = Reassembler::new(layout, ids.to_vec(), Part::Payload, store, Some(whole))?;
    let mut out = Vec::new();
    match r.read_to_end(&mut out) {
        Ok(_) => Ok(out),
        Err(e) => Err(rebuild_error(e).expect("a rebuild error")),
    }
}

fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut out = vec![0u8; len];
    let mut h = blake3::Hasher::new();
    h.update(&seed.to_le_bytes());
    h.finalize_xof().fill(&mut out);
    out
}

/// Boundary sizes: 1, chunk−1, chunk, chunk+1, and around stripe edges.
fn boundary_sizes(dps: usize) -> Vec<usize> {
    let stripe = CHUNK * dps;
    vec![
        1,
        2,
        CHUNK - 1,
        CHUNK,
        CHUNK + 1,
        stripe - 1,
        stripe,
        stripe + 1,
        2 * stripe - 1,
        2 * stripe,
        2 * stripe + CHUNK + 1,
    ]
}

#[test]
fn every_boundary_size_round_trips() {
    for (dps, parity) in [(1, 0), (1, 3), (4, 2), (16, 4), (3, 0)] {
        for size in boundary_sizes(dps as usize) {
            let data = pseudo_random(size, size as u64);
            let (layout, ids, whole, store) = chunk_stream(geometry(dps, parity), &data);
            let back = read_back(layout, &ids, whole, &store).expect("reads back");
            assert_eq!(back, data, "size {size}, {dps}+{parity}");
        }
    }
}

#[test]
fn one_loss_more_than_parity_names_the_stripe() {
    let data = pseudo_random(CHUNK * 9 + 5, 1);
    let (layout, ids, whole, mut store) = chunk_stream(geometry(4, 2), &data);
    // Stripe 1: drop two data chunks and one parity chunk (3 > 2).
    for slot in [
        Slot::Data(4),
        Slot::Data(6),
        Slot::Parity {
            stripe: 1,
            index: 1,
        },
    ] {
        store.chunks.remove(&ids[layout.position(slot)]);
    }
    match read_back(layout, &ids, whole, &store) {
        Err(RebuildError::TooManyMissing { losses }) => {
            assert_eq!(losses.len(), 1);
            assert_eq!(
                (losses[0].stripe, losses[0].lost, losses[0].parity),
                (1, 3, 2)
            );
        }
        other => panic!("expected TooManyMissing, got {other:?}"),
    }
    let losses = chapar_format::scan(&layout, &ids, Part::Payload, &store).expect("scan");
    assert_eq!(losses.len(), 1);
}

#[test]
fn a_flipped_byte_is_detected_and_repaired() {
    let data = pseudo_random(CHUNK * 5, 2);
    let (layout, ids, whole, mut store) = chunk_stream(geometry(4, 1), &data);
    let victim = ids[layout.position(Slot::Data(2))];
    store.chunks.get_mut(&victim).expect("present")[17] ^= 0x40;
    let mut r =
        Reassembler::new(layout, ids.clone(), Part::Payload, &store, Some(whole)).expect("reader");
    let mut out = Vec::new();
    r.read_to_end(&mut out).expect("repaired");
    assert_eq!(out, data);
    assert_eq!(r.repairs().len(), 1);
    assert_eq!(r.repairs()[0].chunk, victim);
    assert_eq!(r.repairs()[0].damage, chapar_format::Damage::Corrupt);
}

#[test]
fn a_truncated_chunk_without_parity_is_an_error_not_short_output() {
    let data = pseudo_random(CHUNK * 3, 3);
    let (layout, ids, whole, mut store) = chunk_stream(geometry(16, 0), &data);
    store
        .chunks
        .get_mut(&ids[layout.position(Slot::Data(2))])
        .expect("present")
        .truncate(100);
    assert!(matches!(
        read_back(layout, &ids, whole, &store),
        Err(RebuildError::TooManyMissing { .. })
    ));
}

#[test]
fn chunks_that_do_not_add_up_to_the_descriptor_hash_are_refused() {
    let data = pseudo_random(CHUNK * 2, 4);
    let (layout, ids, _, store) = chunk_stream(geometry(16, 2), &data);
    assert!(matches!(
        read_back(layout, &ids, [9u8; 32], &store),
        Err(RebuildError::CiphertextMismatch { .. })
    ));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn survives_any_parity_losses_per_stripe(
        size in 1usize..(CHUNK * 40),
        dps in 1u8..8,
        parity in 0u8..5,
        seed in any::<u64>(),
        picks in proptest::collection::vec(any::<prop::sample::Index>(), 0..64),
    ) {
        let data = pseudo_random(size, seed);
        let (layout, ids, whole, mut store) = chunk_stream(geometry(dps, parity), &data);
        let per = layout.data_per_stripe() + layout.parity_per_stripe();
        let mut lost_per_stripe = vec![0usize; layout.stripes()];
        for pick in picks {
            let pos = pick.index(ids.len());
            let stripe = pos / per;
            if lost_per_stripe[stripe] < layout.parity_per_stripe()
                && store.chunks.remove(&ids[pos]).is_some()
            {
                lost_per_stripe[stripe] += 1;
            }
        }
        let back = read_back(layout, &ids, whole, &store).expect("rebuilds");
        prop_assert_eq!(back, data);
    }
}
