//! The test suite's fake Mapillary API + CDN as a standalone server, for
//! end-to-end runs (e.g. the daemon in Docker pointed at it).
//!
//! cargo run --bin fake_mapillary -- --port 8900 --users alice:5000,bob:120 \
//!     --token 'MLY|1|x' --url-ttl-secs 3600 --latency-ms 50 --faults flaky \
//!     --orgs 1234:alice+bob --filters ignore --cap-bbox
//!
//! `--orgs` makes organizations of users (members in the order given; a
//! user may be in several), `--filters ignore` makes `/images` accept its
//! filters but apply none, and `--cap-bbox` answers a search with a `bbox`
//! with its first page and no `next`.
//!
//! Prints the API base URL on stdout (the CDN URL on stderr) and serves until killed.

use mld_testkit::fake::{FakeConfig, FakeMapillary, Faults, FilterMode};
use std::time::Duration;

const USAGE: &str = "usage: fake_mapillary [--port N] [--cdn-port N] [--users name:count,...] [--token T] \
[--url-ttl-secs S] [--latency-ms MS] [--api-latency-ms MS] [--faults none|flaky|chaos|ratelimit] [--seed N] [--token-in-next] \
[--orgs org:user+user,...] [--filters honour|ignore] [--cap-bbox]

  --users alice:5000,bob:120   users and how many generated images each has
  --orgs 1234:alice+bob,99:bob organizations and their members, in order (members need not be in --users)
  --filters honour|ignore      whether /images applies bbox, dates, is_pano and sequence_ids (default honour)
  --cap-bbox                   a /images request with a bbox gets one page and no `next`
  --token-in-next              every `next` link carries the token";

struct Args {
    cfg: FakeConfig,
    users: Vec<(String, u64)>,
    orgs: Vec<(String, Vec<String>)>,
}

fn parse_args() -> Result<Args, String> {
    let mut cfg = FakeConfig::default();
    let mut users = Vec::new();
    let mut orgs = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        if flag == "--help" || flag == "-h" {
            return Err(USAGE.to_string());
        }
        if flag == "--token-in-next" {
            cfg.token_in_next = true;
            continue;
        }
        if flag == "--cap-bbox" {
            cfg.cap_bbox_searches = true;
            continue;
        }
        let value = args
            .next()
            .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?;
        let number = |v: &str| {
            v.parse::<u64>()
                .map_err(|_| format!("{flag}: {v:?} is not a number"))
        };
        match flag.as_str() {
            "--port" => {
                cfg.api_port = u16::try_from(number(&value)?).map_err(|_| "--port out of range")?
            }
            "--cdn-port" => {
                cfg.cdn_port =
                    u16::try_from(number(&value)?).map_err(|_| "--cdn-port out of range")?
            }
            "--token" => cfg.token = value,
            "--url-ttl-secs" => {
                cfg.url_ttl_secs = value
                    .parse()
                    .map_err(|_| format!("--url-ttl-secs: {value:?} is not a number"))?
            }
            "--latency-ms" => cfg.cdn_latency = Duration::from_millis(number(&value)?),
            "--api-latency-ms" => cfg.api_latency = Duration::from_millis(number(&value)?),
            "--seed" => cfg.seed = number(&value)?,
            "--faults" => {
                cfg.faults = Faults::preset(&value).ok_or_else(|| {
                    format!("--faults: unknown preset {value:?} (none, flaky, chaos, ratelimit)")
                })?
            }
            "--users" => {
                for item in value.split(',').filter(|s| !s.trim().is_empty()) {
                    let (name, count) = item
                        .split_once(':')
                        .ok_or_else(|| format!("--users: {item:?} is not name:count"))?;
                    users.push((name.trim().to_string(), number(count.trim())?));
                }
            }
            "--filters" => cfg.filters = value.parse::<FilterMode>()?,
            "--orgs" => {
                for item in value.split(',').filter(|s| !s.trim().is_empty()) {
                    let (org, members) = item
                        .split_once(':')
                        .ok_or_else(|| format!("--orgs: {item:?} is not org:user+user"))?;
                    let members: Vec<String> = members
                        .split('+')
                        .map(str::trim)
                        .filter(|m| !m.is_empty())
                        .map(str::to_string)
                        .collect();
                    if org.trim().is_empty() || members.is_empty() {
                        return Err(format!("--orgs: {item:?} is not org:user+user"));
                    }
                    orgs.push((org.trim().to_string(), members));
                }
            }
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    Ok(Args { cfg, users, orgs })
}

#[tokio::main]
async fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(message) => {
            eprintln!("{message}");
            std::process::exit(2);
        }
    };
    let fake = FakeMapillary::start(args.cfg).await;
    for (i, (name, count)) in args.users.iter().enumerate() {
        fake.add_user(name, *count, i as u64 + 1);
    }
    for (org, members) in &args.orgs {
        for member in members {
            fake.add_user_to_org(member, org);
        }
    }
    println!("{}", fake.api_url());
    eprintln!("fake CDN at {}", fake.cdn_url());
    let _ = tokio::signal::ctrl_c().await;
}
