//! `builderd client`: builder.v1 from the command line, so nobody has to
//! hand-write curl. Speaks Connect (binary protobuf) through the generated
//! client; prints messages as proto3 JSON.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use builderd_service::proto::builder::v1::*;
use connectrpc::client::{ClientConfig, HttpClient};
use sha2::{Digest as _, Sha256};

#[derive(clap::Args)]
pub struct ClientArgs {
    /// The server: a URL, or HOST:PORT as `serve --listen` takes it (http).
    #[arg(
        long,
        global = true,
        env = "BUILDERD_SERVER",
        default_value = "http://127.0.0.1:8082"
    )]
    server: String,
    /// Your API key (from `builderd tenant create`).
    #[arg(long, global = true, env = "BUILDERD_KEY", hide_env_values = true)]
    key: Option<String>,
    /// Act for this tenant (operator keys).
    #[arg(long, global = true)]
    tenant: Option<String>,
    /// Print whole messages as JSON (status, wait, create --wait) instead of
    /// a summary.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: ClientCommand,
}

/// The build states, as `--state` takes them.
const STATES: [&str; 11] = [
    "queued",
    "running",
    "preparing",
    "downloading",
    "building",
    "optimizing",
    "packaging",
    "completed",
    "failed",
    "cancelled",
    "timeout",
];

/// `--server` as a URI: HOST:PORT (what `serve --listen` takes) means http.
fn server_uri(server: &str) -> Result<http::Uri> {
    let with_scheme = if server.contains("://") {
        server.to_string()
    } else {
        format!("http://{server}")
    };
    let uri: http::Uri = with_scheme
        .parse()
        .with_context(|| format!("--server {server:?} is not a URL or HOST:PORT"))?;
    match uri.scheme_str() {
        Some("http" | "https") if uri.host().is_some() => Ok(uri),
        _ => bail!("--server {server:?}: give http://HOST:PORT, https://HOST or HOST:PORT"),
    }
}

#[derive(clap::Subcommand)]
enum ClientCommand {
    /// Create a build of IMAGE, of an archive (--archive), or from a
    /// CreateBuild JSON file (--config).
    Create {
        #[arg(required_unless_present_any = ["config", "archive"])]
        image: Option<String>,
        /// A CreateBuildRequest as JSON ({"config": {...}}).
        #[arg(long, conflicts_with_all = ["image", "archive"])]
        config: Option<PathBuf>,
        /// An archive (zip, tar, tar.gz, tar.xz, tar.zst) to upload and
        /// build on a runtime's image.
        #[arg(long, value_name = "FILE", conflicts_with = "image")]
        archive: Option<PathBuf>,
        #[command(flatten)]
        strategy: ArchiveStrategyArgs,
        /// Wait for the build to end, with a progress bar.
        #[arg(long)]
        wait: bool,
    },
    /// Upload an archive for builds to name as upload://ID; prints the
    /// answer, then the id alone on the last line.
    Upload { file: PathBuf },
    /// A build's state and progress.
    Status { build_id: String },
    /// Wait for a build to end (exit 1 unless it completes).
    Wait { build_id: String },
    /// A build's log lines; with --follow, until it ends.
    Logs {
        build_id: String,
        #[arg(short, long)]
        follow: bool,
    },
    /// Download a completed build's image, checked against its sha256.
    Download {
        build_id: String,
        #[arg(short, long)]
        output: PathBuf,
        /// The compressed copy instead.
        #[arg(long)]
        compressed: bool,
    },
    /// Cancel a queued or running build.
    Cancel { build_id: String },
    /// Your builds, newest first.
    List {
        /// Only builds in this state (QUEUED, COMPLETED, FAILED, ...).
        #[arg(long)]
        state: Option<String>,
        #[arg(long, default_value = "50")]
        limit: i32,
    },
}

