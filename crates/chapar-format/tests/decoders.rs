//! Every decoder, fed arbitrary or mutated bytes, returns an error or a
//! value — never a panic. (The fuzz targets in fuzz/ explore further; this
//! runs on every `cargo test`.)

use chapar_format::{index, Descriptor, HeaderContents};
use proptest::prelude::*;

fn valid_descriptor_bytes() -> Vec<u8> {
    let geometry = chapar_format::Geometry::default();
    let index_size = index::encoded_len(7) as u32;
    Descriptor {
        priority: 1,
        expires_at: 3600,
        ciphertext_size: 3_000_000,
        ciphertext_blake3: [3; 32],
        geometry,
        index_size,
        index_chunks: (0..5u8).map(|i| chapar_format::ChunkId([i; 32])).collect(),
        ack_hashes: vec![[1; 32]],
        sealed_headers: vec![vec![9; 100]],
    }
    .encode()
    .expect("valid")
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn descriptor_decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = Descriptor::decode(&bytes);
    }

    #[test]
    fn mutated_descriptors_never_panic_and_reencode_exactly(
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6)
    ) {
        let mut bytes = valid_descriptor_bytes();
        for (at, value) in flips {
            let i = at.index(bytes.len());
            bytes[i] = value;
        }
        if let Ok(d) = Descriptor::decode(&bytes) {
            // Canonical: whatever decodes re-encodes to the same bytes.
            prop_assert_eq!(d.encode().expect("re-encodes"), bytes);
        }
    }

    #[test]
    fn index_decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300), n in 0usize..10) {
        let _ = index::decode(&bytes, n);
    }

    #[test]
    fn sealed_header_opener_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        let id = age::x25519::Identity::generate();
        let _ = HeaderContents::open(&bytes, std::slice::from_ref(&id));
    }
}
