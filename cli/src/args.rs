//! Command-line definitions (clap derive). Raw flags are turned into
//! validated settings in `commands`, never used raw.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Chapar: seal evidence for trusted recipients and carry it out through
/// a store-and-forward mesh, or on a USB stick.
#[derive(Debug, Parser)]
#[command(name = "chapar", version, about, long_about = None)]
pub struct Cli {
    /// Print one JSON object on stdout instead of human-readable text.
    #[arg(long, global = true)]
    pub json: bool,

    /// More log output on stderr (-v info, -vv debug). Never logs secrets.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a new age identity (secret key) file and print its recipient.
    Keygen(KeygenArgs),
    /// Seal files and folders for recipients into a bundle folder.
    Seal(SealArgs),
    /// Verify, repair, decrypt and extract a bundle folder.
    Open(OpenArgs),
    /// Rebuild the bundle's age file from its chunks (no key needed).
    Reassemble(ReassembleArgs),
    /// Show a bundle's public descriptor, and its sealed header given a key.
    Inspect(InspectArgs),
    /// Verify and take a bundle folder (whole or partial) into the store.
    Import(ImportArgs),
    /// Write what the store holds of a bundle as a bundle folder.
    Export(ExportArgs),
    /// List the bundles in the store: role, chunks, size, priority, expiry, receipts.
    Status(StatusArgs),
    /// Re-verify every stored chunk and the bookkeeping; --repair fixes what it finds.
    Fsck(FsckArgs),
    /// Seal files for recipients and hand them to the mesh; without files,
    /// resume sending what was sealed before.
    Send(SendArgs),
    /// Receive the bundles addressed to your keys, open them, and send
    /// receipts back.
    Receive(ReceiveArgs),
    /// Watch the whole path across a blackout on this machine: a sender,
    /// relays, a gateway open only in short windows, a recipient.
    Demo(DemoArgs),
}

/// `chapar demo`
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Size of the sample evidence.
    #[arg(long, value_name = "SIZE", default_value = "8MiB")]
    pub size: bytesize::ByteSize,

    /// How long the gateway's international link stays open each time.
    #[arg(long, value_name = "DURATION", default_value = "3s")]
    pub window: humantime::Duration,

    /// How long it stays closed in between.
    #[arg(long, value_name = "DURATION", default_value = "4s")]
    pub closed: humantime::Duration,

    /// The link's rate while open, each way.
    #[arg(long, value_name = "SIZE", default_value = "2MiB")]
    pub rate: bytesize::ByteSize,

    /// Give up after this long.
    #[arg(long, value_name = "DURATION", default_value = "110s")]
    pub timeout: humantime::Duration,

    /// Keep every node's data, the key and the opened files in this folder
    /// (otherwise a temporary folder, removed at the end).
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

/// Environment variable naming the data directory.
pub const DATA_DIR_ENV: &str = "CHAPAR_DATA_DIR";

/// Where the node's store lives.
#[derive(Debug, Args)]
pub struct DataDirArg {
    /// The data directory [default: the platform's data folder, e.g.
    /// ~/.local/share/chapar].
    #[arg(long, env = DATA_DIR_ENV, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
}

/// A bundle's role in this store.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum RoleArg {
    /// Passing through; evictable under the quota.
    Relaying,
    /// Sealed on this node; never evicted.
    Sealed,
    /// Being received for this node's own keys; never evicted.
    Receiving,
}

/// `chapar import`
#[derive(Debug, Args)]
pub struct ImportArgs {
    #[command(flatten)]
    pub data: DataDirArg,

    /// The bundle's role here.
    #[arg(long, value_enum, default_value = "relaying")]
    pub role: RoleArg,

    /// Set the store's byte budget (kept in the data directory), e.g. 50GiB.
    #[arg(long, value_name = "SIZE")]
    pub quota: Option<bytesize::ByteSize>,

    /// Print one JSON line on stderr each time a group of chunks becomes
    /// durable and acknowledged.
    #[arg(long)]
    pub progress: bool,

    /// The bundle folder.
    #[arg(value_name = "BUNDLE_DIR")]
    pub bundle: PathBuf,
}