/// An archive build's strategy (`archive_strategy`).
#[derive(clap::Args)]
struct ArchiveStrategyArgs {
    /// The runtime the archive's files run on (node, python, static…).
    #[arg(long, requires = "archive")]
    runtime: Option<String>,
    /// The runtime's version.
    #[arg(long = "version", value_name = "VERSION", requires = "archive")]
    version: Option<String>,
    /// A file of the archive run with sh, or a shell command.
    #[arg(long, value_name = "SCRIPT", requires = "archive")]
    build_script: Option<String>,
    /// Where the files go in the image (default /app).
    #[arg(long, value_name = "DIR", requires = "archive")]
    output_path: Option<String>,
    /// A dependency file installed before the sources are copied (repeat
    /// for more; default: the ones found).
    #[arg(long = "dependency", value_name = "FILE", requires = "archive")]
    dependencies: Vec<String>,
    /// What the archive is (zip, tar, tar.gz, tar.xz, tar.zst); it must
    /// agree with its first bytes (default: told by them).
    #[arg(long, value_name = "TYPE", requires = "archive")]
    archive_type: Option<String>,
    /// The directory in the archive to build from (default: its top).
    #[arg(long, value_name = "DIR", requires = "archive")]
    build_context: Option<String>,
}

type Client = BuilderServiceClient<HttpClient>;

/// The server, the key and the tenant, for what goes around the generated
/// client (the upload's plain PUT).
struct Plain {
    uri: http::Uri,
    key: String,
    tenant: Option<String>,
}

impl Plain {
    /// Streams `file` to UploadArchive; answers the server's JSON answer.
    async fn upload(&self, file: &std::path::Path) -> Result<serde_json::Value> {
        let f = tokio::fs::File::open(file)
            .await
            .with_context(|| file.display().to_string())?;
        let size = f.metadata().await?.len();
        let body = reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::new(f));
        let url = format!(
            "{}/builder.v1.BuilderService/UploadArchive",
            self.uri.to_string().trim_end_matches('/')
        );
        let mut req = reqwest::Client::new()
            .put(url)
            .bearer_auth(&self.key)
            .header(http::header::CONTENT_TYPE, "application/octet-stream")
            .header(http::header::CONTENT_LENGTH, size)
            .body(body);
        if let Some(t) = &self.tenant {
            req = req.header("x-tenant-id", t);
        }
        let answer = req.send().await.context("uploading the archive")?;
        let status = answer.status();
        let text = answer.text().await?;
        let json: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("the server answered {status}: {text}"))?;
        if !status.is_success() {
            bail!(
                "the upload was refused ({}): {}",
                json["code"].as_str().unwrap_or("?"),
                json["message"].as_str().unwrap_or(&text)
            );
        }
        Ok(json)
    }
}

fn print_json<T: serde::Serialize>(v: &T) -> Result<()> {
    // An error, not a panic, when stdout is a closed pipe.
    writeln!(
        std::io::stdout().lock(),
        "{}",
        serde_json::to_string_pretty(v)?
    )?;
    Ok(())
}

pub fn run(args: ClientArgs) -> Result<std::process::ExitCode> {
    let uri = server_uri(&args.server)?;
    let key = args.key.context(
        "no API key: give --key KEY or set BUILDERD_KEY (builderd tenant create prints one)",
    )?;
    let mut config = ClientConfig::new(uri.clone())
        .with_default_header("authorization", format!("Bearer {key}"));
    if let Some(t) = &args.tenant {
        config = config.with_default_header("x-tenant-id", t.as_str());
    }
    let client = BuilderServiceClient::new(HttpClient::plaintext(), config);
    let out = Output { json: args.json };
    let plain = Plain {
        uri,
        key,
        tenant: args.tenant,
    };
    tokio::runtime::Runtime::new()?.block_on(command(&client, &plain, args.command, out))
}

/// How results are printed.
#[derive(Clone, Copy)]
struct Output {
    /// Whole messages as JSON; otherwise a summary.
    json: bool,
}

