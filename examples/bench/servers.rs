//! The two registries under test, each a child process on its own loopback port with an
//! empty temporary root: Dockyard (the release binary next to this example) and CNCF
//! Distribution (Debian's `docker-registry`, run by hand with filesystem storage).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::client::{Conn, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Dockyard,
    Distribution,
    /// Another (older) Dockyard binary, run the same way, to compare two builds in one run.
    Baseline,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Dockyard => "Dockyard",
            Kind::Distribution => "Distribution",
            Kind::Baseline => "Baseline",
        }
    }
}

/// The executable Debian's `docker-registry` package installs, if it is on PATH.
pub fn distribution_binary() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("docker-registry"))
        .find(|p| p.is_file())
}

/// A free loopback port. The external binaries take a port number, not a listener, so this
/// binds, reads the port and closes; the tiny race is retried by `Server::start`.
fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

pub struct Server {
    pub kind: Kind,
    pub addr: SocketAddr,
    /// Spawn to first 200 on `/v2/` of the first start, on the empty root.
    pub first_start: Duration,
    bin: PathBuf,
    /// Holds the data root, the config file and the log; removed on drop.
    dir: tempfile::TempDir,
    child: Option<Child>,
    /// A config of the caller's instead of the default one (`{ADDR}` and `{ROOT}` filled in).
    config: Option<String>,
}

impl Server {
    /// Starts a registry with an empty root and waits for its first 200 on `/v2/`.
    pub async fn start(kind: Kind, bin: &Path) -> Result<Server> {
        Server::start_with(kind, bin, None).await
    }

