//! A `pulse` server started by the benchmark: its own process, its own
//! database URL and JWT secret, stopped with SIGTERM when the run ends.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use tokio::process::{Child, Command};

/// Linux reports process CPU time in clock ticks of 1/100 s.
const CLOCK_TICKS_PER_SECOND: f64 = 100.0;

#[derive(Clone, Debug, clap::Args)]
pub struct ServerArgs {
    /// The `pulse` binary to run (build it with `cargo build --release`).
    #[arg(long, default_value = "target/release/pulse")]
    pub pulse: PathBuf,
    /// Database for the server; a PostgreSQL URL or a SQLite one.
    #[arg(long, env = "PULSE_DATABASE_URL")]
    pub database_url: String,
    /// Redis for the server; none: the in-process cache and bus.
    #[arg(long, env = "PULSE_REDIS_URL")]
    pub redis_url: Option<String>,
    /// Address the server listens on.
    #[arg(long, default_value = "127.0.0.1:18087")]
    pub listen: String,
    /// Extra `NAME=VALUE` environment for the server (repeatable), e.g.
    /// `--server-env PULSE_INGEST_WRITERS=4`.
    #[arg(long = "server-env", value_parser = parse_env)]
    pub server_env: Vec<(String, String)>,
}

fn parse_env(raw: &str) -> Result<(String, String), String> {
    raw.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("`{raw}` is not NAME=VALUE"))
}

pub struct Server {
    child: Child,
    pid: u32,
    pub base: String,
}

impl ServerArgs {
    fn command(&self) -> Command {
        let mut cmd = Command::new(&self.pulse);
        cmd.env("PULSE_DATABASE_URL", &self.database_url)
            .env("PULSE_JWT_SECRET", "pulse-bench-secret-not-for-production")
            .env("PULSE_DEMO", "0")
            .env("PULSE_LOG", "warn")
            .env_remove("PULSE_REDIS_URL")
            .kill_on_drop(true);
        if let Some(redis) = &self.redis_url {
            cmd.env("PULSE_REDIS_URL", redis);
        }
        for (k, v) in &self.server_env {
            cmd.env(k, v);
        }
        cmd
    }

    /// Runs `pulse seed-demo` so the demo tenants (and their 100k events
    /// each) exist; a no-op when they already do.
    pub async fn seed_demo(&self) -> anyhow::Result<()> {
        let out = self
            .command()
            .arg("seed-demo")
            .stdout(Stdio::null())
            .output()
            .await
            .with_context(|| format!("cannot run {}", self.pulse.display()))?;
        if !out.status.success() {
            bail!("seed-demo failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    }

    /// A token from `pulse token`, signed with the bench secret.
    pub async fn token(&self, tenant: &str, role: &str) -> anyhow::Result<String> {
        self.token_for(tenant, role, None).await
    }

    /// A token for `user` (an email), or a service token without one.
    pub async fn token_for(
        &self,
        tenant: &str,
        role: &str,
        user: Option<&str>,
    ) -> anyhow::Result<String> {
        let mut cmd = self.command();
        cmd.args(["token", "--tenant", tenant, "--role", role, "--ttl", "2h"]);
        if let Some(user) = user {
            cmd.args(["--user", user]);
        }
        let out = cmd.output().await?;
        if !out.status.success() {
            bail!(
                "pulse token failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8(out.stdout)?.trim().to_owned())
    }

    /// Creates tenant `slug` with `pulse tenant create` (which applies the
    /// migrations first); an existing slug is left as it is.
    pub async fn create_tenant(&self, slug: &str, name: &str) -> anyhow::Result<()> {
        let out = self
            .command()
            .args(["tenant", "create", "--slug", slug, "--name", name])
            .stdout(Stdio::null())
            .output()
            .await
            .with_context(|| format!("cannot run {}", self.pulse.display()))?;
        if !out.status.success() {
            bail!(
                "pulse tenant create failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// The token `/metrics` wants, if any: `PULSE_METRICS_TOKEN` as the
    /// server gets it (it inherits the environment, `--server-env` over it).
    pub fn metrics_token(&self) -> Option<String> {
        self.server_env
            .iter()
            .rev()
            .find(|(k, _)| k == "PULSE_METRICS_TOKEN")
            .map(|(_, v)| v.clone())
            .or_else(|| std::env::var("PULSE_METRICS_TOKEN").ok())
            .filter(|t| !t.is_empty())
    }

    pub async fn start(&self) -> anyhow::Result<Server> {
        let child = self
            .command()
            .args(["serve", "--listen", &self.listen])
            .stdout(Stdio::null())
            .spawn()
            .with_context(|| format!("cannot start {}", self.pulse.display()))?;
        let pid = child.id().context("the server exited at once")?;
        let server = Server {
            child,
            pid,
            base: format!("http://{}", self.listen),
        };
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Ok(r) = client.get(format!("{}/readyz", server.base)).send().await
                && r.status().is_success()
            {
                return Ok(server);
            }
            if Instant::now() > deadline {
                bail!("the server did not become ready within 120 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Server {
    /// User plus system CPU seconds the server has used so far.
    pub fn cpu_seconds(&self) -> anyhow::Result<f64> {
        cpu_seconds_of(&self.pid.to_string())
    }

    /// Resident set size in MiB.
    pub fn rss_mib(&self) -> anyhow::Result<f64> {
        rss_mib_of(&self.pid.to_string())
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// SIGTERM, then wait for the graceful shutdown.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status()
            .await?;
        tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await??;
        Ok(())
    }
}

/// User plus system CPU seconds process `pid` (or `self`) has used so far.
pub fn cpu_seconds_of(pid: &str) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the parenthesised command name; utime and stime are
    // the 14th and 15th fields of the whole line.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| -> anyhow::Result<f64> {
        Ok(fields.get(i).context("short /proc stat")?.parse::<f64>()?)
    };
    Ok((ticks(11)? + ticks(12)?) / CLOCK_TICKS_PER_SECOND)
}

/// Resident set size (`VmRSS`) of process `pid` (or `self`) in MiB.
pub fn rss_mib_of(pid: &str) -> anyhow::Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .context("no VmRSS")?
        .parse::<f64>()?;
    Ok(kib / 1024.0)
}
