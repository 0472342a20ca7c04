//! The subcommands: validate settings, call the library, build a report.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use bytesize::ByteSize;
use chapar_bundle::keys;
use chapar_bundle::{BundleFolder, SealOptions};
use chapar_format::{ChunkSource, Descriptor, Geometry, HeaderContents, DEFAULT_DATA_PER_STRIPE};
use serde_json::{json, Value};

use crate::args::{
    Command, InspectArgs, KeygenArgs, OpenArgs, ReassembleArgs, SealArgs, SealingArgs,
};

/// What a command has to say: text for people, one JSON object for scripts.
pub struct Report {
    pub stdout: String,
    pub stderr: String,
    pub json: Value,
}

pub fn run(command: Command) -> Result<Report> {
    match command {
        Command::Keygen(a) => keygen(a),
        Command::Seal(a) => seal(a),
        Command::Open(a) => open(a),
        Command::Reassemble(a) => reassemble(a),
        Command::Inspect(a) => inspect(a),
        Command::Import(a) => crate::store_commands::import(a),
        Command::Export(a) => crate::store_commands::export(a),
        Command::Status(a) => crate::store_commands::status(a),
        Command::Fsck(a) => crate::store_commands::fsck(a),
        Command::Send(a) => crate::send::send(a),
        Command::Receive(a) => crate::receive::receive(a),
        Command::Demo(a) => crate::demo::demo(a),
    }
}

fn keygen(a: KeygenArgs) -> Result<Report> {
    let recipient = keys::generate_identity_file(&a.output)?;
    Ok(Report {
        stdout: format!("{recipient}\n"),
        stderr: format!(
            "wrote a new identity to {} (mode 0600): keep it secret; give out the public key above\n",
            a.output.display()
        ),
        json: json!({ "ok": true, "recipient": recipient.to_string(), "identity_file": a.output }),
    })
}

pub fn load_identities(paths: &[PathBuf]) -> Result<Vec<age::x25519::Identity>> {
    let mut all = Vec::new();
    for path in paths {
        all.extend(keys::load_identities(path)?);
    }
    Ok(all)
}

/// The sealing options the flags describe.
pub fn seal_options(a: &SealingArgs) -> Result<SealOptions> {
    let mut recipients = a
        .recipients
        .iter()
        .map(|r| keys::parse_recipient(r))
        .collect::<Result<Vec<_>, _>>()?;
    for file in &a.recipients_files {
        recipients.extend(keys::load_recipients_file(file)?);
    }
    if recipients.is_empty() {
        bail!("no recipients: give at least one -r age1… or -R FILE");
    }
    let chunk_size = u32::try_from(a.chunk_size.as_u64())
        .with_context(|| format!("chunk size {} is too large", a.chunk_size))?;
    Ok(SealOptions {
        recipients,
        note: a.note.clone(),
        priority: a.priority,
        expires_in: a.expires.into(),
        geometry: Geometry {
            chunk_size,
            data_per_stripe: DEFAULT_DATA_PER_STRIPE,
            parity_per_stripe: a.parity,
        },
    })
}

fn seal(a: SealArgs) -> Result<Report> {
    let opts = seal_options(&a.sealing)?;
    let sealed = chapar_bundle::seal_to_folder(&a.paths, &opts, &a.output)?;
    let d = &sealed.descriptor;
    let layout = d.payload_layout()?;
    let json = json!({
        "ok": true,
        "bundle_id": sealed.bundle_id.to_hex(),
        "ciphertext_blake3": hex::encode(d.ciphertext_blake3),
        "ciphertext_size": d.ciphertext_size,
        "files": sealed.file_count,
        "total_size": sealed.total_size,
        "data_chunks": layout.data_chunks(),
        "parity_chunks": layout.total_chunks() - layout.data_chunks(),
        "index_chunks": d.index_chunks.len(),
        "descriptor_size": sealed.descriptor_bytes.len(),
        "expires_at": d.expires_at,
        "output": a.output,
    });
    Ok(Report {
        stdout: format!("{}\n", sealed.bundle_id),
        stderr: format!(
            "sealed {} file(s), {} → {} ({} data + {} parity + {} index chunks)\n",
            sealed.file_count,
            ByteSize(sealed.total_size),
            a.output.display(),
            layout.data_chunks(),
            layout.total_chunks() - layout.data_chunks(),
            d.index_chunks.len(),
        ),
        json,
    })
}

fn open(a: OpenArgs) -> Result<Report> {
    let identities = load_identities(&a.identities)?;
    let opened = chapar_bundle::open_folder(&a.bundle, &identities, &a.output)?;
    let total = opened.manifest.total_size();
    let mut stderr = format!(
        "opened {} file(s), {}, into {}; every file matches the manifest\n",
        opened.manifest.files.len(),
        ByteSize(total),
        a.output.display()
    );
    if !opened.repairs.is_empty() {
        stderr.push_str(&format!(
            "rebuilt {} missing or corrupt chunk(s) from parity\n",
            opened.repairs.len()
        ));
    }
    if !opened.note.is_empty() {
        stderr.push_str(&format!("note: {}\n", opened.note));
    }
    Ok(Report {
        stdout: format!("{}\n", a.output.display()),
        stderr,
        json: json!({
            "ok": true,
            "bundle_id": opened.bundle_id.to_hex(),
            "files": opened.manifest.files.len(),
            "total_size": total,
            "note": opened.note,
            "repaired_chunks": opened.repairs.len(),
            "output": a.output,
        }),
    })
}

