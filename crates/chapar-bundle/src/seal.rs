//! Sealing: files → tar → age → chunks and parity → descriptor.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use age::x25519::Recipient;
use chapar_format::{
    check_capacity, write_index, AckSecret, BundleId, ChunkSink, Descriptor, Geometry,
    HeaderContents, ParamError, EXPIRY_GRANULARITY_SECS, MAX_NOTE_BYTES, MAX_RECIPIENTS,
};
use rand::seq::SliceRandom;

use crate::error::BundleError;
use crate::folder::write_bundle_folder;
use crate::manifest::MAX_MANIFEST_BYTES;
use crate::pack;
use crate::pipeline::ChunkingPipe;

/// Default lifetime of a bundle on the relays.
pub const DEFAULT_EXPIRY: Duration = Duration::from_secs(30 * 24 * 3600);
/// Default priority (0–255, higher first).
pub const DEFAULT_PRIORITY: u8 = 128;

/// How to seal.
#[derive(Debug, Clone)]
pub struct SealOptions {
    /// Who can open the bundle (1 to 8).
    pub recipients: Vec<Recipient>,
    /// A short note for the recipients (at most 1024 bytes).
    pub note: String,
    /// Replication priority, higher first.
    pub priority: u8,
    /// How long relays keep the bundle.
    pub expires_in: Duration,
    /// Chunk size and stripe shape.
    pub geometry: Geometry,
}

impl SealOptions {
    /// Options for these recipients with every default.
    pub fn new(recipients: Vec<Recipient>) -> Self {
        Self {
            recipients,
            note: String::new(),
            priority: DEFAULT_PRIORITY,
            expires_in: DEFAULT_EXPIRY,
            geometry: Geometry::default(),
        }
    }

    fn validate(&self) -> Result<(), ParamError> {
        self.geometry.validate()?;
        if self.recipients.is_empty() || self.recipients.len() > MAX_RECIPIENTS {
            return Err(ParamError(format!(
                "{} recipients given; a bundle has 1 to {MAX_RECIPIENTS}",
                self.recipients.len()
            )));
        }
        let distinct: std::collections::HashSet<String> =
            self.recipients.iter().map(ToString::to_string).collect();
        if distinct.len() != self.recipients.len() {
            return Err(ParamError("the same recipient is given twice".into()));
        }
        if self.note.len() > MAX_NOTE_BYTES {
            return Err(ParamError(format!(
                "the note is {} bytes; at most {MAX_NOTE_BYTES} fit in the sealed header",
                self.note.len()
            )));
        }
        Ok(())
    }
}

/// What sealing produced.
#[derive(Debug, Clone)]
pub struct Sealed {
    /// The bundle id.
    pub bundle_id: BundleId,
    /// The descriptor.
    pub descriptor: Descriptor,
    /// Its canonical bytes.
    pub descriptor_bytes: Vec<u8>,
    /// Files sealed.
    pub file_count: u64,
    /// Plaintext bytes sealed.
    pub total_size: u64,
}

fn expiry(expires_in: Duration) -> u64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    now.saturating_add(expires_in.as_secs())
        .div_ceil(EXPIRY_GRANULARITY_SECS)
        .saturating_mul(EXPIRY_GRANULARITY_SECS)
}

