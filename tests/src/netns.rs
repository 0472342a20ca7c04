//! A laboratory of Linux network namespaces for scenario tests: named
//! namespaces joined by veth pairs, processes started inside them with
//! their output in log files, and teardown of everything on every exit
//! path (a drop guard, plus a watchdog process if the test is killed).

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Whether this machine can run a namespace test named `test`, which
/// also needs each of `tools` (a command run with `-V`/`--version` and the
/// package that has it). Skips loudly, or fails under CI.
pub fn preflight(test: &str, tools: &[(&str, &str, &str)]) -> bool {
    let mut missing: Vec<String> = Vec::new();
    let uid = Command::new("id").arg("-u").output().ok();
    let root = uid.is_some_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    if !root {
        missing.push("root (network namespaces need CAP_SYS_ADMIN and CAP_NET_ADMIN)".to_owned());
    }
    let ip_netns = Command::new("ip")
        .args(["netns", "list"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ip_netns {
        missing.push("`ip netns` (apt-get install iproute2)".to_owned());
    }
    for (tool, flag, package) in tools {
        let works = Command::new(tool)
            .arg(flag)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !works {
            missing.push(format!("`{tool}` (apt-get install {package})"));
        }
    }
    if missing.is_empty() {
        return true;
    }
    let why = missing.join(", ");
    assert!(
        std::env::var_os("CI").is_none(),
        "the {test} test needs {why}, and CI must not skip it"
    );
    // Straight to the stderr handle: the test harness captures eprintln!
    // of passing tests, and a skip must be seen.
    let _ = writeln!(
        std::io::stderr(),
        "\n**************************************************************\n\
         SKIPPED: {test} needs {why}.\n\
         Run it as root on Linux with iproute2 to test the scenario.\n\
         **************************************************************\n"
    );
    false
}

/// Runs a command; panics with its stderr if it fails.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `ip ARGS…`.
pub fn ip(args: &[&str]) -> String {
    run(Command::new("ip").args(args))
}

/// Runs a command inside a namespace.
pub fn in_ns(ns: &str, args: &[&str]) -> String {
    run(Command::new("ip").args(["netns", "exec", ns]).args(args))
}

/// Builds `chapar` and `chapar-relay` (once per run of this test binary)
/// and returns their paths, beside this test's own target directory.
pub fn binaries() -> (PathBuf, PathBuf) {
    let exe = std::env::current_exe().expect("test executable");
    // target/<profile>/deps/blackout_netns-…
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>")
        .to_path_buf();
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root");
    let mut cmd = Command::new(env!("CARGO"));
    cmd.current_dir(workspace)
        .args(["build", "--quiet", "-p", "chapar-cli", "-p", "chapar-relay"]);
    if profile_dir.file_name().is_some_and(|n| n == "release") {
        cmd.arg("--release");
    }
    if let Some(target) = profile_dir.parent() {
        cmd.env("CARGO_TARGET_DIR", target);
    }
    let status = cmd.status().expect("cargo build runs");
    assert!(status.success(), "building chapar and chapar-relay failed");
    let (cli, relay) = (profile_dir.join("chapar"), profile_dir.join("chapar-relay"));
    assert!(cli.is_file() && relay.is_file(), "{cli:?} / {relay:?}");
    (cli, relay)
}

// ---------------------------------------------------------------- the lab

/// Our namespaces and processes. Dropping it (panics included) kills every
/// process it started and deletes the namespaces.
pub struct Lab {
    prefix: String,
    namespaces: Vec<String>,
    procs: BTreeMap<String, Child>,
    logs: PathBuf,
    stop: Arc<AtomicBool>,
    watchdog: Option<Child>,
}

/// Namespace names look like `chapar-<pid>-<nonce>-<role>`.
const NS_PREFIX: &str = "chapar-";

/// The shell commands that remove one namespace and everything in it.
fn teardown_script(namespaces: &[String]) -> String {
    let list = namespaces.join(" ");
    format!(
        "for ns in {list}; do \
           for p in $(ip netns pids \"$ns\" 2>/dev/null); do kill -9 \"$p\" 2>/dev/null; done; \
           ip netns del \"$ns\" 2>/dev/null; \
         done; true"
    )
}

/// Deletes namespaces left by runs whose process is gone (killed before
/// its drop guard and watchdog could clean up).
fn sweep_leftovers() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    let stale: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| {
            name.strip_prefix(NS_PREFIX)
                .and_then(|rest| rest.split('-').next())
                .and_then(|pid| pid.parse::<u32>().ok())
                .is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists())
        })
        .map(str::to_owned)
        .collect();
    if !stale.is_empty() {
        eprintln!("removing namespaces left by an earlier run: {stale:?}");
        let _ = Command::new("sh")
            .arg("-c")
            .arg(teardown_script(&stale))
            .status();
    }
}