fn reassemble(a: ReassembleArgs) -> Result<Report> {
    let r = chapar_bundle::reassemble_to_file(&a.bundle, &a.output)?;
    Ok(Report {
        stdout: format!("{}\n", a.output.display()),
        stderr: format!(
            "wrote {} of age ciphertext; BLAKE3 {} matches the descriptor{}\n",
            ByteSize(r.size),
            hex::encode(r.blake3),
            if r.repairs.is_empty() {
                String::new()
            } else {
                format!("; rebuilt {} chunk(s) from parity", r.repairs.len())
            }
        ),
        json: json!({
            "ok": true,
            "bundle_id": r.bundle_id.to_hex(),
            "ciphertext_blake3": hex::encode(r.blake3),
            "size": r.size,
            "repaired_chunks": r.repairs.len(),
            "output": a.output,
        }),
    })
}

/// How many of the bundle's chunks the folder holds, if its index is readable.
fn chunk_presence(d: &Descriptor, folder: &BundleFolder) -> Option<(usize, usize)> {
    let (ids, _) = chapar_format::read_index(d, folder).ok()?;
    let all = ids.iter().chain(&d.index_chunks);
    let total = ids.len() + d.index_chunks.len();
    let present = all
        .filter(|id| folder.contains(id).unwrap_or(false))
        .count();
    Some((present, total))
}

fn inspect(a: InspectArgs) -> Result<Report> {
    let folder = BundleFolder::new(&a.bundle);
    let (d, bytes) = folder.read_descriptor()?;
    let id = chapar_format::BundleId::of(&bytes);
    let layout = d.payload_layout()?;
    let presence = chunk_presence(&d, &folder);
    let mut json = json!({
        "ok": true,
        "bundle_id": id.to_hex(),
        "descriptor_size": bytes.len(),
        "version": chapar_format::DESCRIPTOR_VERSION,
        "priority": d.priority,
        "expires_at": d.expires_at,
        "ciphertext_size": d.ciphertext_size,
        "ciphertext_blake3": hex::encode(d.ciphertext_blake3),
        "chunk_size": d.geometry.chunk_size,
        "data_per_stripe": d.geometry.data_per_stripe,
        "parity_per_stripe": d.geometry.parity_per_stripe,
        "stripes": layout.stripes(),
        "data_chunks": layout.data_chunks(),
        "parity_chunks": layout.total_chunks() - layout.data_chunks(),
        "index_size": d.index_size,
        "index_chunks": d.index_chunks.len(),
        "recipients": d.sealed_headers.len(),
        "ack_hashes": d.ack_hashes.iter().map(hex::encode).collect::<Vec<_>>(),
        "chunks_present": presence.map(|p| p.0),
        "chunks_total": presence.map(|p| p.1),
    });
    let expires = humantime::format_rfc3339_seconds(
        std::time::UNIX_EPOCH + std::time::Duration::from_secs(d.expires_at),
    );
    let mut text = format!(
        "bundle id          {id}\n\
         ciphertext BLAKE3  {}\n\
         ciphertext size    {} ({} bytes)\n\
         chunks             {} data + {} parity in {} stripe(s) of {}+{}, {} each; index {} chunk(s)\n\
         recipients         {} (anonymous)\n\
         priority           {}\n\
         expires            {expires}\n",
        hex::encode(d.ciphertext_blake3),
        ByteSize(d.ciphertext_size),
        d.ciphertext_size,
        layout.data_chunks(),
        layout.total_chunks() - layout.data_chunks(),
        layout.stripes(),
        d.geometry.data_per_stripe,
        d.geometry.parity_per_stripe,
        ByteSize(u64::from(d.geometry.chunk_size)),
        d.index_chunks.len(),
        d.sealed_headers.len(),
        d.priority,
    );
    match presence {
        Some((present, total)) => {
            text.push_str(&format!("in this folder     {present} of {total} chunks\n"))
        }
        None => text.push_str("in this folder     chunk index not readable here\n"),
    }
    if !a.identities.is_empty() {
        let identities = load_identities(&a.identities)?;
        let header: Option<HeaderContents> = match chapar_bundle::find_header(&d, &identities) {
            Ok(h) => Some(h),
            Err(chapar_bundle::BundleError::NotAddressed) => None,
            Err(e) => return Err(e.into()),
        };
        match &header {
            Some(h) => {
                text.push_str(&format!(
                    "addressed to you   yes\nfiles              {} ({})\nnote               {}\n",
                    h.file_count,
                    ByteSize(h.total_size),
                    h.note
                ));
                json["addressed"] = json!(true);
                json["files"] = json!(h.file_count);
                json["total_size"] = json!(h.total_size);
                json["note"] = json!(h.note);
            }
            None => {
                text.push_str("addressed to you   no\n");
                json["addressed"] = json!(false);
            }
        }
    }
    Ok(Report {
        stdout: text,
        stderr: String::new(),
        json,
    })
}
