//! Pinned bytes of the descriptor, and its size bound. If one of these
//! fails, the wire format changed: bump the version and update
//! docs/FORMAT.md, never just the expected bytes.

use chapar_format::{
    index, AckSecret, BundleId, ChunkId, Descriptor, Geometry, HeaderContents, MAX_DESCRIPTOR_SIZE,
    MAX_NOTE_BYTES, MAX_RECIPIENTS,
};

fn id(n: u8) -> ChunkId {
    ChunkId([n; 32])
}

fn vector_descriptor() -> Descriptor {
    let geometry = Geometry::default(); // 1 MiB, 16 + 4
    let ciphertext_size = 3_000_000; // 3 data chunks, 4 parity: 7 ids
    let index_size = index::encoded_len(7) as u32; // 237 bytes: 1 data + 4 parity chunks
    Descriptor {
        priority: 200,
        expires_at: 1_800_000_000, // a whole hour: 500,000 × 3600
        ciphertext_size,
        ciphertext_blake3: [0xcc; 32],
        geometry,
        index_size,
        index_chunks: (1..=5).map(id).collect(),
        ack_hashes: vec![[0x11; 32], [0x22; 32]],
        sealed_headers: vec![vec![0xa1; 3], vec![0xb2; 2]],
    }
}

/// The expected encoding, field by field.
const VECTOR: &[(&str, &str)] = &[
    ("magic 'chapar/D'", "636861706172 2f44"),
    ("version", "01"),
    ("priority 200", "c8"),
    ("expires_at 1800000000 (u64 BE)", "000000006b49d200"),
    ("ciphertext_size 3000000", "00000000002dc6c0"),
    (
        "ciphertext_blake3",
        "cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc",
    ),
    ("chunk_size 1 MiB (u32 BE)", "00100000"),
    ("data_per_stripe 16", "10"),
    ("parity_per_stripe 4", "04"),
    ("index_size 237 (u32 BE)", "000000ed"),
    ("index chunk count 5", "05"),
    (
        "index chunk 1",
        "0101010101010101010101010101010101010101010101010101010101010101",
    ),
    (
        "index chunk 2",
        "0202020202020202020202020202020202020202020202020202020202020202",
    ),
    (
        "index chunk 3",
        "0303030303030303030303030303030303030303030303030303030303030303",
    ),
    (
        "index chunk 4",
        "0404040404040404040404040404040404040404040404040404040404040404",
    ),
    (
        "index chunk 5",
        "0505050505050505050505050505050505050505050505050505050505050505",
    ),
    ("recipient count 2", "02"),
    (
        "ack hash 1 (sorted)",
        "1111111111111111111111111111111111111111111111111111111111111111",
    ),
    (
        "ack hash 2",
        "2222222222222222222222222222222222222222222222222222222222222222",
    ),
    ("sealed header 1: length 3, bytes", "0003 a1a1a1"),
    ("sealed header 2: length 2, bytes", "0002 b2b2"),
];

fn expected_bytes() -> Vec<u8> {
    let hex: String = VECTOR
        .iter()
        .flat_map(|(_, h)| h.chars().filter(|c| !c.is_whitespace()))
        .collect();
    hex::decode(hex).expect("valid hex in the vector")
}

#[test]
fn descriptor_encoding_is_pinned() {
    let bytes = vector_descriptor().encode().expect("encodes");
    assert_eq!(hex::encode(&bytes), hex::encode(expected_bytes()));
    assert_eq!(
        Descriptor::decode(&bytes).expect("decodes"),
        vector_descriptor()
    );
}

#[test]
fn bundle_id_is_plain_blake3_of_the_descriptor() {
    let bytes = expected_bytes();
    let id = vector_descriptor().id().expect("id");
    assert_eq!(id, BundleId(*blake3::hash(&bytes).as_bytes()));
    // Checked independently: `b3sum` of the vector's bytes prints this.
    assert_eq!(
        id.to_hex(),
        "8d8a2ee0ecf3cee687b88d899e1bfb0b4a239db9c1ef8b221553849e36891681"
    );
}

#[test]
fn non_canonical_encodings_are_rejected() {
    let good = expected_bytes();
    let mut trailing = good.clone();
    trailing.push(0);
    assert!(Descriptor::decode(&trailing).is_err());
    let mut unsorted = vector_descriptor();
    unsorted.ack_hashes.reverse();
    assert!(unsorted.encode().is_err());
    let mut unrounded = vector_descriptor();
    unrounded.expires_at += 1;
    assert!(unrounded.encode().is_err());
    let mut version = good.clone();
    version[8] = 2;
    assert!(matches!(
        Descriptor::decode(&version),
        Err(chapar_format::DecodeError::UnsupportedVersion { found: 2, .. })
    ));
    for cut in 0..good.len() {
        assert!(
            Descriptor::decode(&good[..cut]).is_err(),
            "prefix of {cut} bytes decoded"
        );
    }
}

/// An 11 GB bundle with every limit at its maximum: eight recipients, the
/// longest note, parity 32. Its descriptor must still fit in 16 KiB.
#[test]
fn descriptor_of_an_11_gb_bundle_with_every_limit_maxed_stays_under_16_kib() {
    let geometry = Geometry {
        chunk_size: 1024 * 1024,
        data_per_stripe: 16,
        parity_per_stripe: 32,
    };
    let ciphertext_size = 11_000_000_000u64;
    let payload = geometry.layout(ciphertext_size).expect("layout");
    assert!(payload.data_chunks() > 10_000);
    let index_size = index::encoded_len(payload.total_chunks() as u64) as u32;
    let index_layout = geometry
        .layout(u64::from(index_size))
        .expect("index layout");
    let note = "n".repeat(MAX_NOTE_BYTES);
    let mut sealed_headers = Vec::new();
    let mut ack_hashes = Vec::new();
    for _ in 0..MAX_RECIPIENTS {
        let recipient = age::x25519::Identity::generate().to_public();
        let contents = HeaderContents {
            ack_secret: AckSecret::random(),
            ciphertext_blake3: [1; 32],
            file_count: u64::MAX,
            total_size: u64::MAX,
            note: note.clone(),
        };
        ack_hashes.push(contents.ack_secret.hash());
        sealed_headers.push(contents.seal(&recipient).expect("seal"));
    }
    ack_hashes.sort_unstable();
    let descriptor = Descriptor {
        priority: 255,
        expires_at: u64::MAX - u64::MAX % 3600,
        ciphertext_size,
        ciphertext_blake3: [2; 32],
        geometry,
        index_size,
        index_chunks: (0..index_layout.total_chunks())
            .map(|i| id(i as u8))
            .collect(),
        ack_hashes,
        sealed_headers,
    };
    let bytes = descriptor.encode().expect("fits");
    assert!(
        bytes.len() < MAX_DESCRIPTOR_SIZE,
        "descriptor is {} bytes",
        bytes.len()
    );
    println!(
        "11 GB bundle: {} payload chunks, index {} bytes in {} chunks, descriptor {} bytes",
        payload.total_chunks(),
        index_size,
        index_layout.total_chunks(),
        bytes.len()
    );
}