/// Seals a payload written by `write_payload` (plaintext, normally a tar
/// archive) into chunks in `sink`. `write_payload` is given the sorted
/// ack hashes of the recipients, to seal inside the payload. `file_count`
/// and `total_size` go into the sealed headers. The building block of
/// [`seal_paths`]; exposed so nodes can seal straight into their store.
pub fn seal_stream<S, F>(
    opts: &SealOptions,
    sink: S,
    file_count: u64,
    total_size: u64,
    write_payload: F,
) -> Result<(Sealed, S), BundleError>
where
    S: ChunkSink + Send,
    F: FnOnce(&mut dyn Write, &[[u8; 32]]) -> Result<(), BundleError>,
{
    opts.validate()?;
    let secrets: Vec<AckSecret> = opts
        .recipients
        .iter()
        .map(|_| AckSecret::random())
        .collect();
    // Sorted, so the order says nothing about the order of the recipients.
    let mut ack_hashes: Vec<[u8; 32]> = secrets.iter().map(AckSecret::hash).collect();
    ack_hashes.sort_unstable();
    let encryptor =
        age::Encryptor::with_recipients(opts.recipients.iter().map(|r| r as &dyn age::Recipient))
            .map_err(|e| ParamError(format!("age refused the recipients: {e}")))?;
    let pipe_err = |source| BundleError::Io {
        path: PathBuf::from("<chunks>"),
        source,
    };
    let (chunked, mut sink) = std::thread::scope(|scope| {
        let pipe = ChunkingPipe::new(scope, opts.geometry, sink)?;
        let mut age_writer = encryptor.wrap_output(pipe).map_err(pipe_err)?;
        write_payload(&mut age_writer, &ack_hashes)?;
        let pipe = age_writer.finish().map_err(pipe_err)?;
        pipe.finish().map_err(pipe_err)
    })?;
    let (index_size, index_chunks) =
        write_index(opts.geometry, &chunked.ids, &mut sink).map_err(pipe_err)?;

    let mut sealed_headers = Vec::with_capacity(opts.recipients.len());
    for (recipient, ack_secret) in opts.recipients.iter().zip(secrets) {
        let contents = HeaderContents {
            ack_secret,
            ciphertext_blake3: chunked.blake3,
            file_count,
            total_size,
            note: opts.note.clone(),
        };
        sealed_headers.push(
            contents
                .seal(recipient)
                .map_err(|e| ParamError(e.to_string()))?,
        );
    }
    sealed_headers.shuffle(&mut rand::rngs::OsRng);

    let descriptor = Descriptor {
        priority: opts.priority,
        expires_at: expiry(opts.expires_in),
        ciphertext_size: chunked.size,
        ciphertext_blake3: chunked.blake3,
        geometry: opts.geometry,
        index_size,
        index_chunks,
        ack_hashes,
        sealed_headers,
    };
    let descriptor_bytes = descriptor.encode()?;
    let sealed = Sealed {
        bundle_id: BundleId::of(&descriptor_bytes),
        descriptor,
        descriptor_bytes,
        file_count,
        total_size,
    };
    Ok((sealed, sink))
}

/// An upper bound on the age ciphertext of `plan`: the archive, a tag per
/// 64 KiB segment, the nonce, and a generous header per recipient.
fn ciphertext_size_bound(plan: &pack::Plan, opts: &SealOptions) -> u64 {
    let archive = plan.archive_size_bound();
    archive + 16 * (archive / (64 * 1024) + 1) + 16 + 1024 * (opts.recipients.len() as u64 + 1)
}

/// Seals files and folders into chunks in `sink`.
pub fn seal_paths<S>(
    inputs: &[PathBuf],
    opts: &SealOptions,
    sink: S,
) -> Result<(Sealed, S), BundleError>
where
    S: ChunkSink + Send,
{
    opts.validate()?;
    let plan = pack::plan(inputs)?;
    // Refuse before encrypting anything if the bundle cannot fit the format.
    check_capacity(opts.geometry, ciphertext_size_bound(&plan, opts))?;
    if plan.manifest_size_bound() > MAX_MANIFEST_BYTES {
        return Err(ParamError(format!(
            "{} files are too many for one bundle (its manifest could pass the {MAX_MANIFEST_BYTES}-byte limit); seal them in several bundles",
            plan.file_count()
        ))
        .into());
    }
    let (file_count, total_size) = (plan.file_count(), plan.total_size());
    seal_stream(opts, sink, file_count, total_size, |out, ack_hashes| {
        pack::write_archive(&plan, &opts.note, ack_hashes, out).map(|_| ())
    })
}

/// Seals files and folders into a new bundle folder at `out`, which must
/// not exist (or be empty). Nothing appears at `out` unless sealing succeeds.
pub fn seal_to_folder(
    inputs: &[PathBuf],
    opts: &SealOptions,
    out: &Path,
) -> Result<Sealed, BundleError> {
    opts.validate()?;
    write_bundle_folder(out, |sink| {
        let (sealed, _) = seal_paths(inputs, opts, sink)?;
        Ok((sealed.descriptor_bytes.clone(), sealed))
    })
}