async fn command(
    client: &Client,
    plain: &Plain,
    command: ClientCommand,
    out: Output,
) -> Result<std::process::ExitCode> {
    let ok = std::process::ExitCode::SUCCESS;
    match command {
        ClientCommand::Upload { file } => {
            let answer = plain.upload(&file).await?;
            print_json(&answer)?;
            println!("{}", answer["uploadId"].as_str().unwrap_or_default());
            Ok(ok)
        }
        ClientCommand::Create {
            image,
            config,
            archive,
            strategy,
            wait: then_wait,
        } => {
            let request: CreateBuildRequest = match (image, config, archive) {
                (_, _, Some(file)) => {
                    let answer = plain.upload(&file).await?;
                    let id = answer["uploadId"].as_str().unwrap_or_default();
                    eprintln!(
                        "builderd: uploaded {} as {id} (sha256 {})",
                        file.display(),
                        answer["sha256"].as_str().unwrap_or_default()
                    );
                    let s = |v: &Option<String>| v.clone().unwrap_or_default();
                    serde_json::from_value(serde_json::json!({"config": {
                        "source": {"archive": {
                            "archive_url": format!("upload://{id}"),
                            "archive_type": s(&strategy.archive_type),
                            "build_context": s(&strategy.build_context),
                        }},
                        "strategy": {"archive_strategy": {
                            "runtime": s(&strategy.runtime),
                            "version": s(&strategy.version),
                            "build_script": s(&strategy.build_script),
                            "dependencies": strategy.dependencies,
                            "output_path": s(&strategy.output_path),
                        }},
                    }}))?
                }
                (_, Some(path), None) => serde_json::from_slice(
                    &std::fs::read(&path).with_context(|| path.display().to_string())?,
                )
                .with_context(|| format!("{}: not a CreateBuild request", path.display()))?,
                (Some(image), None, None) => serde_json::from_value(serde_json::json!({
                    "config": {"source": {"docker_image": {"image_uri": image}}}
                }))?,
                (None, None, None) => unreachable!("clap requires one"),
            };
            let created = client.create_build(request).await?.into_owned();
            eprintln!("builderd: created {}", created.build_id);
            println!("{}", created.build_id);
            if then_wait {
                return wait(client, &created.build_id, out).await;
            }
            Ok(ok)
        }
        ClientCommand::Status { build_id } => {
            let s = client
                .get_build_status(GetBuildStatusRequest {
                    build_id,
                    ..Default::default()
                })
                .await?
                .into_owned();
            if out.json {
                print_json(&s)?;
            } else {
                summary(&s);
            }
            Ok(ok)
        }
        ClientCommand::Wait { build_id } => wait(client, &build_id, out).await,
        ClientCommand::Logs { build_id, follow } => {
            let mut stream = client
                .stream_build_logs(StreamBuildLogsRequest {
                    build_id,
                    follow,
                    ..Default::default()
                })
                .await?;
            while let Some(line) = stream.message().await? {
                let l = line.to_owned_message();
                println!("{} {}: {}", l.level, l.component, l.message);
            }
            Ok(ok)
        }
        ClientCommand::Download {
            build_id,
            output,
            compressed,
        } => {
            download(client, build_id, &output, compressed).await?;
            Ok(ok)
        }
        ClientCommand::Cancel { build_id } => {
            let c = client
                .cancel_build(CancelBuildRequest {
                    build_id,
                    ..Default::default()
                })
                .await?
                .into_owned();
            print_json(&c)?;
            Ok(ok)
        }
        ClientCommand::List { state, limit } => {
            let state_filter = match state {
                None => BuildState::BUILD_STATE_UNSPECIFIED,
                Some(s) if STATES.contains(&s.to_ascii_lowercase().as_str()) => {
                    let name = format!("BUILD_STATE_{}", s.to_ascii_uppercase());
                    serde_json::from_value(serde_json::Value::String(name))
                        .with_context(|| format!("--state {s}: not a build state"))?
                }
                Some(s) => bail!(
                    "--state {s:?}: not a build state; use one of {}",
                    STATES.join(", ")
                ),
            };
            let l = client
                .list_builds(ListBuildsRequest {
                    state_filter: state_filter.into(),
                    page_size: limit,
                    ..Default::default()
                })
                .await?
                .into_owned();
            for b in &l.builds {
                let image = serde_json::to_value(&b.config)?["source"]["dockerImage"]["imageUri"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                println!("{}  {:?}  {image}", b.build_id, b.state);
            }
            eprintln!("builderd: {} of {} builds", l.builds.len(), l.total_count);
            Ok(ok)
        }
    }
}

/// A status in a few lines: the state, the error or the artifact.
fn summary(s: &GetBuildStatusResponse) {
    let state = serde_json::to_value(s.state)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    let state = state.trim_start_matches("BUILD_STATE_");
    let p = s.progress.as_option().cloned().unwrap_or_default();
    let mut line = format!("{} {state}", s.build_id);
    if !matches!(state, "COMPLETED" | "FAILED" | "CANCELLED" | "TIMEOUT") {
        line.push_str(&format!(" ({}%, {})", p.percent, p.stage));
    }
    if s.cache_hit {
        line.push_str(" (from the artifact cache)");
    }
    println!("{line}");
    if let Some(e) = s.error.as_option() {
        let category = serde_json::to_value(e.category)
            .ok()
            .and_then(|v| {
                v.as_str()
                    .map(|c| c.trim_start_matches("ERROR_CATEGORY_").to_string())
            })
            .unwrap_or_default();
        println!("  error ({category}): {}", e.message);
    }
    if let Some(a) = s.artifact.as_option() {
        println!(
            "  artifact: {} bytes, sha256 {}{}",
            a.size_bytes,
            a.sha256,
            if a.compression.is_empty() {
                String::new()
            } else {
                format!(", {} copy {} bytes", a.compression, a.compressed_size_bytes)
            }
        );
        println!("  boot with: {}", a.kernel_cmdline);
    }
    for r in &s.retries {
        println!("  retry {} ({}): {}", r.attempt, r.cause, r.message);
    }
}

/// Polls the status (a bar on a terminal) until the build ends.
async fn wait(client: &Client, build_id: &str, out: Output) -> Result<std::process::ExitCode> {
    let bar = crate::progress::Bar::percent("queued");
    loop {
        let s = client
            .get_build_status(GetBuildStatusRequest {
                build_id: build_id.to_string(),
                ..Default::default()
            })
            .await?
            .into_owned();
        let state = s
            .state
            .as_known()
            .unwrap_or(BuildState::BUILD_STATE_UNSPECIFIED);
        let p = s.progress.as_option().cloned().unwrap_or_default();
        bar.show(p.percent as u64, &p.stage);
        let done = matches!(
            state,
            BuildState::BUILD_STATE_COMPLETED
                | BuildState::BUILD_STATE_FAILED
                | BuildState::BUILD_STATE_CANCELLED
                | BuildState::BUILD_STATE_TIMEOUT
        );
        if done {
            bar.finish();
            if out.json {
                print_json(&s)?;
            } else {
                summary(&s);
            }
            return Ok(if state == BuildState::BUILD_STATE_COMPLETED {
                std::process::ExitCode::SUCCESS
            } else {
                if let Some(e) = s.error.as_option() {
                    eprintln!(
                        "builderd: build {build_id}: {:?}: {}",
                        e.category, e.message
                    );
                }
                std::process::ExitCode::FAILURE
            });
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn download(
    client: &Client,
    build_id: String,
    output: &std::path::Path,
    compressed: bool,
) -> Result<()> {
    let mut stream = client
        .get_build_artifact(GetBuildArtifactRequest {
            build_id,
            compressed,
            ..Default::default()
        })
        .await?;
    let pending = builderd_build::Pending::new(output)?;
    let mut file = std::io::BufWriter::new(pending.file()?);
    let mut hash = Sha256::new();
    let mut expected = String::new();
    let mut bar = None;
    while let Some(chunk) = stream.message().await? {
        let c = chunk.to_owned_message();
        let bar = bar
            .get_or_insert_with(|| crate::progress::Bar::bytes(c.total_size as u64, "downloading"));
        file.write_all(&c.data)?;
        hash.update(&c.data);
        bar.advance(c.data.len() as u64);
        expected = c.sha256;
    }
    if let Some(b) = &bar {
        b.finish();
    }
    file.flush()?;
    drop(file);
    let got = builderd_oci::Digest::of_hasher(hash).hex().to_string();
    if got != expected {
        bail!("the download's sha256 is {got}, the build recorded {expected}: not kept");
    }
    pending.commit()?;
    eprintln!("builderd: wrote {} (sha256 {got})", output.display());
    Ok(())
}