/// `chapar export`
#[derive(Debug, Args)]
pub struct ExportArgs {
    #[command(flatten)]
    pub data: DataDirArg,

    /// The bundle id (64 hex digits).
    #[arg(value_name = "BUNDLE_ID")]
    pub bundle_id: String,

    /// The bundle folder to create (must not exist, or be empty).
    #[arg(short, long, value_name = "BUNDLE_DIR")]
    pub output: PathBuf,
}

/// `chapar status`
#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub data: DataDirArg,
}

/// `chapar fsck`
#[derive(Debug, Args)]
pub struct FsckArgs {
    #[command(flatten)]
    pub data: DataDirArg,

    /// Fix what is found: quarantine corrupt chunks and mark them missing,
    /// drop records of vanished chunks, adopt or remove orphans, recount.
    #[arg(long)]
    pub repair: bool,
}

/// `chapar keygen`
#[derive(Debug, Args)]
pub struct KeygenArgs {
    /// Where to write the identity; must not exist. Written with mode 0600.
    #[arg(short, long, value_name = "FILE")]
    pub output: PathBuf,
}

/// How to seal: recipients, note, priority, lifetime, geometry.
#[derive(Debug, Args)]
pub struct SealingArgs {
    /// A recipient's public key (age1…). Repeat for several recipients.
    #[arg(short = 'r', long = "recipient", value_name = "RECIPIENT")]
    pub recipients: Vec<String>,

    /// A file of recipients, one age1… per line (as `age -R` reads).
    #[arg(short = 'R', long = "recipients-file", value_name = "FILE")]
    pub recipients_files: Vec<PathBuf>,

    /// A note for the recipients (at most 1024 bytes).
    #[arg(long, default_value = "")]
    pub note: String,

    /// Replication priority, 0–255; higher travels first.
    #[arg(long, default_value_t = chapar_bundle::DEFAULT_PRIORITY)]
    pub priority: u8,

    /// How long relays keep the bundle, e.g. 30d, 12h.
    #[arg(long, value_name = "DURATION", default_value = "30d")]
    pub expires: humantime::Duration,

    /// Chunk size, e.g. 1MiB, 256KiB (1 KiB to 16 MiB, even).
    #[arg(long, value_name = "SIZE", default_value = "1MiB")]
    pub chunk_size: bytesize::ByteSize,

    /// Parity chunks per stripe of 16 data chunks (0–32). Any this many
    /// chunks of every stripe may be lost.
    #[arg(long, default_value_t = chapar_format::DEFAULT_PARITY_PER_STRIPE)]
    pub parity: u8,
}

/// `chapar seal`
#[derive(Debug, Args)]
pub struct SealArgs {
    #[command(flatten)]
    pub sealing: SealingArgs,

    /// The bundle folder to create (must not exist, or be empty).
    #[arg(short, long, value_name = "BUNDLE_DIR")]
    pub output: PathBuf,

    /// Files and folders to seal.
    #[arg(required = true, value_name = "PATH")]
    pub paths: Vec<PathBuf>,
}

/// How a node reaches the mesh.
#[derive(Debug, Args)]
pub struct NetArgs {
    /// A relay to connect to (repeatable): a share string a relay printed
    /// (https://…#PEER_ID), a bridge line (obfs4 HOST:PORT PEER_ID cert=…
    /// iat-mode=0), or a multiaddr with /p2p/<id>. Only share strings and
    /// bridge lines look like ordinary traffic to a censor.
    #[arg(long = "peer", visible_alias = "bridge", value_name = "ADDRESS", value_parser = parse_peer)]
    pub peers: Vec<libp2p::Multiaddr>,

    /// Listen on this address too (repeatable). By default this machine
    /// only dials out and stays quiet (stealth): nothing to probe, no
    /// agent string, no local-network announcements. Listening, like
    /// --mdns, makes it visible as a Chapar node.
    #[arg(long, value_name = "MULTIADDR")]
    pub listen: Vec<libp2p::Multiaddr>,

