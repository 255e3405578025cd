//! `sluice connectors`: create, inspect, steer and delete a daemon's
//! connectors through its admin API.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;
use reqwest::Method;
use serde_json::{Value, json};

use super::remote::{
    Target, absolute_plugin, client, exit_for, local, path_part, read_document, text,
    with_local_input,
};

/// The arguments of `sluice connectors`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    target: Target,
    #[command(subcommand)]
    command: ConnectorsCommand,
}

#[derive(Debug, Subcommand)]
enum ConnectorsCommand {
    /// Create the connectors of a manifest (TOML) or of one JSON connector
    /// object, and start them.
    Create {
        /// A `.toml` manifest with [[connector]] tables, or a `.json` file.
        file: PathBuf,
    },
    /// Change a connector: its config (restarts it), or its module (a live
    /// swap while records flow).
    Update {
        /// The connector.
        name: String,
        /// A JSON or TOML file holding the new [connector.config].
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// The new module: a built-in name or a `.wasm` path.
        #[arg(long, value_name = "PLUGIN")]
        plugin: Option<String>,
    },
    /// Every connector, with its state.
    List,
    /// A connector's definition.
    Get {
        /// The connector.
        name: String,
    },
    /// A connector's status and its instances'.
    Status {
        /// The connector.
        name: String,
    },
    /// Pause at the next batch boundary (instances stay open).
    Pause {
        /// The connector.
        name: String,
    },
    /// Resume a paused connector.
    Resume {
        /// The connector.
        name: String,
    },
    /// Stop: flush, commit, close every instance.
    Stop {
        /// The connector.
        name: String,
    },
    /// Start a stopped connector from its committed position.
    Start {
        /// The connector.
        name: String,
    },
    /// Restart every instance, or one.
    Restart {
        /// The connector.
        name: String,
        /// Only this instance.
        #[arg(long)]
        instance: Option<u32>,
    },
    /// Stop and delete a connector, its offsets and its state.
    Delete {
        /// The connector.
        name: String,
    },
    /// Show a connector's offsets, or reset a stopped sink's.
    Offsets {
        /// The connector.
        name: String,
        /// Reset to `earliest`, `latest` or an offset (the sink must be
        /// stopped).
        #[arg(long, value_name = "TO")]
        reset: Option<String>,
        /// Only this topic.
        #[arg(long)]
        topic: Option<String>,
        /// Only this partition.
        #[arg(long)]
        partition: Option<u32>,
    },
    /// Read a connector's plugin state: its keys, or the value of one
    /// (queryable state).
    State {
        /// The connector.
        name: String,
        /// The key whose value to show; without it, the keys.
        key: Option<String>,
        /// Only keys that start with this.
        #[arg(long, conflicts_with = "key")]
        prefix: Option<String>,
        /// At most this many keys.
        #[arg(long, conflicts_with = "key", default_value_t = 1000)]
        limit: usize,
    },
    /// The daemon's metrics, in Prometheus text format.
    Metrics,
}

/// Runs one `connectors` verb.
pub async fn exec(args: Args) -> anyhow::Result<ExitCode> {
    with_local_input(call(args.target, args.command)).await
}