    /// [`Server::start`] with this config text (`{ADDR}`: the listen address, `{ROOT}`: the
    /// data root).
    pub async fn start_with(kind: Kind, bin: &Path, config: Option<String>) -> Result<Server> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("bench-{}-", kind.name().to_lowercase()))
            .tempdir()?;
        std::fs::create_dir_all(dir.path().join("root"))?;
        let mut s = Server {
            kind,
            addr: ([127, 0, 0, 1], free_port()?).into(),
            first_start: Duration::ZERO,
            bin: bin.to_path_buf(),
            dir,
            child: None,
            config,
        };
        let mut last_err = None;
        for _ in 0..3 {
            match s.launch().await {
                Ok(took) => {
                    s.first_start = took;
                    return Ok(s);
                }
                Err(e) => {
                    s.kill();
                    last_err = Some(e);
                    s.addr = ([127, 0, 0, 1], free_port()?).into();
                }
            }
        }
        Err(last_err.unwrap_or_else(|| "could not start".into()))
    }

    /// The binary it runs.
    pub fn bin(&self) -> &Path {
        &self.bin
    }

    pub fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    /// Spawns the process and returns the time from spawn to the first 200 on `/v2/`.
    pub async fn launch(&mut self) -> Result<Duration> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("server.log"))?;
        let mut cmd = match self.kind {
            Kind::Dockyard | Kind::Baseline => {
                let mut c = Command::new(&self.bin);
                c.arg("serve")
                    .arg("--listen")
                    .arg(self.addr.to_string())
                    .arg("--root")
                    .arg(self.root())
                    .arg("--config")
                    .arg(self.write_dockyard_config()?)
                    .env("RUST_LOG", "warn");
                c
            }
            Kind::Distribution => {
                let mut c = Command::new(&self.bin);
                // Its AWS SDK refuses any custom CA bundle with its own transport (a panic at
                // start), and this variable names one on some machines.
                c.arg("serve")
                    .arg(self.write_distribution_config()?)
                    .env_remove("AWS_CA_BUNDLE");
                c
            }
        };
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let t0 = Instant::now();
        self.child = Some(cmd.spawn()?);
        let up = self.wait_ready(t0).await;
        if up.is_err() {
            let log =
                std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default();
            return Err(format!(
                "{} did not come up: {}\n{}",
                self.kind.name(),
                up.err().map(|e| e.to_string()).unwrap_or_default(),
                log.lines().rev().take(10).collect::<Vec<_>>().join("\n")
            )
            .into());
        }
        up
    }

    /// The config file it was started with.
    pub fn config_path(&self) -> PathBuf {
        match self.kind {
            Kind::Distribution => self.dir.path().join("config.yml"),
            _ => self.dir.path().join("registry.toml"),
        }
    }

    fn custom_config(&self, path: &Path) -> Result<bool> {
        let Some(text) = &self.config else {
            return Ok(false);
        };
        let text = text
            .replace("{ADDR}", &self.addr.to_string())
            .replace("{ROOT}", &self.root().display().to_string());
        std::fs::write(path, text)?;
        Ok(true)
    }

    fn write_dockyard_config(&self) -> Result<PathBuf> {
        let path = self.dir.path().join("registry.toml");
        if self.custom_config(&path)? {
            return Ok(path);
        }
        // Defaults otherwise; warn-level logging as for Distribution.
        std::fs::write(&path, "[log]\nlevel = \"warn\"\n")?;
        Ok(path)
    }

    /// Filesystem storage, deletes enabled, the in-memory blob descriptor cache that the
    /// stock `registry:2` configuration enables, warn-level logs and no access log.
    fn write_distribution_config(&self) -> Result<PathBuf> {
        let path = self.dir.path().join("config.yml");
        if self.custom_config(&path)? {
            return Ok(path);
        }
        let yml = format!(
            "version: 0.1\n\
             log:\n  level: warn\n  accesslog:\n    disabled: true\n\
             storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n  \
             cache:\n    blobdescriptor: inmemory\n\
             http:\n  addr: {}\n",
            self.root().display(),
            self.addr
        );
        std::fs::write(&path, yml)?;
        Ok(path)
    }

    async fn wait_ready(&mut self, t0: Instant) -> Result<Duration> {
        let deadline = t0 + Duration::from_secs(30);
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                return Err(format!("exited with {status}").into());
            }
            if let Ok(mut c) = Conn::connect(self.addr).await {
                if let Ok(r) = c.get("/v2/", &[]).await {
                    if r.status == 200 {
                        return Ok(t0.elapsed());
                    }
                }
            }
            if Instant::now() > deadline {
                return Err("no 200 on /v2/ within 30 s".into());
            }
            tokio::time::sleep(Duration::from_micros(500)).await;
        }
    }

    /// SIGTERM and wait for the exit (a clean shutdown, as an operator would restart it).
    pub async fn stop(&mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if child.try_wait()?.is_some() {
                return Ok(());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("{} ignored SIGTERM for 20 s", self.kind.name()).into());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Stops the server and starts it again on the same root and port: the start-up time.
    pub async fn restart(&mut self) -> Result<Duration> {
        self.stop().await?;
        // The port is free again once the process has exited; both servers set SO_REUSEADDR.
        self.launch().await
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// (VmRSS, VmHWM) in KiB from /proc/<pid>/status.
    pub fn memory(&self) -> Result<(u64, u64)> {
        let pid = self.pid().ok_or("server not running")?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let field = |name: &str| -> Result<u64> {
            let line = status
                .lines()
                .find(|l| l.starts_with(name))
                .ok_or_else(|| format!("no {name} in /proc/{pid}/status"))?;
            Ok(line
                .split_whitespace()
                .nth(1)
                .ok_or("malformed status line")?
                .parse()?)
        };
        Ok((field("VmRSS:")?, field("VmHWM:")?))
    }

    /// User plus system CPU seconds the process has used (/proc/<pid>/stat), a measure of
    /// the server's work that other load on the machine does not inflate.
    pub fn cpu_seconds(&self) -> Result<f64> {
        let pid = self.pid().ok_or("server not running")?;
        process_cpu_seconds(&pid.to_string())
    }

    /// Resets the peak resident set (VmHWM) to the current one, so the next reading is the
    /// peak of what ran in between (`echo 5 > /proc/<pid>/clear_refs`, Linux 4.0+).
    pub fn reset_peak(&self) -> Result<()> {
        let pid = self.pid().ok_or("server not running")?;
        std::fs::write(format!("/proc/{pid}/clear_refs"), "5")?;
        Ok(())
    }

    /// Bytes under the root (to report what a run left on disk).
    pub fn disk_usage(&self) -> u64 {
        fn walk(p: &Path) -> u64 {
            let Ok(rd) = std::fs::read_dir(p) else {
                return 0;
            };
            rd.flatten()
                .map(|e| match e.file_type() {
                    Ok(t) if t.is_dir() => walk(&e.path()),
                    _ => e.metadata().map(|m| m.len()).unwrap_or(0),
                })
                .sum()
        }
        walk(&self.root())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// User plus system CPU seconds of process `pid` ("self" for the benchmark itself, i.e.
/// the load generator; the servers are other processes) from /proc/<pid>/stat.
fn process_cpu_seconds(pid: &str) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the parenthesised command: state is the first, utime the 12th.
    let rest = &stat[stat.rfind(')').ok_or("malformed stat")? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11).ok_or("short stat")?.parse::<f64>()?
        + f.get(12).ok_or("short stat")?.parse::<f64>()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Ok(ticks / hz)
}

/// CPU seconds the load generator (this process) has used.
pub fn own_cpu_seconds() -> Result<f64> {
    process_cpu_seconds("self")
}

/// (idle, total) clock ticks of all CPUs since boot, from the first line of /proc/stat
/// (idle counts iowait too: a CPU waiting on the disk could run something else).
pub fn machine_idle() -> Result<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let line = stat.lines().next().ok_or("empty /proc/stat")?;
    let ticks: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(str::parse)
        .collect::<std::result::Result<_, _>>()?;
    let idle = ticks.get(3).copied().unwrap_or(0) + ticks.get(4).copied().unwrap_or(0);
    Ok((idle, ticks.iter().sum()))
}