    /// Find and announce peers on the local network (mDNS); visible to
    /// anyone on that network.
    #[arg(long, conflicts_with = "no_mdns")]
    pub mdns: bool,

    /// Do not use mDNS (the default; kept for scripts that pass it).
    #[arg(long, hide = true)]
    pub no_mdns: bool,

    /// How often inventories are re-synced with each peer.
    #[arg(long, value_name = "DURATION", default_value = "2s")]
    pub sync_interval: humantime::Duration,

    /// How progress is shown: bars (on a terminal), lines (plain text),
    /// json (one JSON object per line on stderr), or quiet.
    #[arg(long, value_enum, default_value = "auto")]
    pub progress: ProgressMode,
}

/// A `--peer` value: a multiaddr, a share string or a bridge line.
fn parse_peer(text: &str) -> Result<libp2p::Multiaddr, chapar_transport::ShareError> {
    chapar_transport::parse_peer_addr(text)
}

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ProgressMode {
    /// Bars on a terminal, lines otherwise.
    Auto,
    /// Progress bars.
    Bars,
    /// A plain line at each change.
    Lines,
    /// One JSON object per line (on stderr).
    Json,
    /// Nothing until the end.
    Quiet,
}

/// When `chapar send` is done.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Until {
    /// Every chunk has left this machine at least once.
    HandedOff,
    /// At least --replicas connected relays hold the whole bundle.
    Replicated,
    /// Every recipient has opened it (their receipts came back).
    Delivered,
}

/// `chapar send`
#[derive(Debug, Args)]
pub struct SendArgs {
    #[command(flatten)]
    pub data: DataDirArg,

    #[command(flatten)]
    pub sealing: SealingArgs,

    #[command(flatten)]
    pub net: NetArgs,

    /// When to stop.
    #[arg(long, value_enum, default_value = "replicated")]
    pub until: Until,

    /// Relays that must hold the whole bundle for --until replicated.
    #[arg(long, default_value_t = 2)]
    pub replicas: usize,

    /// Files and folders to seal and send. Without any, resume sending
    /// the bundles sealed in this data directory that are not done yet.
    #[arg(value_name = "PATH")]
    pub paths: Vec<PathBuf>,
}

/// `chapar receive`
#[derive(Debug, Args)]
pub struct ReceiveArgs {
    #[command(flatten)]
    pub data: DataDirArg,

    #[command(flatten)]
    pub net: NetArgs,

    /// Identity file(s) to receive with (as age-keygen writes them).
    #[arg(short, long = "identity", value_name = "IDENTITY", required = true)]
    pub identities: Vec<PathBuf>,

    /// Folder to open bundles into, one subfolder per bundle id.
    #[arg(short, long, value_name = "OUT_DIR")]
    pub output: PathBuf,

    /// Exit after the first bundle is opened.
    #[arg(long)]
    pub once: bool,
}

/// `chapar open`
#[derive(Debug, Args)]
pub struct OpenArgs {
    /// Identity file(s) to open with (as age-keygen writes them).
    #[arg(short, long = "identity", value_name = "IDENTITY", required = true)]
    pub identities: Vec<PathBuf>,

    /// Folder to extract into (must not exist, or be empty).
    #[arg(short, long, value_name = "OUT_DIR")]
    pub output: PathBuf,

    /// The bundle folder.
    #[arg(value_name = "BUNDLE_DIR")]
    pub bundle: PathBuf,
}

/// `chapar reassemble`
#[derive(Debug, Args)]
pub struct ReassembleArgs {
    /// The bundle folder.
    #[arg(value_name = "BUNDLE_DIR")]
    pub bundle: PathBuf,

    /// The age file to write (must not exist).
    #[arg(short, long, value_name = "FILE")]
    pub output: PathBuf,
}

/// `chapar inspect`
#[derive(Debug, Args)]
pub struct InspectArgs {
    /// The bundle folder.
    #[arg(value_name = "BUNDLE_DIR")]
    pub bundle: PathBuf,

    /// Identity file(s): also open and show the sealed header.
    #[arg(short, long = "identity", value_name = "IDENTITY")]
    pub identities: Vec<PathBuf>,
}