impl Lab {
    /// Namespaces named for `roles` (each with loopback up, no IPv6 and
    /// no forwarding), logs under `logs`.
    pub fn new(logs: PathBuf, roles: &[&str]) -> Self {
        sweep_leftovers();
        let nonce = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos() % 100_000);
        let prefix = format!("{NS_PREFIX}{}-{nonce}", std::process::id());
        let namespaces: Vec<String> = roles
            .iter()
            .map(|role| format!("{prefix}-{role}"))
            .collect();
        fs::create_dir_all(&logs).expect("log dir");
        let mut lab = Self {
            prefix,
            namespaces: Vec::new(),
            procs: BTreeMap::new(),
            logs,
            stop: Arc::new(AtomicBool::new(false)),
            watchdog: None,
        };
        // If this process dies without unwinding (SIGKILL, abort), the
        // watchdog, in its own process group and deaf to Ctrl-C, removes
        // the namespaces and everything running in them.
        let watch = format!(
            "trap '' INT TERM HUP; while kill -0 {pid} 2>/dev/null; do sleep 1; done; {teardown}",
            pid = std::process::id(),
            teardown = teardown_script(&namespaces)
        );
        lab.watchdog = Command::new("sh")
            .arg("-c")
            .arg(watch)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .ok();
        for ns in &namespaces {
            ip(&["netns", "add", ns]);
            lab.namespaces.push(ns.clone());
            ip(&["-n", ns, "link", "set", "lo", "up"]);
            // No IPv6 chatter (router solicitations, MLD) on the counted link.
            in_ns(
                ns,
                &[
                    "sh",
                    "-c",
                    "echo 1 > /proc/sys/net/ipv6/conf/all/disable_ipv6; \
                     echo 1 > /proc/sys/net/ipv6/conf/default/disable_ipv6; \
                     echo 0 > /proc/sys/net/ipv4/ip_forward",
                ],
            );
        }
        lab
    }

    /// The name of namespace number `which` (in the order of `roles`).
    pub fn ns(&self, which: usize) -> &str {
        &self.namespaces[which]
    }

    /// One veth pair between two of our namespaces, addressed and up.
    pub fn link(&self, a: usize, a_dev: &str, a_ip: &str, b: usize, b_dev: &str, b_ip: &str) {
        let (na, nb) = (self.ns(a), self.ns(b));
        ip(&[
            "link", "add", a_dev, "netns", na, "type", "veth", "peer", "name", b_dev, "netns", nb,
        ]);
        for (ns, dev, addr) in [(na, a_dev, a_ip), (nb, b_dev, b_ip)] {
            ip(&["-n", ns, "addr", "add", &format!("{addr}/24"), "dev", dev]);
            ip(&["-n", ns, "link", "set", dev, "up"]);
        }
    }

    /// Where process `name` writes its stderr.
    pub fn log_path(&self, name: &str) -> PathBuf {
        self.logs.join(format!("{name}.log"))
    }

    /// Starts `program args…` in a namespace as `name`; stdout and stderr
    /// go to `<name>.out` and `<name>.log` (appended across restarts).
    pub fn spawn(&mut self, name: &str, ns: usize, program: &Path, args: &[String]) {
        let open = |path: PathBuf| {
            fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .expect("log file")
        };
        let out = open(self.logs.join(format!("{name}.out")));
        let mut err = open(self.log_path(name));
        let _ = writeln!(err, "==== {name} starts: {program:?} {}", args.join(" "));
        let child = Command::new("ip")
            .args(["netns", "exec", self.ns(ns)])
            .arg(program)
            .args(args)
            .env("CHAPAR_LOG", "info,chapar_mesh=debug")
            .env_remove("CHAPAR_DATA_DIR")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("{name} does not start: {e}"));
        // `ip netns exec` execs the program: this pid is the program's.
        self.procs.insert(name.to_owned(), child);
    }

    /// How process `name` exited, if it has.
    pub fn exited(&mut self, name: &str) -> Option<ExitStatus> {
        let child = self.procs.get_mut(name)?;
        child.try_wait().expect("try_wait")
    }

    /// SIGTERM, then waits for a clean exit.
    pub fn terminate(&mut self, name: &str) -> ExitStatus {
        let mut child = self.procs.remove(name).expect("running process");
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("{name} did not stop within 30 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL: gone for good, with whatever it held.
    pub fn kill(&mut self, name: &str) {
        let mut child = self.procs.remove(name).expect("running process");
        let _ = child.kill();
        let _ = child.wait();
    }

    /// One statistics counter of a device in a namespace.
    pub fn counter(&self, ns: usize, dev: &str, stat: &str) -> u64 {
        in_ns(
            self.ns(ns),
            &["cat", &format!("/sys/class/net/{dev}/statistics/{stat}")],
        )
        .trim()
        .parse()
        .expect("counter")
    }

    /// The last lines of every log, for a failure message.
    pub fn tail_logs(&self) -> String {
        let mut out = String::new();
        let Ok(entries) = fs::read_dir(&self.logs) else {
            return out;
        };
        let mut paths: Vec<PathBuf> = entries.filter_map(|e| Some(e.ok()?.path())).collect();
        paths.sort();
        for path in paths {
            let text = fs::read_to_string(&path).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(25)..];
            out.push_str(&format!(
                "\n---- {} (last {} lines)\n",
                path.display(),
                tail.len()
            ));
            for l in tail {
                out.push_str(l);
                out.push('\n');
            }
        }
        out
    }
}

impl Lab {
    /// Set when the lab is dropped: threads a test starts stop on it.
    pub fn stop_flag(&self) -> Arc<AtomicBool> {
        self.stop.clone()
    }

    /// Its namespace names.
    pub fn namespaces(&self) -> &[String] {
        &self.namespaces
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for (_, mut child) in std::mem::take(&mut self.procs) {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = Command::new("sh")
            .arg("-c")
            .arg(teardown_script(&self.namespaces))
            .status();
        if let Some(mut w) = self.watchdog.take() {
            let _ = w.kill();
            let _ = w.wait();
        }
        let left = Command::new("ip")
            .args(["netns", "list"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        if left.contains(&self.prefix) {
            eprintln!(
                "WARNING: namespaces {}-* are still there:\n{left}",
                self.prefix
            );
        }
    }
}