async fn call(target: Target, command: ConnectorsCommand) -> anyhow::Result<ExitCode> {
    let client = client(&target)?;
    let c = |name: &str, rest: &str| format!("/v1/connectors/{}{rest}", path_part(name));
    let outcome = match &command {
        ConnectorsCommand::Create { file } => {
            let text = local(std::fs::read_to_string(file), || {
                format!("reading {}", file.display())
            })?;
            let path = std::path::absolute(file)?.display().to_string();
            let body = if file.extension().is_some_and(|e| e == "json") {
                let connector: Value = local(serde_json::from_str(&text), || {
                    format!("{} is not valid JSON", file.display())
                })?;
                json!({ "connector": connector, "path": path })
            } else {
                json!({ "toml": text, "path": path })
            };
            client
                .call(Method::POST, "/v1/connectors", Some(&body))
                .await
        }
        ConnectorsCommand::Update {
            name,
            config,
            plugin,
        } => match (config, plugin) {
            (Some(file), None) => {
                let body = read_document(file)?;
                let named = format!("/config?file={}", path_part(&file.display().to_string()));
                client
                    .call(Method::PUT, &c(name, &named), Some(&body))
                    .await
            }
            (None, Some(plugin)) => {
                let body = json!({ "plugin": absolute_plugin(plugin) });
                client
                    .call(Method::PUT, &c(name, "/module"), Some(&body))
                    .await
            }
            _ => {
                eprintln!("error: give exactly one of --config FILE and --plugin PLUGIN");
                return Ok(ExitCode::from(2));
            }
        },
        ConnectorsCommand::List => client.call(Method::GET, "/v1/connectors", None).await,
        ConnectorsCommand::Get { name } => client.call(Method::GET, &c(name, ""), None).await,
        ConnectorsCommand::Status { name } => {
            client.call(Method::GET, &c(name, "/status"), None).await
        }
        ConnectorsCommand::Pause { name } => {
            client.call(Method::POST, &c(name, "/pause"), None).await
        }
        ConnectorsCommand::Resume { name } => {
            client.call(Method::POST, &c(name, "/resume"), None).await
        }
        ConnectorsCommand::Stop { name } => {
            client.call(Method::POST, &c(name, "/stop"), None).await
        }
        ConnectorsCommand::Start { name } => {
            client.call(Method::POST, &c(name, "/start"), None).await
        }
        ConnectorsCommand::Restart { name, instance } => {
            let q = instance.map_or_else(String::new, |i| format!("?instance={i}"));
            client
                .call(Method::POST, &c(name, &format!("/restart{q}")), None)
                .await
        }
        ConnectorsCommand::Delete { name } => client.call(Method::DELETE, &c(name, ""), None).await,
        ConnectorsCommand::Offsets {
            name,
            reset,
            topic,
            partition,
        } => match reset {
            None => client.call(Method::GET, &c(name, "/offsets"), None).await,
            Some(to) => {
                let body = match to.as_str() {
                    "earliest" | "latest" => json!({ "to": to }),
                    n => match n.parse::<u64>() {
                        Ok(o) => json!({ "to": "offset", "offset": o }),
                        Err(_) => {
                            eprintln!("error: --reset takes `earliest`, `latest` or an offset");
                            return Ok(ExitCode::from(2));
                        }
                    },
                };
                let mut body = body;
                if let Some(t) = topic {
                    body["topic"] = json!(t);
                }
                if let Some(p) = partition {
                    body["partition"] = json!(p);
                }
                client
                    .call(Method::POST, &c(name, "/offsets/reset"), Some(&body))
                    .await
            }
        },
        ConnectorsCommand::State {
            name,
            key: Some(key),
            ..
        } => {
            let path = c(name, &format!("/state/{}", path_part(key)));
            client.call(Method::GET, &path, None).await
        }
        ConnectorsCommand::State {
            name,
            key: None,
            prefix,
            limit,
        } => {
            let mut q = format!("/state?limit={limit}");
            if let Some(p) = prefix {
                q.push_str(&format!("&prefix={}", path_part(p)));
            }
            client.call(Method::GET, &c(name, &q), None).await
        }
        ConnectorsCommand::Metrics => match client.text("/metrics").await {
            Ok(text) => {
                print!("{text}");
                return Ok(ExitCode::SUCCESS);
            }
            Err(e) => Err(e),
        },
    };
    let value = match outcome {
        Ok(v) => v,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(exit_for(&e));
        }
    };
    if target.json {
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(ExitCode::SUCCESS);
    }
    match command {
        ConnectorsCommand::Create { .. } => {
            for n in value.as_array().into_iter().flatten() {
                println!("created {}", n.as_str().unwrap_or_default());
            }
        }
        ConnectorsCommand::List => print_list(&value),
        ConnectorsCommand::Status { .. } => print_status(&value),
        ConnectorsCommand::Get { .. } => {
            println!("{}", value["toml"].as_str().unwrap_or_default());
            println!("# state: {}", value["state"].as_str().unwrap_or_default());
        }
        ConnectorsCommand::Update {
            plugin: Some(_), ..
        } => {
            let live = value["live"].as_bool().unwrap_or(false);
            if live {
                println!(
                    "{}: module swapped to {} while running (pause {:.1} ms)",
                    value["name"].as_str().unwrap_or_default(),
                    value["plugin"].as_str().unwrap_or_default(),
                    value["pause_ms"].as_f64().unwrap_or_default()
                );
            } else {
                println!(
                    "{}: module set to {}; used at its next start",
                    value["name"].as_str().unwrap_or_default(),
                    value["plugin"].as_str().unwrap_or_default()
                );
            }
        }
        ConnectorsCommand::Offsets { .. } => print_offsets(&value),
        ConnectorsCommand::State { key: Some(_), .. } => match value["text"].as_str() {
            Some(t) => println!("{t}"),
            None => println!("hex {}", text(&value["hex"])),
        },
        ConnectorsCommand::State { key: None, .. } => print_state_keys(&value),
        _ => {
            if let (Some(n), Some(d)) = (value["name"].as_str(), value["done"].as_str()) {
                println!("{n}: {d}");
            } else {
                println!("{}", serde_json::to_string_pretty(&value)?);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_list(value: &Value) {
    println!(
        "{:<20} {:<9} {:<24} {:<9} {:>12} {:>10}",
        "connector", "kind", "plugin", "state", "records", "lag"
    );
    for c in value.as_array().into_iter().flatten() {
        println!(
            "{:<20} {:<9} {:<24} {:<9} {:>12} {:>10}",
            text(&c["name"]),
            text(&c["kind"]),
            text(&c["plugin"]),
            text(&c["state"]),
            text(&c["records"]),
            text(&c["lag"])
        );
    }
}

fn print_status(s: &Value) {
    println!(
        "{} ({}), plugin {} {}",
        text(&s["name"]),
        text(&s["kind"]),
        text(&s["plugin"]),
        text(&s["plugin_version"])
    );
    println!(
        "  state        {} since {}",
        text(&s["state"]),
        text(&s["since"])
    );
    println!(
        "  records      {} in, {} out ({} dead-lettered)",
        text(&s["records_in"]),
        text(&s["records_out"]),
        text(&s["dead_lettered"])
    );
    println!(
        "  bytes        {} in, {} out",
        text(&s["bytes_in"]),
        text(&s["bytes_out"])
    );
    println!("  lag          {}", text(&s["lag"]));
    println!("  last record  {}", text(&s["last_record_at"]));
    println!("  restarts     {}", text(&s["restarts"]));
    if let Some(e) = s["last_error"].as_object() {
        println!(
            "  last error   {} (at {})",
            text(&e["message"]),
            text(&e["at"])
        );
    }
    if let Some(w) = s["last_swap"].as_object() {
        let how = if w["ok"].as_bool().unwrap_or(false) {
            format!(
                "ok, paused {:.1} ms",
                w["pause_ms"].as_f64().unwrap_or_default()
            )
        } else {
            format!("failed: {}", text(&w["error"]))
        };
        println!(
            "  last swap    {} -> {} at {}: {how}",
            text(&w["from"]),
            text(&w["to"]),
            text(&w["at"])
        );
    }
    let instances = s["instances"].as_array().cloned().unwrap_or_default();
    // In a cluster, each instance's host.
    let hosts = instances
        .iter()
        .any(|i| i.get("host").is_some_and(|h| !h.is_null()));
    println!(
        "  {:<8} {:<11} {}{:<26} {:>8} {:>12}  last error",
        "instance",
        "state",
        if hosts {
            format!("{:<20} ", "host")
        } else {
            String::new()
        },
        "since",
        "restarts",
        "records"
    );
    for i in &instances {
        println!(
            "  {:<8} {:<11} {}{:<26} {:>8} {:>12}  {}",
            text(&i["index"]),
            text(&i["state"]),
            if hosts {
                format!("{:<20} ", i["host"].as_str().unwrap_or("-"))
            } else {
                String::new()
            },
            text(&i["since"]),
            text(&i["restarts"]),
            text(&i["records"]),
            i["last_error"]["message"].as_str().unwrap_or("-")
        );
    }
}

fn print_state_keys(s: &Value) {
    println!("{:<40} {:>10}", "key", "bytes");
    for k in s["keys"].as_array().into_iter().flatten() {
        println!("{:<40} {:>10}", text(&k["key"]), text(&k["bytes"]));
    }
    if s["truncated"].as_bool() == Some(true) {
        println!(
            "… {} keys in all; --limit shows more, --prefix fewer",
            text(&s["count"])
        );
    }
}

fn print_offsets(o: &Value) {
    let partitions = o["partitions"].as_array().cloned().unwrap_or_default();
    if !partitions.is_empty() {
        println!(
            "{:<20} {:>9} {:>12} {:>12} {:>12}",
            "topic", "partition", "committed", "start", "end"
        );
        for p in partitions {
            println!(
                "{:<20} {:>9} {:>12} {:>12} {:>12}",
                text(&p["topic"]),
                text(&p["partition"]),
                text(&p["committed"]),
                text(&p["start"]),
                text(&p["end"])
            );
        }
    }
    for p in o["positions"].as_array().into_iter().flatten() {
        println!(
            "{:<20} position {}",
            text(&p["producer"]),
            text(&p["position_hex"])
        );
    }
}
